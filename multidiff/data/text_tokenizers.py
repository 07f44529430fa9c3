"""Tokenizers for the text domain: byte-level BPE (trained with Hugging Face ``tokenizers``) and
characters (text8-style). Both map text ↔ int32 id arrays and save to / load from one JSON file,
so a run directory carries the exact tokenizer its model was trained with.

- ``BPETokenizer``: byte-level, so every string round-trips exactly (no unknown tokens).
- ``CharTokenizer``: one id per Unicode character seen in the training text; id 0 stands for any
  character that was not seen (decoded as U+FFFD).

``load_tokenizer(path)`` reads either kind, including a ``tokenizer.json`` made elsewhere with the
``tokenizers`` library (any model: BPE, WordPiece, Unigram).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import numpy as np

from ..errors import UserError
from ..textdata import parse_json

CHAR_FORMAT = "multidiff.char_tokenizer"
UNKNOWN_CHAR = "\ufffd"


class TextTokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...

    def save(self, path: Path) -> None: ...


class CharTokenizer:
    """One id per character; id 0 is the unknown character."""

    kind = "char"

    def __init__(self, chars: Sequence[str]) -> None:
        chars = [c for c in chars if c != UNKNOWN_CHAR]
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("characters must be distinct single characters")
        self.chars = [UNKNOWN_CHAR, *sorted(chars)]
        self._codes = np.array([ord(c) for c in self.chars[1:]], dtype=np.int64)  # sorted by code point

    @classmethod
    def fit(cls, texts: Iterable[str]) -> "CharTokenizer":
        seen: set[str] = set()
        for t in texts:
            seen.update(t)
        return cls(sorted(seen))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        pos = np.searchsorted(self._codes, codes).clip(0, max(len(self._codes) - 1, 0))
        known = self._codes[pos] == codes if len(self._codes) else np.zeros(codes.shape, bool)
        return np.where(known, pos + 1, 0).astype(np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return "".join(self.chars[i] if 0 <= i < len(self.chars) else UNKNOWN_CHAR for i in np.asarray(ids).tolist())

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps({"format": CHAR_FORMAT, "version": 1, "chars": self.chars[1:]}, ensure_ascii=False))


class BPETokenizer:
    """A Hugging Face ``tokenizers`` model (byte-level BPE when trained here)."""

    kind = "bpe"

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer

    @classmethod
    def fit(cls, texts: Iterable[str], vocab_size: int) -> "BPETokenizer":
        """Byte-level BPE with ``vocab_size`` ids (fewer when the text has fewer merges to make)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 257:
            raise UserError(f"data.vocab_size must be at least 257 for byte-level BPE (256 bytes + merges), got {vocab_size}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=2, show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
        )  # fmt: skip
        tok.train_from_iterator(list(texts), trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return int(self.tok.get_vocab_size())

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(text).ids, dtype=np.int32)

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int32) for e in self.tok.encode_batch(texts)]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self.tok.decode(np.asarray(ids).tolist(), skip_special_tokens=False)

    def save(self, path: Path) -> None:
        self.tok.save(str(path))


def encode_many(tokenizer: TextTokenizer, texts: list[str]) -> list[np.ndarray]:
    """Encode several texts (batched where the tokenizer supports it)."""
    batched = getattr(tokenizer, "encode_many", None)
    return batched(texts) if batched else [tokenizer.encode(t) for t in texts]


def load_tokenizer(path: str | Path) -> TextTokenizer:
    """A tokenizer file: ours (characters) or any ``tokenizers`` JSON; UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data.tokenizer: tokenizer file {path} not found")
    try:
        raw = parse_json(path.read_text(), str(path))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"data.tokenizer: {path} is not a JSON tokenizer file ({exc})") from None
    if isinstance(raw, dict) and raw.get("format") == CHAR_FORMAT:
        chars = raw.get("chars")
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise UserError(f"data.tokenizer: {path}: field 'chars' must be a list of characters")
        try:
            return CharTokenizer(chars)
        except ValueError as exc:
            raise UserError(f"data.tokenizer: {path}: field 'chars': {exc}") from None
    from tokenizers import Tokenizer

    try:
        return BPETokenizer(Tokenizer.from_file(str(path)))
    except Exception as exc:  # the Rust library raises its own exception type
        raise UserError(f"data.tokenizer: cannot load {path} with the tokenizers library ({exc})") from None

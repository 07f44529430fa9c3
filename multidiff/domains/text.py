"""Text: token sequences diffused as continuous embeddings (CDCD-style,).

The domain yields token-id chunks [N, L]; the model (``diffusion.categorical``) embeds them in
learned, normalized vectors, denoises with a transformer that outputs logits, and decodes by argmax.
The tokenizer (byte-level BPE or characters) is fitted on the training split only, saved into the
run directory as ``tokenizer.json`` and read back by ``sample``, ``eval`` and ``--resume``.

The NELBO is reported in bits/token (the primary curve) and bits/char, using the true number of
characters in the evaluated validation chunks. Samples are written as text; their metrics are the
NLL under a Kneser–Ney n-gram model of the training split and their unigram entropy against the data's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from ..data import text as sources
from ..data.text_tokenizers import BPETokenizer, CharTokenizer, TextTokenizer, encode_many, load_tokenizer
from ..diffusion.categorical import CategoricalDiffusion
from ..diffusion.model import DiffusionModel
from ..errors import UserError
from ..metrics.text import TextSampleScore
from ..nets.transformer import TRANSFORMER_DEFAULTS, TRANSFORMER_RULES, transformer_from_config
from ..settings import choice, integer, number, text
from .base import Domain, DomainData

TOKENIZER_FILE = "tokenizer.json"
DEFAULT_HUB_DATASET = "afmck/text8"


@dataclass
class TextData(DomainData):
    """Token-id chunks (``train``/``val``: int32 [N, L]) and the tokenizer that made them."""

    tokenizer: Optional[TextTokenizer] = None


class TextDomain(Domain):
    name = "text"
    nelbo_unit = "bits/token"
    headline_metrics = {
        "nelbo_bits_per_char": "NELBO bits/char",
        "ngram_nll": "sample n-gram NLL (bits/token)",
        "entropy_ratio": "sample/data unigram entropy",
    }
    # lower n-gram NLL = closer to the training text; the entropy ratio is a diagnostic (near 1 is
    # right, well below 1 flags repetition), tracked but not raced to
    quality_metrics = {"ngram_nll": "lower", "entropy_ratio": None}
    data_defaults = {
        "source": "kjv",  # kjv | pydoc | path | hub
        "path": None,  # a .txt file or folder (implies source=path); for hub, the dataset id (default afmck/text8)
        "text_field": "text",  # hub: the column holding the text
        "tokenizer": "bpe",  # bpe (byte-level, fitted on the training split) | char | PATH to a tokenizer.json
        "vocab_size": 4096,  # BPE vocabulary size (≥ 257)
        "seq_len": 64,  # L: tokens per example
        "val_fraction": 0.05,  # share of blocks held out (sources without their own validation split)
        "split_blocks": 200,  # the corpus is cut into this many contiguous blocks; whole blocks are held out
        "split_seed": 0,  # fixed, independent of the training seed, so every run sees the same split
        "max_chars": None,  # use only the first max_chars characters of the corpus
        "ngram_order": None,  # reference n-gram model for sample NLL; null: 3 for BPE, 5 for characters
    }
    model_defaults = dict(TRANSFORMER_DEFAULTS)
    data_rules = {
        "source": choice(("kjv", "pydoc", "path", "hub")), "path": text(optional=True), "text_field": text(),
        "tokenizer": text(), "vocab_size": integer(257), "seq_len": integer(2),
        "val_fraction": number(0, 1, open_lo=True, open_hi=True), "split_blocks": integer(1), "split_seed": integer(0),
        "max_chars": integer(1, optional=True), "ngram_order": integer(1, optional=True),
    }  # fmt: skip
    model_rules = TRANSFORMER_RULES

    def __init__(self, recipe: dict[str, Any], cache_dir: Path) -> None:
        super().__init__(recipe, cache_dir)
        self.tokenizer: Optional[TextTokenizer] = None

    # ---- data ---------------------------------------------------------------------------------
    def _source(self) -> str:
        source, path = self.data_cfg["source"], self.data_cfg["path"]
        if source not in ("kjv", "pydoc", "path", "hub"):
            raise UserError(f"data.source: unknown source {source!r}; choose kjv, pydoc, path or hub")
        if path and source != "hub":
            return "path"
        if source == "path" and not path:
            raise UserError("data.source=path needs data.path=FILE.txt or a folder of .txt files")
        return source

    def _corpus(self) -> sources.Corpus:
        source, cfg = self._source(), self.data_cfg
        if source == "kjv":
            corpus = sources.load_bible()
        elif source == "pydoc":
            corpus = sources.load_pydoc()
        elif source == "path":
            corpus = sources.load_path(str(cfg["path"]))
        else:
            corpus = sources.load_hub(str(cfg["path"] or DEFAULT_HUB_DATASET), str(cfg["text_field"]))
        limit = cfg["max_chars"]
        if limit is not None:
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                raise UserError(f"data.max_chars must be a positive integer or null, got {limit!r}")
            corpus.train = corpus.train[:limit]
            corpus.val = corpus.val[:limit] if corpus.val is not None else None
        return corpus

    def _ngram_order(self, tokenizer: TextTokenizer) -> int:
        """Order of the reference n-gram model: the recipe's, else 5 for characters and 3 for BPE."""
        if self.data_cfg["ngram_order"] is None:
            return 5 if tokenizer.kind == "char" else 3
        return self._int("ngram_order", 1)

    def _int(self, key: str, low: int) -> int:
        value = self.data_cfg[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise UserError(f"data.{key} must be an integer ≥ {low}, got {value!r}")
        return value

    def _tokenizer(self, train_blocks: list[str], run_dir: Optional[Path]) -> TextTokenizer:
        """The run's saved tokenizer, a given tokenizer file, or one fitted on the training blocks."""
        if run_dir is not None and (Path(run_dir) / TOKENIZER_FILE).is_file():
            return load_tokenizer(Path(run_dir) / TOKENIZER_FILE)
        kind = str(self.data_cfg["tokenizer"])
        if kind == "bpe":
            return BPETokenizer.fit(train_blocks, self._int("vocab_size", 257))
        if kind == "char":
            return CharTokenizer.fit(train_blocks)
        if kind.endswith(".json") or Path(kind).is_file():
            return load_tokenizer(kind)
        raise UserError(f"data.tokenizer: choose bpe, char or a tokenizer .json file, got {kind!r}")

    def load(self, run_dir: Optional[Path] = None) -> TextData:
        cfg = self.data_cfg
        seq_len, n_blocks = self._int("seq_len", 2), self._int("split_blocks", 1)
        corpus = self._corpus()
        if corpus.val is None:  # hold out whole contiguous blocks: no held-out sentence is trained on
            blocks = sources.split_blocks(corpus.train, n_blocks)
            held = set(sources.held_out_blocks(len(blocks), float(cfg["val_fraction"]), int(cfg["split_seed"])).tolist())
            train_blocks = [b for i, b in enumerate(blocks) if i not in held]
            val_blocks = [b for i, b in enumerate(blocks) if i in held]
        else:  # the source's own held-out split
            train_blocks = sources.split_blocks(corpus.train, n_blocks)
            val_blocks = sources.split_blocks(corpus.val, max(1, n_blocks // 10))
        tokenizer = self._tokenizer(train_blocks, run_dir)
        self.tokenizer = tokenizer
        order = self._ngram_order(tokenizer)
        if math.log(max(tokenizer.vocab_size, 2)) * order >= math.log(2**62):  # n-grams are packed in int64 keys
            raise UserError(f"data.ngram_order={order} is too high for {tokenizer.vocab_size} tokens; lower it")
        train, val = (self._chunks(tokenizer, b, seq_len) for b in (train_blocks, val_blocks))
        for split, chunks in (("training", train), ("held-out", val)):
            if chunks.shape[0] == 0:
                raise UserError(
                    f"data: the {split} split of {corpus.name!r} yields no chunk of data.seq_len={seq_len} tokens; "
                    f"lower data.seq_len or use more text (data.max_chars, data.val_fraction)"
                )
        name = f"{corpus.name}/{tokenizer.kind}{tokenizer.vocab_size}/L{seq_len}"
        return TextData(train=torch.from_numpy(train), val=torch.from_numpy(val), dataset=name, tokenizer=tokenizer)

    @staticmethod
    def _chunks(tokenizer: TextTokenizer, blocks: list[str], seq_len: int) -> np.ndarray:
        """Each block tokenized on its own and cut into consecutive chunks of seq_len tokens."""
        out = [sources.chunk(ids, seq_len) for ids in encode_many(tokenizer, blocks)]
        return np.concatenate(out) if out else np.zeros((0, seq_len), np.int32)

    def save_artifacts(self, data: DomainData, run_dir: Path) -> None:
        assert isinstance(data, TextData) and data.tokenizer is not None
        data.tokenizer.save(Path(run_dir) / TOKENIZER_FILE)

    # ---- model and units ----------------------------------------------------------------------
    def build_model(self, data: DomainData, sigma_data: float) -> DiffusionModel:
        assert isinstance(data, TextData) and data.tokenizer is not None
        cfg = self.model_cfg
        backbone = transformer_from_config(cfg, data.tokenizer.vocab_size, data.train.shape[1])
        return CategoricalDiffusion(backbone, data.tokenizer.vocab_size, cfg["embed_dim"], sigma_data, cfg["self_condition"])

    def example_shape(self, data: DomainData) -> tuple[int, ...]:
        return (int(data.train.shape[1]), int(self.model_cfg["embed_dim"]))

    def nelbo_count(self, data: DomainData) -> int:
        return int(data.train.shape[1])  # tokens per example

    def nelbo_units(self, data: DomainData, n_examples: int) -> dict[str, float]:
        """bits/token, and bits/char from the true characters of the first n validation chunks."""
        assert isinstance(data, TextData) and data.tokenizer is not None
        subset = data.val[:n_examples].numpy()
        chars = sum(len(data.tokenizer.decode(row)) for row in subset) / max(len(subset), 1)
        return {"bits/token": float(data.train.shape[1]), "bits/char": float(chars)}

    def measure_sigma_data(self, data: DomainData) -> float:
        """Embeddings are normalized to per-dimension RMS σ_data by construction, so any value
        works; without one in the recipe, 1 (CDCD's choice, norm √D)."""
        return 1.0

    # ---- samples ------------------------------------------------------------------------------
    def texts(self, ids: Tensor) -> list[str]:
        if self.tokenizer is None:
            raise RuntimeError("load() the data before decoding samples")
        return [self.tokenizer.decode(row) for row in ids.cpu().numpy()]

    def write_samples(self, decoded: Tensor, out_dir: Path, tag: str) -> list[Path]:
        """``{tag}.txt`` (one block per sample, headed by its index) and ``{tag}.npy`` (token ids)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        txt, npy = out_dir / f"{tag}.txt", out_dir / f"{tag}.npy"
        body = "".join(f"--- sample {i} ---\n{t}\n\n" for i, t in enumerate(self.texts(decoded)))
        txt.write_text(body, encoding="utf-8")
        np.save(npy, decoded.cpu().numpy().astype(np.int32))
        return [txt, npy]

    def make_metric(self, data: DomainData) -> Callable[[Tensor], dict[str, Any]]:
        assert isinstance(data, TextData) and data.tokenizer is not None
        score = TextSampleScore(data.train.numpy(), data.val.numpy(), data.tokenizer.vocab_size, self._ngram_order(data.tokenizer))

        def metric(decoded: Tensor) -> dict[str, Any]:
            return {**score(decoded.cpu().numpy()), "preview": self.texts(decoded[:3])}

        return metric

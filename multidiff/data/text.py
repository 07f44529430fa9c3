"""Text sources, a held-out split of contiguous blocks, and fixed-length token chunks.

Offline: the King James Bible through Debian's ``bible`` program (package bible-kjv), CPython's
own ``pydoc_data`` topics, any local ``.txt`` file or folder of them. With a network: text8 or any
corpus with a text column through Hugging Face ``datasets``.

A corpus is cut into contiguous blocks at line breaks; a seeded choice of whole blocks is held out,
so no sentence of the held-out split is seen in training (or by the tokenizer, which is fitted on
the training blocks only). Each block is tokenized on its own and cut into chunks of L tokens.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import UserError
from .splits import load_hub_dataset

#: a verse reference at the start of a line of ``bible -f``: Ge1:1, 1Cor13:4, SSol2:1, ...
VERSE_REF = re.compile(r"^[1-3]?[A-Za-z]+[0-9]+:[0-9]+ ", re.MULTILINE)


@dataclass
class Corpus:
    """Raw text: ``val`` is the source's own held-out text when it has one (else None)."""

    train: str
    name: str
    val: Optional[str] = None


def load_bible() -> Corpus:
    """The whole King James Bible, one verse per line, verse references removed (≈4.3 M characters)."""
    exe = shutil.which("bible")
    if exe is None:
        raise UserError(
            "data.source=kjv needs the `bible` program (Debian package bible-kjv): install it with "
            "'apt-get install bible-kjv', or point data.path at a .txt file or folder"
        )
    # -f turns pretty-printing off: one verse per line, prefixed by its reference
    proc = subprocess.run([exe, "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise UserError(f"data.source=kjv: `{exe} -f Gen1:1-Rev22:21` failed ({proc.stderr.strip()[:200] or 'no output'})")
    return Corpus(train=VERSE_REF.sub("", proc.stdout), name="kjv")


def load_pydoc() -> Corpus:
    """CPython's bundled documentation topics (``pydoc_data.topics``, ≈0.46 M characters)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise UserError("data.source=pydoc: this Python has no pydoc_data module; point data.path at a .txt file") from None
    return Corpus(train="\n\n".join(topics[k].strip() for k in sorted(topics)) + "\n", name="pydoc")


def load_path(path: str) -> Corpus:
    """A .txt file, or every *.txt file under a folder (sorted, joined by blank lines)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*.txt") if f.is_file())
        if not files:
            raise UserError(f"data.path: folder {p} holds no .txt files")
    elif p.is_file():
        files = [p]
    else:
        raise UserError(f"data.path: text file or folder {p} not found")
    parts = []
    for f in files:
        try:
            parts.append(f.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise UserError(f"data.path: {f} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    text = "\n\n".join(parts)
    if not text.strip():
        raise UserError(f"data.path: {p} holds no text")
    return Corpus(train=text, name=p.name)


def load_hub(name: str, field: str = "text") -> Corpus:
    """A Hugging Face dataset's ``field`` column (rows joined by blank lines); its validation
    split, when it has one, is the held-out text. Needs a network or a local datasets cache."""
    ds = load_hub_dataset(name, offline_hint="use data.source=kjv, pydoc or data.path=FILE.txt")
    if "train" not in ds:
        raise UserError(f"dataset {name!r} has no 'train' split (splits: {', '.join(ds)})")
    if field not in ds["train"].features:
        raise UserError(f"data.text_field: dataset {name!r} has no column {field!r} (columns: {', '.join(ds['train'].features)})")
    join = lambda split: "\n\n".join(split[field])  # noqa: E731
    held = next((s for s in ("validation", "valid", "test") if s in ds), None)
    return Corpus(train=join(ds["train"]), name=name, val=join(ds[held]) if held else None)


# ---- splitting and chunking -------------------------------------------------------------------


def split_blocks(text: str, n_blocks: int) -> list[str]:
    """``text`` cut into ``n_blocks`` contiguous pieces of about equal length, each cut placed just
    after a line break (or a space) when one is near; ``"".join(blocks) == text``."""
    n_blocks = max(1, min(int(n_blocks), len(text)))
    cuts, size = [0], len(text) / n_blocks
    for i in range(1, n_blocks):
        target = max(int(round(i * size)), cuts[-1] + 1)
        window = text[target : target + int(size // 2) + 1]
        nl = window.find("\n")
        sp = window.find(" ")
        shift = nl if nl >= 0 else sp if sp >= 0 else -1
        cut = target + shift + 1 if shift >= 0 else target
        if cut < len(text) and cut > cuts[-1]:
            cuts.append(cut)
    cuts.append(len(text))
    return [text[a:b] for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def held_out_blocks(n_blocks: int, val_fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the blocks held out for validation (a seeded choice, at least one)."""
    if not 0 < val_fraction < 1:
        raise UserError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    if n_blocks < 2:
        raise UserError("data.split_blocks: the corpus must be cut into at least 2 blocks to hold one out")
    n_val = min(n_blocks - 1, max(1, int(round(val_fraction * n_blocks))))
    return np.sort(np.random.default_rng(seed).permutation(n_blocks)[:n_val])


def chunk(ids: np.ndarray, length: int) -> np.ndarray:
    """Consecutive, non-overlapping chunks [n, length] of a 1-D id array (the remainder is dropped)."""
    n = len(ids) // length
    return np.asarray(ids[: n * length], dtype=np.int32).reshape(n, length)

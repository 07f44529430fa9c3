"""Shared data plumbing: a fixed held-out split, and loading from the Hugging Face hub."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..errors import UserError


def holdout(
    examples: Any, labels: Optional[Any], fraction: float, seed: int, limit: Optional[int] = None
) -> tuple[Any, Optional[Any], Any, Optional[Any]]:
    """(train, train_labels, val, val_labels): a seeded ``fraction`` of the examples held out.

    The seed is the data's own (``data.split_seed``), not the training seed, so every run of a
    dataset sees the same held-out examples; ``limit`` then caps the training split.
    """
    frac = float(fraction)
    if not 0 < frac < 1:
        raise UserError(f"data.val_fraction must be in (0, 1), got {frac}")
    perm = np.random.default_rng(int(seed)).permutation(len(examples))
    n_val = max(1, int(round(frac * len(examples))))
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    take = lambda a, idx: a[idx] if a is not None else None  # noqa: E731
    train, train_y = take(examples, tr_idx), take(labels, tr_idx)
    train, train_y = cap(train, train_y, limit)
    return train, train_y, take(examples, val_idx), take(labels, val_idx)


def cap(examples: Any, labels: Optional[Any], limit: Optional[int]) -> tuple[Any, Optional[Any]]:
    """At most ``limit`` training examples (all when limit is falsy)."""
    if not limit:
        return examples, labels
    n = int(limit)
    return examples[:n], (labels[:n] if labels is not None else None)


def load_hub_dataset(name: str, config: Optional[str] = None, *, offline_hint: str) -> Any:
    """A ``datasets`` DatasetDict (needs a network or a local cache), or a one-line UserError that
    says what to use offline (``offline_hint``, e.g. "use data.source=digits")."""
    try:
        import datasets

        return datasets.load_dataset(name, config) if config else datasets.load_dataset(name)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(
            f"could not load dataset {name!r} through Hugging Face datasets ({type(exc).__name__}: {first}); "
            f"offline, {offline_hint}"
        ) from None

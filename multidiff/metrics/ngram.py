"""A smoothed n-gram language model over token ids (interpolated Kneser–Ney), the reference model
that scores generated text: trained on the training split, it says how plausible samples are
without a pretrained network.

P_n(w | h) = [max(c(h w) − D_n, 0) + D_n · T(h) · P_{n−1}(w | h')] / c(h ·), where h' drops the
oldest token of h, T(h) is the number of distinct tokens seen after h, and lower orders count
*continuations* (how many distinct tokens precede the n-gram) instead of occurrences. An unseen
history falls back to the lower order; the recursion ends in the uniform distribution over the
vocabulary, so every token has non-zero probability. Discounts D_k = n1 / (n1 + 2 n2) per order.

n-grams are packed into int64 keys (base-V digits) and looked up with binary search: building and
scoring are vectorized over the whole corpus.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def pack(windows: np.ndarray, vocab_size: int) -> np.ndarray:
    """[N, k] token windows → [N] int64 keys (base-V digits, oldest token most significant)."""
    keys = np.zeros(windows.shape[0], dtype=np.int64)
    for j in range(windows.shape[1]):
        keys = keys * vocab_size + windows[:, j].astype(np.int64)
    return keys


def windows(ids: np.ndarray, k: int) -> np.ndarray:
    """All length-k windows of a 1-D array, [len − k + 1, k] (a view)."""
    return np.lib.stride_tricks.sliding_window_view(np.asarray(ids, dtype=np.int64), k)


@dataclass
class _Order:
    """Statistics of one order k: counts of k-grams and of their (k−1)-token histories."""

    keys: np.ndarray  # sorted unique k-gram keys
    counts: np.ndarray  # occurrences (highest order) or continuation counts (lower orders)
    hist_keys: np.ndarray  # sorted unique history keys
    hist_total: np.ndarray  # Σ_w counts(h w)
    hist_types: np.ndarray  # number of distinct w with counts(h w) > 0
    discount: float


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """values[key] for each query key, 0 where the key is absent."""
    if len(sorted_keys) == 0:
        return np.zeros(query.shape, dtype=values.dtype)
    pos = np.searchsorted(sorted_keys, query).clip(0, len(sorted_keys) - 1)
    return np.where(sorted_keys[pos] == query, values[pos], 0)


def _discount(counts: np.ndarray) -> float:
    n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
    return n1 / (n1 + 2 * n2) if n1 + n2 > 0 else 0.5


class KneserNey:
    """Interpolated Kneser–Ney of order ``order`` over ids in [0, vocab_size)."""

    def __init__(self, sequences: list[np.ndarray], vocab_size: int, order: int = 3) -> None:
        if order < 1:
            raise ValueError("order must be ≥ 1")
        if math.log(max(vocab_size, 2)) * order >= math.log(2**62):
            raise ValueError(f"order {order} over {vocab_size} tokens does not fit 64-bit keys; lower the order")
        self.vocab_size, self.order = int(vocab_size), int(order)
        seqs = [np.asarray(s, dtype=np.int64) for s in sequences]
        grams = {}
        for k in range(1, order + 1):  # unique k-grams with occurrence counts
            keys = np.concatenate([pack(windows(s, k), vocab_size) for s in seqs if len(s) >= k] or [np.zeros(0, np.int64)])
            grams[k] = np.unique(keys, return_counts=True)
        self.orders: dict[int, _Order] = {}
        for k in range(1, order + 1):
            if k == order:
                keys, counts = grams[k]
            else:  # continuation counts: distinct left extensions, from the unique (k+1)-grams
                longer = grams[k + 1][0]
                keys, counts = np.unique(longer % vocab_size**k, return_counts=True)
            hist = keys // vocab_size
            hist_keys, first = np.unique(hist, return_index=True)
            hist_total = np.add.reduceat(counts, first) if len(counts) else np.zeros(0, np.int64)
            hist_types = np.diff(np.r_[first, len(keys)])
            self.orders[k] = _Order(keys, counts.astype(np.float64), hist_keys, hist_total.astype(np.float64),
                                    hist_types.astype(np.float64), _discount(counts))  # fmt: skip

    def log2_prob(self, ids: np.ndarray) -> np.ndarray:
        """log₂ P(ids[t] | the order−1 tokens before it) for t = order−1, …, len−1 (full histories only)."""
        ids = np.asarray(ids, dtype=np.int64)
        n = self.order
        if len(ids) < n:
            return np.zeros(0)
        win = windows(ids, n)  # [T, n]: the last column is the predicted token
        p = np.full(win.shape[0], 1.0 / self.vocab_size)
        for k in range(1, n + 1):
            o = self.orders[k]
            gram = win[:, n - k :]
            c = _lookup(o.keys, o.counts, pack(gram, self.vocab_size))
            h = pack(gram[:, :-1], self.vocab_size)  # the empty history packs to 0 (one entry for k = 1)
            total = _lookup(o.hist_keys, o.hist_total, h)
            types = _lookup(o.hist_keys, o.hist_types, h)
            seen = total > 0
            interp = (np.maximum(c - o.discount, 0) + o.discount * types * p) / np.where(seen, total, 1)
            p = np.where(seen, interp, p)
        return np.log2(p)

    def bits_per_token(self, sequences: list[np.ndarray] | np.ndarray) -> float:
        """Mean −log₂ P over every position with a full history, in bits/token."""
        lp = np.concatenate([self.log2_prob(s) for s in sequences] or [np.zeros(0)])
        return float(-lp.mean()) if lp.size else float("nan")

"""Sample quality for text: how likely generated token sequences are under a reference
n-gram model trained on the training split, and how varied they are (unigram entropy against the
data's, measured on the same number of held-out tokens, since plug-in entropy grows with sample size).

Low n-gram NLL alone can be gamed by repetitive text ("the the the"); an entropy ratio well below 1
flags that. Held-out data's own NLL is reported alongside as the reference point.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .ngram import KneserNey


def unigram_entropy(ids: np.ndarray, vocab_size: int) -> float:
    """Plug-in entropy of the token histogram, in bits."""
    counts = np.bincount(np.asarray(ids).ravel(), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(max(0.0, -(p * np.log2(p)).sum()))  # max: a single token gives 0, not −0


#: the reference model counts at most this many training tokens (text8 has 90 M; counting all of
#: them would cost minutes and gigabytes for a metric that has long converged)
MAX_REFERENCE_TOKENS = 20_000_000


class TextSampleScore:
    """Scores token-id samples [N, L] against the training split's n-gram model (built once, here)
    and as many held-out chunks as there are samples (fewer if the split is smaller)."""

    def __init__(self, train: np.ndarray, val: np.ndarray, vocab_size: int, order: int) -> None:
        self.val, self.vocab_size, self.order = np.asarray(val), vocab_size, order
        self.lm = KneserNey([np.asarray(train).ravel()[:MAX_REFERENCE_TOKENS]], vocab_size, order)

    def __call__(self, samples: np.ndarray) -> dict[str, Any]:
        samples = np.asarray(samples)
        reference = self.val[: samples.shape[0]]
        h_samples = unigram_entropy(samples, self.vocab_size)
        h_data = unigram_entropy(reference, self.vocab_size)
        return {
            "ngram_nll": self.lm.bits_per_token(list(samples)),
            "ngram_nll_data": self.lm.bits_per_token(list(reference)),
            "ngram_order": self.order,
            "unigram_entropy": h_samples,
            "unigram_entropy_data": h_data,
            "entropy_ratio": h_samples / h_data if h_data > 0 else float("nan"),
            "metric_samples": int(samples.shape[0]),
        }


def text_sample_metrics(samples: np.ndarray, train: np.ndarray, val: np.ndarray, vocab_size: int, order: int) -> dict[str, Any]:
    """``samples``, ``train``, ``val``: token ids [N, L] (builds the n-gram model for this one call)."""
    return TextSampleScore(train, val, vocab_size, order)(samples)

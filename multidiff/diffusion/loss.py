"""Training losses with one shared signature.

``loss_fn(denoiser, x, sigma, noise, weight) -> LossOutput`` where ``loss`` is the per-example
weighted loss (what is optimized) and ``error`` the per-example *unweighted* x0-space error per
dimension, mean((D(x+σε; σ) − x)²), detached (what adaptive schedules observe). σ is σ.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import Tensor, nn


@dataclass
class LossOutput:
    """Per-example results of a training loss: [B] from a one-modality model's ``loss``, [B, M]
    (one column per modality, each with its own σ) from ``modality_loss``, with a ``mask`` of the
    entries that were trained (a modality given clean is not; None: all)."""

    loss: Tensor  # [B] (or [B, M]) weighted, differentiable
    error: Tensor  # [B] (or [B, M]) unweighted x0-space squared error per dimension, detached
    mask: Optional[Tensor] = None  # [B, M] 0/1: which entries count (None: all)


def bcast(sigma: Tensor, x: Tensor) -> Tensor:
    """σ of shape [B] reshaped to broadcast against x of shape [B, ...]."""
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


def mse_loss(
    denoiser: nn.Module, x: Tensor, sigma: Tensor, noise: Tensor, weight: Callable[[Tensor], Tensor]
) -> LossOutput:
    """EDM's loss: w(σ)·mean‖D(x + σε; σ) − x‖²."""
    denoised = denoiser(x + bcast(sigma, x) * noise, sigma)
    error = (denoised.float() - x).square().flatten(1).mean(1)
    return LossOutput(loss=weight(sigma) * error, error=error.detach())

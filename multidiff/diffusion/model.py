"""What the trainer trains: a domain's encoder, denoiser, loss and decoder behind one interface.

Continuous domains (binarized images, spectrograms, latents) use :class:`ContinuousDiffusion`:
their data pipeline already yields x scaled to σ_data, the denoiser is EDM-preconditioned and the
loss is MSE. Domains whose encoding is learned (text embeddings) subclass :class:`DiffusionModel`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .likelihood import nelbo_nats
from .loss import LossOutput, mse_loss
from .precond import EDMPrecond


class DiffusionModel(nn.Module):
    """encode(batch) → x; denoise(x, σ) → x0 estimate; loss(...) → LossOutput; decode(x) → domain space."""

    @property
    def backbone(self) -> nn.Module:
        """The network the denoiser wraps (what ``train.compile`` compiles)."""
        return self.net

    def encode(self, batch: Any) -> Tensor:
        return batch

    def training_batch(self, batch: Any, generator: torch.Generator) -> Any:
        """The batch a training step learns from, drawn with the step's seeded generator (a joint
        model pairing by class redraws each example's partners here); the batch itself by default,
        drawing nothing, so the step's random stream is unchanged."""
        return batch

    def modality_parts(self, x: Tensor) -> list[Tensor]:
        """x [B, ...] → each modality's part, in modality order (one modality: x itself)."""
        return [x]

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.denoise(x, sigma)

    def loss(self, x: Tensor, sigma: Tensor, noise: Tensor, weight: Callable[[Tensor], Tensor], batch: Any,
             generator: Optional[torch.Generator] = None) -> LossOutput:  # fmt: skip
        """Per-example losses at σ with the step's noise; ``generator``: the step's seeded generator,
        for models that draw more (a joint model's choice of which modality is given clean)."""
        raise NotImplementedError

    def modality_loss(self, x: Tensor, sigma: Tensor, noise: Tensor, weights: dict[str, Callable[[Tensor], Tensor]], batch: Any,
                      generator: Optional[torch.Generator] = None) -> LossOutput:  # fmt: skip
        """What the trainer calls: σ [B, M] (column m: modality m's σ, not ln σ), each modality's
        weight by name → per-example losses [B, M]. A one-modality model is a group of one: its
        :meth:`loss` at column 0, returned as one column."""
        (weight,) = weights.values()
        out = self.loss(x, sigma[:, 0], noise, weight, batch, generator)
        return LossOutput(out.loss[:, None], out.error[:, None], None if out.mask is None else out.mask[:, None])

    def recon_nll(self, x: Tensor, z: Tensor, sigma: float) -> Tensor:
        """−ln p(x | z) in nats per example, z = x + σ_min·ε (the bound's reconstruction term)."""
        raise NotImplementedError

    def nelbo(self, x: Tensor, noise: Tensor, sigma_min: float, sigma_max: float) -> Tensor:
        """Per-example NELBO in nats: the VE bound along σ from σ_max down to σ_min with the fixed
        ``noise`` [B, nodes + 1, ...] (a joint model overrides it with one floor per modality)."""
        return nelbo_nats(self.denoise, x, noise, sigma_min=sigma_min, sigma_max=sigma_max, recon_nll=self.recon_nll)["total"]

    def decode(self, x: Tensor) -> Tensor:
        return x


def gaussian_recon_nll(x: Tensor, z: Tensor, sigma: float) -> Tensor:
    """Continuous data: −ln N(x; z, σ²I), a density (can be negative), in nats per example."""
    d = x[0].numel()
    return (x - z).square().flatten(1).sum(1) / (2 * sigma**2) + 0.5 * d * math.log(2 * math.pi * sigma**2)


def binary_recon_nll(x: Tensor, z: Tensor, sigma: float) -> Tensor:
    """±1 data: exact posterior under a uniform prior per dimension, p(x|z) = sigmoid(2xz/σ²)."""
    return F.softplus(-2 * x * z / sigma**2).flatten(1).sum(1)


RECON = {"gaussian": gaussian_recon_nll, "binary": binary_recon_nll}


class ContinuousDiffusion(DiffusionModel):
    def __init__(self, backbone: nn.Module, sigma_data: float, recon: str = "gaussian", sign_decode: bool = False) -> None:
        super().__init__()
        self.precond = EDMPrecond(backbone, sigma_data)
        self.recon = recon
        self.sign_decode = sign_decode

    @property
    def backbone(self) -> nn.Module:
        return self.precond.net

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.precond(x, sigma)

    def loss(self, x, sigma, noise, weight, batch=None, generator=None) -> LossOutput:
        return mse_loss(self.precond, x, sigma, noise, weight)

    def recon_nll(self, x: Tensor, z: Tensor, sigma: float) -> Tensor:
        return RECON[self.recon](x, z, sigma)

    def decode(self, x: Tensor) -> Tensor:
        return torch.where(x >= 0, 1.0, -1.0) if self.sign_decode else x

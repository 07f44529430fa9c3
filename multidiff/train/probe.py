"""The trainer's side of :class:`multidiff.schedules.base.Probe`: the current denoiser on a fixed
held-out batch, for schedules that measure the model at a refresh (CRS x0/eps)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..diffusion.model import DiffusionModel


class DenoiserProbe:
    """x0 estimates of the model being trained, under no_grad and in eval mode (no dropout).

    ``raw`` is the fixed held-out batch as the domain stores it (on the training device); it is
    encoded at every :meth:`data` call, so domains with learned encodings (text embeddings) are
    probed with the current encoder. ``calls``/``examples`` count denoiser evaluations.
    """

    def __init__(self, model: DiffusionModel, raw: Tensor) -> None:
        self.model, self.raw = model, raw
        self.calls = 0
        self.examples = 0

    @torch.no_grad()
    def data(self) -> Tensor:
        return self.model.encode(self.raw)

    @torch.no_grad()
    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        """D(x; σ) for noisy x and per-example σ (σ, not ln σ)."""
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.denoise(x, sigma)
        finally:
            self.model.train(was_training)
        self.calls += 1
        self.examples += int(x.shape[0])
        return out

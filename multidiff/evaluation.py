"""The two measurements every run is judged by, written once and used everywhere (during training,
at the final evaluation, by ``multidiff eval``):

- the validation NELBO on a fixed subset, fixed noise per example id and a fixed quadrature over
  u = ln σ (:func:`nelbo_batch`, :func:`validation_nelbo`), independent of the training schedule;
- sample quality: a fixed number of samples from fixed initial noise through the recipe's fixed
  sampler and grid, scored by the domain's own metric (:func:`generate`, :func:`sample_quality`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .diffusion.likelihood import fixed_noise
from .diffusion.model import DiffusionModel
from .diffusion.sampling import SAMPLERS
from .recipe import Sections


@dataclass(frozen=True)
class NelboSettings:
    """The bound's fixed settings. σ values are σ (not ln σ)."""

    sigma_min: float  # where the bound decodes (its reconstruction term)
    sigma_max: float
    nodes: int
    seed: int
    examples: int
    batch: int

    @classmethod
    def of(cls, cfg: Sections) -> "NelboSettings":
        ev = cfg.eval
        lo = ev.nelbo_sigma_min if ev.nelbo_sigma_min is not None else cfg.diffusion.sigma_min
        return cls(float(lo), float(cfg.diffusion.sigma_max), ev.nelbo_nodes, ev.nelbo_seed, ev.nelbo_examples, ev.nelbo_batch)


@torch.no_grad()
def nelbo_batch(model: DiffusionModel, raw: Tensor, ids: Tensor, s: NelboSettings) -> Tensor:
    """Per-example NELBO in nats of validation examples ``raw`` whose subset indices are ``ids``."""
    x = model.encode(raw)
    noise = fixed_noise(ids.cpu(), tuple(x.shape[1:]), s.nodes + 1, s.seed).to(x)
    return model.nelbo(x, noise, s.sigma_min, s.sigma_max)


def validation_subset(val: Tensor, s: NelboSettings) -> tuple[Tensor, Tensor]:
    """The fixed subset (the first ``examples`` validation examples) and their ids."""
    n = min(s.examples, val.shape[0])
    return val[:n], torch.arange(n)


@torch.no_grad()
def validation_nelbo(model: DiffusionModel, val: Tensor, s: NelboSettings, device: torch.device) -> float:
    """Mean NELBO in nats per example over the fixed validation subset."""
    raw, ids = validation_subset(val, s)
    total = 0.0
    for i in range(0, raw.shape[0], s.batch):
        total += float(nelbo_batch(model, raw[i : i + s.batch].to(device), ids[i : i + s.batch], s).sum())
    return total / raw.shape[0]


def bits(nats: float, units: float) -> float:
    return nats / (math.log(2) * units)


@torch.no_grad()
def generate(
    model: DiffusionModel,
    shape: tuple[int, ...],
    n: int,
    sigmas: Tensor,
    *,
    sampler: str = "heun",
    seed: int = 0,
    batch: int = 256,
    churn: float = 0.0,
    device: Optional[torch.device] = None,
    condition: Optional["Condition"] = None,
) -> Tensor:
    """n samples in the diffusion space (deterministic given seed and batch size). ``condition``
    holds parts of each sample fixed (a joint model's given modalities; see :class:`Condition`)."""
    device = device or next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(int(seed))
    out = []
    for i in range(0, n, batch):
        b = min(batch, n - i)
        x = float(sigmas[0]) * torch.randn((b, *shape), generator=g, device=device)
        denoiser = model.denoise
        if condition is not None:
            x, denoiser = condition.apply(x, denoiser, i, i + b)
        out.append(SAMPLERS[sampler](denoiser, x, sigmas.to(device), churn=churn, generator=g).cpu())
    return torch.cat(out)


class Condition:
    """Parts of the samples held fixed while the rest is generated (interface).

    ``apply(x, denoiser, start, end)`` gets the initial noise of samples start…end−1 and the
    model's denoiser and returns the initial state and a denoiser that keep the fixed parts fixed
    (a sampler then leaves them unchanged, since their x0 estimate equals their value).
    """

    def apply(self, x: Tensor, denoiser: Callable[[Tensor, Tensor], Tensor], start: int, end: int) -> tuple[Tensor, Callable[[Tensor, Tensor], Tensor]]:
        raise NotImplementedError


@dataclass
class QualityResult:
    metrics: dict[str, Any]  # everything the domain's metric returned
    decoded: Tensor  # the decoded samples (domain space), on the CPU


@torch.no_grad()
def sample_quality(
    model: DiffusionModel,
    cfg: Sections,
    shape: tuple[int, ...],
    sigmas: Tensor,
    score: Callable[[Tensor], dict[str, Any]],
    *,
    seed: Optional[int] = None,
    count: Optional[int] = None,
    device: torch.device,
) -> QualityResult:
    """``count`` (default ``eval.quality_samples``) samples from the recipe's sampler (seed:
    ``sample.seed`` unless given), decoded and scored by ``score`` (the domain's metric against
    held-out data)."""
    s = cfg.sample
    was_training = model.training
    model.eval()
    try:
        x = generate(model, shape, count or cfg.eval.quality_samples, sigmas, sampler=s.sampler, seed=s.seed if seed is None else seed,
                     batch=s.batch, churn=s.churn, device=device)  # fmt: skip
        decoded = model.decode(x.to(device)).cpu()
    finally:
        model.train(was_training)
    return QualityResult(score(decoded), decoded)

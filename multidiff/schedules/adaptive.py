"""Adaptive importance sampling of the noise level (Kingma & Gao 2023, appendix on adaptive schedules).

The objective stays ``E_{u~target}[ℓ(u)]``, the fixed weighted loss ℓ = w(σ)·e averaged under a
fixed ``target`` density (default EDM's log-normal, so the run optimizes exactly the EDM
baseline's objective). Only the sampling changes: σ is drawn from ``p(u) ∝ target(u)·L̂(u)``,
where L̂ is the per-bin EMA of the weighted loss (for a log-uniform target: "p ∝ the loss per
bin"), and each example's loss is multiplied by ``target(u)/p(u)`` (``loss_scale``), so the
expected optimized loss is unchanged while its variance shrinks (sampling in proportion to the
integrand's magnitude). A ``floor`` of the target is mixed in, which bounds the importance
weights by about 1/floor. Before ``warmup`` steps it samples from the target itself (weights 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..settings import because, integer, number, setting
from .base import Schedule, ScheduleContext
from .bases import fixed_schedule
from .learned import BinnedSchedule, exp_smoothed, fill_log_interp
from .tabulated import TabulatedDensity


@dataclass
class AdaptiveParams:
    """Adaptive importance sampling. Steps are optimizer steps."""

    bins: int = setting(64, integer(4))  # K bins of ln σ
    warmup: int = setting(200, integer(0))  # steps sampled from the target first
    refresh: int = setting(100, integer(1))  # steps between refreshes (R)
    target: str = "edm"  # the fixed density whose objective is kept: any fixed schedule
    ema: float = setting(0.7, number(0, 1, open_hi=True))  # weight of the previous per-bin mean at each refresh
    min_count: int = setting(4, integer(1))  # bins with fewer samples keep their estimate and carry the samples over
    smooth: float = setting(1.0, number(0))  # std, in bins, of the Gaussian smoothing of ln L̂; 0 disables
    floor: float = setting(0.1, because(number(0, 1, open_lo=True), "it bounds the importance weights by about 1/floor"))  # mixture weight of the target (importance weights stay near or below 1/floor)


class Adaptive(BinnedSchedule):
    name = "adaptive"
    what = "weighted loss"

    def __init__(self, ctx: ScheduleContext, params: Optional[AdaptiveParams] = None) -> None:
        p = params or AdaptiveParams()
        super().__init__(ctx, p, fixed_schedule(p.target, ctx))
        self.grid_u = np.concatenate([[ctx.u_min], self.stats.centers, [ctx.u_max]])

    @property
    def target(self) -> Schedule:
        return self.base

    def observed(self, error: Tensor, loss: Tensor) -> Tensor:
        return loss  # the weighted loss, before the importance weight

    def loss_scale(self, sigma: Tensor) -> Optional[Tensor]:
        """target(u)/p(u) at u = ln σ: keeps E[scaled loss] equal to the target's objective."""
        if not (self.active and self.learned is not None):
            return None
        u = sigma.float().log()
        return self.target.pdf(u) / self.learned.pdf(u).clamp(min=1e-30)

    def loss_profile(self) -> np.ndarray:
        """L̂ at the bin centres: EMA of the weighted loss, gaps filled, smoothed in ln L̂."""
        return exp_smoothed(np.log(fill_log_interp(self.stats.centers, self.means)), self.params.smooth)

    def _rebuild(self) -> TabulatedDensity:
        loss = self.loss_profile()
        u = torch.tensor(self.grid_u)
        with torch.no_grad():
            target = self.target.pdf(u).double().cpu().numpy()
        target = target / np.trapezoid(target, self.grid_u)
        tilted = target * np.r_[loss[0], loss, loss[-1]]
        tilted = tilted / np.trapezoid(tilted, self.grid_u)
        return TabulatedDensity(u, (1 - self.params.floor) * tilted + self.params.floor * target)

    def exported_profile(self) -> dict[str, list[float]]:
        if not self.ready():
            return {}
        return {"u": self.stats.centers.tolist(), "loss": self.loss_profile().tolist(), "counts": self.total_counts.tolist()}

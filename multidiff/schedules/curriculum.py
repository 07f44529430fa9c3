"""Difficulty curriculum over noise levels (Kim et al. 2024), wrapped around any base schedule.

The base density is cut into N clusters of equal mass: cluster j (j = 0 … N−1) covers the base's
quantiles ``[1 − (j+1)/N, 1 − j/N]`` in u = ln σ, so cluster 0 is the highest-noise (easiest)
one. At stage s the schedule samples the base restricted to clusters 0 … s:

    p_s(u) = base(u) · 1[F_base(u) ≥ 1 − (s+1)/N] · N/(s+1),   icdf_s(q) = F_base⁻¹(lo + q·(1 − lo)),

with lo = 1 − (s+1)/N. It moves to the next stage when the smoothed training loss has not
improved for ``patience`` steps; at stage N−1 the restriction is gone and it is the plain base
until the end. The stage lives in the checkpoint.

Progress is checked every ``refresh`` steps from the loss summed on the device since the last
check and all-reduced across processes, so every process moves at the same step. The smoothed
loss is an EMA with per-step decay ``ema`` (applied as ema^R per check); it resets at each stage,
because adding a harder cluster changes the loss level.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from ..errors import NonFiniteLossError
from ..settings import integer, number, setting
from .base import Probe, Schedule, ScheduleContext, ScheduleTable, all_reduce_sum_, keep_on_rank0_, merge_into_rank0_
from .bases import FIXED, fixed_schedule
from .learned import check


def _fixed_base(name: str, ctx: ScheduleContext) -> Schedule:
    check(name in FIXED, f"base {name!r}: without the registry only a fixed schedule ({', '.join(FIXED)}) can be built by name")
    return fixed_schedule(name, ctx)


@dataclass
class CurriculumParams:
    """Curriculum settings. Steps are optimizer steps."""

    base: str = "edm"  # the schedule that is cut into clusters: any schedule but curriculum/adaptive
    clusters: int = setting(20, integer(1))  # N equal-mass clusters of the base
    patience: int = setting(200, integer(1))  # steps without improvement of the smoothed loss before the next stage
    ema: float = setting(0.99, number(0, 1, open_hi=True))  # per-step decay of the loss EMA
    refresh: int = setting(10, integer(1))  # steps between progress checks
    min_delta: float = setting(0.0, number(0))  # relative decrease that counts as an improvement


def stage_bounds(stage: int, clusters: int) -> float:
    """Lowest base quantile sampled at ``stage`` (0 for the full base)."""
    return max(0.0, 1.0 - (stage + 1) / clusters)


class Curriculum(Schedule):
    name = "curriculum"

    def __init__(self, ctx: ScheduleContext, params: Optional[CurriculumParams] = None, base: Optional[Schedule] = None) -> None:
        """``base``: the schedule named by ``params.base``, already built (the registry builds it by
        name, so any schedule can be wrapped); None builds a fixed one by name."""
        p = params or CurriculumParams()
        check(base is None or base.name not in ("curriculum", "adaptive"),
              f"base must be a schedule other than curriculum and adaptive, got {p.base!r}")  # fmt: skip
        super().__init__(ctx, p)
        self.base = base if base is not None else _fixed_base(p.base, ctx)
        # progress checks and the base's own refreshes share one callback cadence
        self.refresh_every = math.gcd(int(p.refresh), int(self.base.refresh_every or p.refresh))
        self.prepare_examples = self.base.prepare_examples
        self.probe_examples = self.base.probe_examples
        self.loss_sum = torch.zeros(())
        self.loss_count = torch.zeros(())
        self.stage = 0
        self.smoothed: Optional[float] = None
        self.best = math.inf
        self.last_improved = 0  # step of the last improvement (or of the last stage change)
        self.history: list[dict[str, Any]] = []

    # ---- the restricted base ----------------------------------------------------------------------
    @property
    def lo(self) -> float:
        return stage_bounds(self.stage, self.params.clusters)

    def pdf(self, u: Tensor) -> Tensor:
        lo = self.lo
        if lo == 0:
            return self.base.pdf(u)
        inside = self.base.cdf(u) >= lo
        return torch.where(inside, self.base.pdf(u) / (1 - lo), torch.zeros_like(u))

    def cdf(self, u: Tensor) -> Tensor:
        lo = self.lo
        return ((self.base.cdf(u) - lo) / (1 - lo)).clamp(0, 1)

    def icdf(self, q: Tensor) -> Tensor:
        lo = self.lo
        return self.base.icdf(lo + q.clamp(0, 1) * (1 - lo))

    def boundaries(self) -> Tensor:
        """The N+1 cluster edges in u = ln σ, from high noise to low."""
        q = torch.linspace(1, 0, self.params.clusters + 1)
        return self.base.icdf(q.to(self.device))

    # ---- delegation to the base (it may be adaptive itself) ----------------------------------------
    def to(self, device: torch.device | str) -> "Curriculum":
        super().to(device)
        self.base.to(self.device)
        self.loss_sum, self.loss_count = self.loss_sum.to(self.device), self.loss_count.to(self.device)
        return self

    def prepare(self, x: Tensor) -> dict[str, Any]:
        return self.base.prepare(x)

    def observe(self, sigma: Tensor, error: Tensor, loss: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> None:
        loss = self.weighted(sigma, error, loss)
        self.base.observe(sigma, error, loss, mask)
        w = torch.ones_like(loss, dtype=torch.float32) if mask is None else mask.detach().float()
        self.loss_sum += (loss.detach().float() * w).sum()
        self.loss_count += w.sum()

    def loss_scale(self, sigma: Tensor) -> Optional[Tensor]:
        return self.base.loss_scale(sigma)

    def synchronize(self) -> None:
        self.base.synchronize()
        merge_into_rank0_(self.loss_sum, self.loss_count)

    # ---- progress ------------------------------------------------------------------------------------
    def refresh(self, step: int, probe: Optional[Probe] = None) -> dict[str, Any]:
        self.last_refresh = int(step)
        info: dict[str, Any] = {}
        every = self.base.refresh_every
        if every and step % every == 0:
            info.update(self.base.refresh(step, probe))
        if step % self.params.refresh == 0:
            info.update(self._check_progress(step))
        return info

    def _check_progress(self, step: int) -> dict[str, Any]:
        all_reduce_sum_(self.loss_sum, self.loss_count)
        total, count = float(self.loss_sum), float(self.loss_count)
        self.loss_sum.zero_()
        self.loss_count.zero_()
        if count == 0:
            return {}
        if not math.isfinite(total):
            raise NonFiniteLossError(f"non-finite training loss reached the curriculum before step {step}")
        before = self.stage
        self.advance(step, total / count)
        # only a stage change alters the table (and is worth a history entry)
        return {"step": int(step), "stage": self.stage} if self.stage != before else {}

    def advance(self, step: int, mean_loss: float) -> None:
        """Fold the mean loss since the last check into the EMA; move on after ``patience`` steps."""
        p = self.params
        decay = p.ema ** p.refresh
        self.smoothed = mean_loss if self.smoothed is None else decay * self.smoothed + (1 - decay) * mean_loss
        if self.smoothed < self.best * (1 - p.min_delta):
            self.best, self.last_improved = self.smoothed, step
        elif step - self.last_improved >= p.patience and self.stage < p.clusters - 1:
            self.stage += 1
            self.smoothed, self.best, self.last_improved = None, math.inf, step
            self.history.append({"step": int(step), "stage": self.stage})

    # ---- state and export -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "smoothed": self.smoothed,
            "best": self.best,
            "last_improved": self.last_improved,
            "loss_sum": self.loss_sum.cpu().clone(),
            "loss_count": self.loss_count.cpu().clone(),
            "history": [dict(h) for h in self.history],
            "base": self.base.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stage = int(state["stage"])
        self.smoothed = None if state["smoothed"] is None else float(state["smoothed"])
        self.best, self.last_improved = float(state["best"]), int(state["last_improved"])
        self.loss_sum = state["loss_sum"].to(self.device, torch.float32).clone()
        self.loss_count = state["loss_count"].to(self.device, torch.float32).clone()
        keep_on_rank0_(self.loss_sum, self.loss_count)
        self.history = list(state["history"])
        self.base.load_state_dict(state["base"])

    def to_table(self, n: int = 256) -> ScheduleTable:
        table = super().to_table(n)
        base = self.base.to_table(n)
        table.profile, table.gate = base.profile, base.gate  # the base's learned profile, if any
        table.params = {**table.params, "stage": self.stage, "stages_done": self.stage >= self.params.clusters - 1}
        return table

    def notes(self) -> list[str]:
        p = self.params
        if self.stage >= p.clusters - 1:
            return self.base.notes()
        return self.base.notes() + [
            f"ended at stage {self.stage + 1} of {p.clusters}, so it never trained on the lowest-noise clusters; the "
            f"smoothed loss kept improving within every {p.patience}-step patience window. Give it a longer budget "
            f"or a smaller `schedule.patience` to see the full curriculum."
        ]

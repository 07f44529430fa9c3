"""Building blocks of schedules that learn their table during training (timewarp, adaptive, CRS).

- :class:`BinnedStats`: per-bin sums and counts of a per-example value over u = ln σ, accumulated
  on the device every step and all-reduced at a refresh (the InfoNoise pattern).
- :func:`ema_fold`: fold a refresh's bin means into a running estimate.
- :class:`LearnedSchedule`: samples from a fixed base until it is first refreshed after the
  warm-up, then from a learned :class:`TabulatedDensity`; records the total-variation change of
  each refresh; exports the current table with the learned profile.
- :class:`BinnedSchedule`: a LearnedSchedule rebuilt at every refresh from per-bin EMA means of
  one observed per-example quantity (timewarp: the loss; adaptive: the weighted loss).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from torch import Tensor

from ..errors import NonFiniteLossError, UserError
from .base import Probe, Schedule, ScheduleContext, ScheduleTable, all_reduce_sum_, keep_on_rank0_, merge_into_rank0_, process_rank
from .tabulated import TabulatedDensity, interp


class BinnedStats:
    """Sums and counts of a per-example value in K equal bins of u = ln σ, on the device.

    ``centers`` (ln σ, numpy) are the bin centres. :meth:`consume` all-reduces across processes
    and returns the bins with at least ``min_count`` samples; rarer bins keep their partial sums
    for the next refresh (on rank 0 only: after the all-reduce every rank holds the totals).
    """

    def __init__(self, ctx: ScheduleContext, bins: int) -> None:
        self.ctx, self.bins = ctx, int(bins)
        self.edges = np.linspace(ctx.u_min, ctx.u_max, self.bins + 1)
        self.centers = 0.5 * (self.edges[:-1] + self.edges[1:])
        self.sums = torch.zeros(self.bins)
        self.counts = torch.zeros(self.bins)
        self.rejected = torch.zeros(())  # bad observations on an accelerator, refused at the next refresh

    def to(self, device: torch.device) -> "BinnedStats":
        self.sums, self.counts, self.rejected = self.sums.to(device), self.counts.to(device), self.rejected.to(device)
        return self

    def add(self, sigma: Tensor, values: Tensor, mask: Optional[Tensor] = None) -> None:
        """Accumulate per-example ``values`` at σ (σ, not ln σ), leaving out mask-0 examples; device-side only."""
        K = self.bins
        u = sigma.detach().float().log()
        k = ((u - self.ctx.u_min) * (K / (self.ctx.u_max - self.ctx.u_min))).long().clamp(0, K - 1)
        w = torch.ones_like(u) if mask is None else mask.detach().float()
        self._check(sigma, u, values, w)
        self.sums.index_add_(0, k, values.detach().float() * w)
        self.counts.index_add_(0, k, w)

    def _check(self, sigma: Tensor, u: Tensor, values: Tensor, w: Tensor) -> None:
        """σ must be finite and > 0 (u = ln σ finite), the observed value not negative (NaN is a diverged model, which
        :meth:`consume` reports). On the CPU a bad observation is refused at once; on an accelerator
        it is counted on the device (no host sync per step) and refused at the next refresh."""
        bad = (w > 0) & ~(torch.isfinite(u) & ~(values.detach() < 0))
        if bad.device.type == "cpu":
            if bool(bad.any()):
                raise UserError(_bad_observation(sigma[bad], values[bad]))
            return
        self.rejected += bad.sum()

    def synchronize(self) -> None:
        """Merge every process's pending sums into rank 0 (before a checkpoint)."""
        merge_into_rank0_(self.sums, self.counts)

    def consume(self, min_count: int, what: str, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(bin means, NaN where fewer than min_count samples; their counts, 0 there), after the all-reduce."""
        if self.rejected.device.type != "cpu" and bool(self.rejected > 0):  # the refresh synchronizes anyway
            raise UserError(f"observe: {int(self.rejected)} example(s) since the last refresh had a σ that is not finite and "
                            "> 0, or a negative error/loss")  # fmt: skip
        all_reduce_sum_(self.sums, self.counts)
        sums, counts = self.sums.double().cpu().numpy(), self.counts.double().cpu().numpy()
        if not np.isfinite(sums).all():
            raise NonFiniteLossError(f"non-finite {what} reached the schedule statistics before step {step}")
        seen = counts >= min_count
        keep = torch.as_tensor(~seen, device=self.sums.device) if process_rank() == 0 else False
        self.sums.mul_(keep)
        self.counts.mul_(keep)
        means = np.where(seen, sums / np.maximum(counts, 1), np.nan)
        return means, np.where(seen, counts, 0.0)

    def state_dict(self) -> dict[str, Tensor]:
        return {"sums": self.sums.cpu().clone(), "counts": self.counts.cpu().clone()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.sums = state["sums"].to(device, torch.float32).clone()
        self.counts = state["counts"].to(device, torch.float32).clone()
        keep_on_rank0_(self.sums, self.counts)  # rank 0's checkpoint holds everyone's pending statistics


def _bad_observation(sigma: Tensor, values: Tensor) -> str:
    return (f"observe: σ must be finite and > 0 and the error/loss >= 0; got σ = {float(sigma.flatten()[0]):g} with "
            f"{float(values.flatten()[0]):g} ({sigma.numel()} such example(s))")  # fmt: skip


def ema_fold(old: np.ndarray, new: np.ndarray, ema: float) -> np.ndarray:
    """Running per-bin estimate: ``ema·old + (1 − ema)·new`` where both exist, else whichever does."""
    blended = np.where(np.isnan(old), new, ema * old + (1 - ema) * new)
    return np.where(np.isnan(new), old, blended)


def exp_smoothed(log_values: np.ndarray, std: float) -> np.ndarray:
    """exp of ``log_values`` after a Gaussian smoothing of ``std`` bins (0: none): learned profiles
    are smoothed in the log, where their noise is roughly even across σ and their scale is kept."""
    if std > 0:
        log_values = gaussian_filter1d(log_values, std, mode="nearest")
    return np.exp(log_values)


def fill_log_interp(u: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Fill NaN entries by linear interpolation of ln(value) over u; constant beyond the ends."""
    ok = np.isfinite(values)
    return np.exp(np.interp(u, u[ok], np.log(np.maximum(values[ok], 1e-30))))


class LearnedSchedule(Schedule):
    """The base density until the first refresh at or after the warm-up, then ``self.learned``.

    Subclasses build ``self.learned`` (a :class:`TabulatedDensity` over [ln σ_min, ln σ_max]) in
    ``_rebuild`` and describe their estimate in ``exported_profile()`` (lists over a grid ``u``, ln σ).
    """

    def __init__(self, ctx: ScheduleContext, params: Any, base: Schedule) -> None:
        super().__init__(ctx, params)
        self.base = base
        self.learned: Optional[TabulatedDensity] = None
        self.active = False
        self.history: list[dict[str, Any]] = []
        # a fixed grid on which refreshes measure how far the CDF moved (total variation)
        self._tv_grid = np.linspace(ctx.u_min, ctx.u_max, 257)

    @property
    def current(self) -> Schedule | TabulatedDensity:
        return self.learned if self.active and self.learned is not None else self.base

    def pdf(self, u: Tensor) -> Tensor:
        return self.current.pdf(u)

    def cdf(self, u: Tensor) -> Tensor:
        return self.current.cdf(u)

    def icdf(self, q: Tensor) -> Tensor:
        return self.current.icdf(q)

    def to(self, device: torch.device | str) -> "LearnedSchedule":
        super().to(device)
        self.base.to(self.device)
        if self.learned is not None:
            self.learned.to(self.device)
        return self

    def segment_masses(self) -> np.ndarray:
        grid = torch.tensor(self._tv_grid, dtype=torch.float32, device=self.device)
        return np.diff(self.current.cdf(grid).double().cpu().numpy().clip(0, 1))

    def switch(self, density: TabulatedDensity, step: int, warmup: int, info: dict[str, Any]) -> None:
        """Install a newly learned density; activate it once past the warm-up; log the TV change."""
        was = self.segment_masses()
        self.learned = density.to(self.device)
        self.active = self.active or step >= warmup
        info["active"] = int(self.active)
        if self.active:
            info["tv"] = 0.5 * float(np.abs(self.segment_masses() - was).sum())

    def exported_profile(self) -> dict[str, list[float]]:
        """The learned estimate for export (equal-length lists, including ``u``); empty before any."""
        return {}

    def to_table(self, n: int = 256) -> ScheduleTable:
        if self.active and self.learned is not None:
            dens = self.learned
        else:
            grid = torch.tensor(self._tv_grid)
            with torch.no_grad():
                dens = TabulatedDensity(grid, self.base.pdf(grid.float().to(self.device)).double().cpu())
        return self.table_from(dens, self.exported_profile())


class BinnedSchedule(LearnedSchedule):
    """Per-bin EMA means of one observed quantity → a learned density at every refresh.

    Params need ``bins``, ``refresh``, ``warmup``, ``ema``, ``min_count``. Subclasses choose the
    quantity (:meth:`observed`), and build the density from ``self.means`` (:meth:`_rebuild`).
    """

    what = "value"  # named in the error when the statistics turn non-finite

    def __init__(self, ctx: ScheduleContext, params: Any, base: Schedule) -> None:
        super().__init__(ctx, params, base)
        self.refresh_every = int(params.refresh)
        self.stats = BinnedStats(ctx, params.bins)
        self.means = np.full(params.bins, np.nan)  # EMA over refreshes; NaN until a bin is seen
        self.total_counts = np.zeros(params.bins)

    def observed(self, error: Tensor, loss: Tensor) -> Tensor:
        raise NotImplementedError

    def _rebuild(self) -> TabulatedDensity:
        """The density from ``self.means`` (derived state: recomputed on load, never stored)."""
        raise NotImplementedError

    def ready(self) -> bool:
        return bool(np.isfinite(self.means).any())

    def to(self, device: torch.device | str) -> "BinnedSchedule":
        super().to(device)
        self.stats.to(self.device)
        return self

    def observe(self, sigma: Tensor, error: Tensor, loss: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> None:
        self.stats.add(sigma, self.observed(error, self.weighted(sigma, error, loss)), mask)

    def synchronize(self) -> None:
        self.stats.synchronize()

    def refresh(self, step: int, probe: Optional[Probe] = None) -> dict[str, Any]:
        p = self.params
        self.last_refresh = int(step)
        means, counts = self.stats.consume(p.min_count, self.what, step)
        self.total_counts += counts
        self.means = ema_fold(self.means, means, p.ema)
        info: dict[str, Any] = {"step": int(step), "bins_observed": int((counts > 0).sum())}
        if self.ready():
            self.switch(self._rebuild(), step, p.warmup, info)
            info.update(self.refresh_info())
        self.history.append(info)
        return info

    def refresh_info(self) -> dict[str, Any]:
        """What a subclass adds to the refresh record (logged and written to refreshes.csv)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        # tensors and primitives only, so checkpoints load with torch.load(weights_only=True)
        return {
            **self.stats.state_dict(),
            "means": torch.from_numpy(self.means.copy()),
            "total_counts": torch.from_numpy(self.total_counts.copy()),
            "active": self.active,
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict(state, self.device)
        self.means = torch.as_tensor(state["means"], dtype=torch.float64).numpy().copy()
        self.total_counts = torch.as_tensor(state["total_counts"], dtype=torch.float64).numpy().copy()
        self.active = bool(state["active"])
        self.history = list(state["history"])
        if self.ready():
            self.learned = self._rebuild().to(self.device)


def mix_floor(density: TabulatedDensity, floor: float, ctx: ScheduleContext) -> TabulatedDensity:
    """(1 − floor)·density + floor·log-uniform on the same grid, so no region starves."""
    if floor <= 0:
        return density
    width = ctx.u_max - ctx.u_min
    return TabulatedDensity(density.u64, (1 - floor) * density.p64 + floor / width)


def mix_base(density: TabulatedDensity, base: Schedule, weight: float, ctx: ScheduleContext, points: int = 512) -> TabulatedDensity:
    """(1 − weight)·density + weight·base on a fine grid over the range: a defensive mixture (as in
    adaptive importance sampling), so no region of ln σ gets less than ``weight`` times the samples
    the base density gives it, whatever the learned estimate says."""
    if weight <= 0:
        return density
    u = torch.linspace(ctx.u_min, ctx.u_max, points, dtype=torch.float64)
    learned = TabulatedDensity(u, interp(u, density.u64, density.p64)).p64  # renormalized on the fine grid
    fixed = TabulatedDensity(u, base.pdf(u.float().to(base.device)).double().cpu()).p64
    return TabulatedDensity(u, (1 - weight) * learned + weight * fixed)


def check(ok: bool, message: str) -> None:
    """Parameter validation: the registry turns ValueError into a one-line UserError."""
    if not ok:
        raise ValueError(message)

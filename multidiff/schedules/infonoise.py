"""InfoNoise (Raya et al. 2026): sample σ where denoising is informative (DESIGN §2).

Through I–MMSE, noisy observations reduce uncertainty about the clean sample at a rate, per unit
u = ln σ, proportional to ``mmse(σ)/σ²`` (VE coordinates, mmse per dimension in x0 space). The
training step already computes an unbiased per-example estimate of the mmse (the unweighted
x0-space error ``e``), so the profile costs no extra forward passes:

1. ``observe`` bins ``e`` by u into K bins on the device (sums and counts, no host sync);
2. ``refresh`` (every R steps) all-reduces the bins across processes, folds them into a per-bin
   EMA estimate m̂_k, forms the rate ``r_k = m̂_k / σ_k²`` (smoothed in ln r), gates the low-noise
   end with ``g(σ) = σⁿ / (σⁿ + cⁿ)``, divides by the fixed loss weight so the *effective*
   allocation p(u)·w(σ) follows r·g, and mixes in a small log-uniform floor;
3. before ``warmup`` steps it samples from a base density (EDM by default).

The onset rule for the gate's c (when not pinned): normalize the ungated density r/w to its
peak, scan from the peak toward low noise, and take the first σ where it falls below ``onset_p``;
below that σ the estimate is the learned denoiser's error floor rather than information. If it
never falls below, c = σ_min (the gate then only halves the very edge of the range).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from torch import Tensor

from ..errors import NonFiniteLossError
from .base import Probe, Schedule, ScheduleContext, ScheduleTable, _params_dict, all_reduce_sum_, process_rank
from .fixed import EDM2, LogNormal, LogUniform
from .tabulated import TabulatedDensity

BASES = {"edm": LogNormal, "edm2": EDM2, "loguniform": LogUniform}


@dataclass
class InfoNoiseParams:
    """InfoNoise settings. Steps are optimizer steps; ``gate_c`` is a σ (not ln σ)."""

    bins: int = 96  # K bins over [ln σ_min, ln σ_max]
    warmup: int = 500  # steps sampled from `base` before the learned density takes over
    refresh: int = 100  # steps between refreshes (R)
    base: str = "edm"  # warm-up density: edm | edm2 | loguniform
    ema: float = 0.7  # weight of the previous per-bin estimate at each refresh
    min_count: int = 8  # bins with fewer observations keep their estimate and carry the samples over
    smooth: float = 1.0  # std, in bins, of the Gaussian smoothing of ln(rate); 0 disables
    gate_c: Optional[float] = None  # σ of the low-noise gate; None: onset rule
    gate_n: float = 3.0  # gate exponent n
    onset_p: float = 0.002  # onset threshold, relative to the peak of r/w
    floor: float = 0.03  # mixture weight of log-uniform, so no bin starves


def low_noise_gate(sigma: np.ndarray, c: float, n: float) -> np.ndarray:
    """g(σ) = σⁿ / (σⁿ + cⁿ): ≈0 well below c, ≈1 well above."""
    return 1.0 / (1.0 + (c / sigma) ** n)


def onset_sigma(u: np.ndarray, ungated: np.ndarray, p: float) -> float:
    """The onset rule (module docstring): first σ below the peak where ungated/peak < p."""
    rho = ungated / ungated.max()
    peak = int(np.argmax(rho))
    below = np.nonzero(rho[: peak + 1] < p)[0]
    return float(np.exp(u[below.max()])) if below.size else float("nan")


@dataclass
class Profile:
    """InfoNoise's estimate on the bin centres ``u`` (ln σ): all arrays have one value per bin."""

    u: np.ndarray
    mmse: np.ndarray  # m̂, x0-space error per dimension
    rate: np.ndarray  # m̂/σ², smoothed: the entropy-rate profile (up to a constant), per unit u
    gate: np.ndarray  # g(σ)
    density: np.ndarray  # r·g/w, normalized to integrate to 1 over u (before the floor)
    c: float  # gate σ
    rule: str  # "pinned" or "onset"


def infonoise_profile(
    u: np.ndarray,
    mmse: np.ndarray,
    weight: np.ndarray,
    *,
    smooth: float = 0.0,
    gate_c: Optional[float] = None,
    gate_n: float = 3.0,
    onset_p: float = 0.002,
    sigma_min: Optional[float] = None,
) -> Profile:
    """The InfoNoise density on bin centres u (ln σ) from per-bin mmse estimates and w(σ)."""
    sigma = np.exp(u)
    log_rate = np.log(np.maximum(mmse, 1e-30)) - 2 * u
    if smooth > 0:
        log_rate = gaussian_filter1d(log_rate, smooth, mode="nearest")
    rate = np.exp(log_rate)
    ungated = rate / weight
    if gate_c is not None:
        c, rule = float(gate_c), "pinned"
    else:
        c, rule = onset_sigma(u, ungated, onset_p), "onset"
        if not math.isfinite(c):
            c = float(sigma_min if sigma_min is not None else sigma[0])
    g = low_noise_gate(sigma, c, gate_n)
    density = ungated * g
    du = np.gradient(u)
    density = density / float((density * du).sum())
    return Profile(u=u, mmse=mmse, rate=rate, gate=g, density=density, c=c, rule=rule)


def fill_missing(u: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Fill NaN bins by linear interpolation of ln(value) over u; constant beyond the ends."""
    ok = np.isfinite(values)
    logv = np.log(np.maximum(values[ok], 1e-30))
    return np.exp(np.interp(u, u[ok], logv))


class InfoNoise(Schedule):
    name = "infonoise"

    def __init__(self, ctx: ScheduleContext, params: InfoNoiseParams | None = None) -> None:
        super().__init__(ctx, params or InfoNoiseParams())
        p = self.params
        _check(p.bins >= 4, "bins must be >= 4")
        _check(p.refresh >= 1, "refresh must be >= 1")
        _check(p.warmup >= 0, "warmup must be >= 0")
        _check(0 <= p.ema < 1, "ema must be in [0, 1)")
        _check(0 <= p.floor < 1, "floor must be in [0, 1)")
        _check(p.min_count >= 1, "min_count must be >= 1")
        _check(p.gate_c is None or p.gate_c > 0, "gate_c must be a positive σ or null")
        _check(p.base in BASES, f"base must be one of {sorted(BASES)}")
        self.refresh_every = int(p.refresh)
        K = int(p.bins)
        edges = np.linspace(ctx.u_min, ctx.u_max, K + 1)
        self.centers = 0.5 * (edges[:-1] + edges[1:])
        self.grid_u = np.concatenate([[ctx.u_min], self.centers, [ctx.u_max]])
        self.base = BASES[p.base](ctx)
        self.sums = torch.zeros(K)
        self.counts = torch.zeros(K)
        self.mmse = np.full(K, np.nan)
        self.total_counts = np.zeros(K)
        self.active = False
        self.history: list[dict[str, Any]] = []
        self.profile: Optional[Profile] = None
        self.learned: Optional[TabulatedDensity] = None

    # ---- distribution: the base during warm-up, the learned table after ----------------------
    @property
    def current(self) -> Schedule | TabulatedDensity:
        return self.learned if self.active and self.learned is not None else self.base

    def pdf(self, u: Tensor) -> Tensor:
        return self.current.pdf(u)

    def cdf(self, u: Tensor) -> Tensor:
        return self.current.cdf(u)

    def icdf(self, q: Tensor) -> Tensor:
        return self.current.icdf(q)

    def to(self, device: torch.device | str) -> "InfoNoise":
        super().to(device)
        self.sums = self.sums.to(self.device)
        self.counts = self.counts.to(self.device)
        if self.learned is not None:
            self.learned.to(self.device)
        return self

    # ---- estimation ----------------------------------------------------------------------------
    def observe(self, sigma: Tensor, error: Tensor, loss: Tensor) -> None:
        K = self.sums.numel()
        u = sigma.detach().float().log()
        k = ((u - self.ctx.u_min) * (K / (self.ctx.u_max - self.ctx.u_min))).long().clamp(0, K - 1)
        self.sums.index_add_(0, k, error.detach().float())
        self.counts.index_add_(0, k, torch.ones_like(u))

    def synchronize(self) -> None:
        all_reduce_sum_(self.sums, self.counts)
        if process_rank() != 0:
            self.sums.zero_()
            self.counts.zero_()

    def refresh(self, step: int, probe: Optional[Probe] = None) -> dict[str, Any]:
        p = self.params
        all_reduce_sum_(self.sums, self.counts)
        sums, counts = self.sums.double().cpu().numpy(), self.counts.double().cpu().numpy()
        if not np.isfinite(sums).all():
            raise NonFiniteLossError(
                f"non-finite denoising error reached the infonoise statistics before step {step}"
            )
        seen = counts >= p.min_count
        # Consume the bins with enough samples; rare bins carry their partial sums to the next
        # refresh. After the all-reduce every rank holds the totals, so only rank 0 keeps them.
        keep = torch.as_tensor(~seen, device=self.device) if process_rank() == 0 else False
        self.sums.mul_(keep)
        self.counts.mul_(keep)
        self.total_counts += np.where(seen, counts, 0)
        new = sums / np.maximum(counts, 1)
        blended = np.where(np.isnan(self.mmse), new, p.ema * self.mmse + (1 - p.ema) * new)
        self.mmse = np.where(seen, blended, self.mmse)
        info: dict[str, Any] = {"step": int(step), "bins_observed": int(seen.sum())}
        if np.isfinite(self.mmse).any():
            was = self._segment_masses()
            self.active = self.active or step >= p.warmup
            self._rebuild()
            info.update(gate_c=self.profile.c, active=int(self.active))
            if self.active:
                info["tv"] = 0.5 * float(np.abs(self._segment_masses() - was).sum())
        self.history.append(info)
        return info

    def _rebuild(self) -> None:
        """Recompute profile and learned table from m̂ (derived state: never stored)."""
        p = self.params
        weight = self._weight(self.centers)
        self.profile = infonoise_profile(
            self.centers,
            fill_missing(self.centers, self.mmse),
            weight,
            smooth=p.smooth,
            gate_c=p.gate_c,
            gate_n=p.gate_n,
            onset_p=p.onset_p,
            sigma_min=self.ctx.sigma_min,
        )
        dens = self.profile.density
        info = TabulatedDensity(torch.tensor(self.grid_u), torch.tensor(np.r_[dens[0], dens, dens[-1]]))
        width = self.ctx.u_max - self.ctx.u_min
        mixed = (1 - p.floor) * info.p64 + p.floor / width
        self.learned = TabulatedDensity(info.u64, mixed).to(self.device)

    def _weight(self, u: np.ndarray) -> np.ndarray:
        if self.ctx.weight is None:
            return np.ones_like(u)
        return self.ctx.weight(torch.from_numpy(np.exp(u))).double().numpy()

    def _segment_masses(self) -> np.ndarray:
        grid = torch.tensor(self.grid_u, dtype=torch.float32, device=self.device)
        return np.diff(self.current.cdf(grid).double().cpu().numpy().clip(0, 1))

    # ---- state and export -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # tensors and primitives only, so checkpoints load with torch.load(weights_only=True)
        return {
            "sums": self.sums.cpu().clone(),
            "counts": self.counts.cpu().clone(),
            "mmse": torch.from_numpy(self.mmse.copy()),
            "total_counts": torch.from_numpy(self.total_counts.copy()),
            "active": self.active,
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = state["sums"].to(self.device, torch.float32).clone()
        self.counts = state["counts"].to(self.device, torch.float32).clone()
        if process_rank() != 0:  # rank 0's checkpoint holds everyone's pending statistics
            self.sums.zero_()
            self.counts.zero_()
        self.mmse = torch.as_tensor(state["mmse"], dtype=torch.float64).numpy().copy()
        self.total_counts = torch.as_tensor(state["total_counts"], dtype=torch.float64).numpy().copy()
        self.active = bool(state["active"])
        self.history = list(state["history"])
        if np.isfinite(self.mmse).any():
            self._rebuild()

    def to_table(self, n: int = 256) -> ScheduleTable:
        grid = torch.tensor(self.grid_u)
        if self.active and self.learned is not None:
            dens = self.learned
        else:
            with torch.no_grad():
                dens = TabulatedDensity(grid, self.base.pdf(grid.float()).double())
        table = ScheduleTable(
            method=self.name,
            sigma_min=self.ctx.sigma_min,
            sigma_max=self.ctx.sigma_max,
            u=dens.u64.tolist(),
            pdf=dens.p64.tolist(),
            cdf=dens.c64.tolist(),
            params=_params_dict(self.params),
        )
        if self.profile is not None:
            prof = self.profile
            table.profile = {
                "u": prof.u.tolist(),
                "mmse": prof.mmse.tolist(),
                "rate": prof.rate.tolist(),
                "counts": self.total_counts.tolist(),
            }
            table.gate = {"c": prof.c, "n": self.params.gate_n, "rule": prof.rule, "p": self.params.onset_p}
        return table


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)

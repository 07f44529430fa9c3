"""InfoNoise (Raya et al. 2026): sample σ where denoising is informative.

Through I–MMSE, noisy observations reduce uncertainty about the clean sample at a rate, per unit
u = ln σ, proportional to ``mmse(σ)/σ²`` (VE coordinates, mmse per dimension in x0 space). The
training step already computes an unbiased per-example estimate of the mmse (the unweighted
x0-space error ``e``), so the profile costs no extra forward passes:

1. ``observe`` bins ``e`` by u into K bins on the device (sums and counts, no host sync);
2. ``refresh`` (every R steps) all-reduces the bins across processes, folds them into a per-bin
   EMA estimate m̂_k, forms the rate ``r_k = m̂_k / σ_k²`` (smoothed in ln r), gates the low-noise
   end with ``g(σ) = σⁿ / (σⁿ + cⁿ)``, divides by the fixed loss weight so the *effective*
   allocation p(u)·w(σ) follows r·g (``allocation: effective``, the paper's reading; with
   ``allocation: density`` the sampling density itself follows r·g and the loss weight adds its own
   emphasis on top), raises the gated density to the power ``temper`` (1 by default: ξ > 1
   concentrates the samples around the rate's peak, as a narrow fixed density does), mixes in the
   base density with weight ``defensive`` (0 by default) and a small log-uniform floor;
3. before ``warmup`` steps it samples from a base density (EDM by default).

The onset rule for the gate's c (when not pinned), ``onset: peak`` (default): normalize the ungated
density (r/w, or r with ``allocation: density``) to its peak, scan from the peak toward low noise,
and take the first σ where it falls below ``onset_p``; below that σ the estimate is the learned
denoiser's error floor rather than information. If it never falls below, c = σ_min (the gate then
only halves the very edge of the range). ``onset: tail`` is the reading of the paper's appendix
found in public ports: normalize the per-σ profile m̂/σ³ (the rate per unit σ rather than per unit
ln σ) by its peak and take c = inf{σ : it stays below ``onset_p`` for every σ′ ≥ σ}.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from ..settings import choice, integer, number, setting
from .base import ScheduleContext, ScheduleTable
from .bases import fixed_schedule
from .learned import BinnedSchedule, check, exp_smoothed, fill_log_interp, mix_base, mix_floor
from .tabulated import TabulatedDensity


@dataclass
class InfoNoiseParams:
    """InfoNoise settings. Steps are optimizer steps; ``gate_c`` is a σ (not ln σ)."""

    bins: int = setting(96, integer(4))  # K bins over [ln σ_min, ln σ_max]
    warmup: int = setting(500, integer(0))  # steps sampled from `base` before the learned density takes over
    refresh: int = setting(100, integer(1))  # steps between refreshes (R)
    base: str = "edm"  # warm-up density: any fixed schedule (edm, edm2, loguniform, cosine, laplace, ...)
    ema: float = setting(0.7, number(0, 1, open_hi=True))  # weight of the previous per-bin estimate at each refresh
    min_count: int = setting(8, integer(1))  # bins with fewer observations keep their estimate and carry the samples over
    smooth: float = setting(1.0, number(0))  # std, in bins, of the Gaussian smoothing of ln(rate); 0 disables
    gate_c: Optional[float] = setting(None, number(0, open_lo=True, optional=True))  # σ of the low-noise gate; None: onset rule
    gate_n: float = 3.0  # gate exponent n
    onset_p: float = 0.002  # onset threshold, relative to the peak of r/w
    onset: str = setting("peak", choice(("peak", "tail")))  # peak: scan the ungated density down from its peak | tail: per-σ profile m̂/σ³, c where it stays below p above
    allocation: str = setting("effective", choice(("effective", "density")))  # effective: p·w ∝ rate·gate (divide by the loss weight) | density: p ∝ rate·gate
    floor: float = setting(0.03, number(0, 1, open_hi=True))  # mixture weight of log-uniform, so no bin starves
    defensive: float = setting(0.0, number(0, 1, open_hi=True))  # mixture weight of the base density: no region gets less than this share of the base's samples
    temper: float = setting(1.0, number(0, 8, open_lo=True))  # exponent ξ on the gated density (p ∝ (r·g/w)^ξ): > 1 sharpens it toward its peak, < 1 flattens it


def low_noise_gate(sigma: np.ndarray, c: float, n: float) -> np.ndarray:
    """g(σ) = σⁿ / (σⁿ + cⁿ): ≈0 well below c, ≈1 well above."""
    return 1.0 / (1.0 + (c / sigma) ** n)


def onset_sigma(u: np.ndarray, ungated: np.ndarray, p: float) -> float:
    """The ``peak`` onset rule (module docstring): first σ below the peak where ungated/peak < p."""
    rho = ungated / ungated.max()
    peak = int(np.argmax(rho))
    below = np.nonzero(rho[: peak + 1] < p)[0]
    return float(np.exp(u[below.max()])) if below.size else float("nan")


def tail_onset_sigma(u: np.ndarray, mmse: np.ndarray, p: float) -> float:
    """The ``tail`` onset rule: ρ(σ) = (m̂/σ³)/max; c = inf{σ : ρ(σ′) < p for all σ′ ≥ σ} (on the bins)."""
    per_sigma = np.maximum(mmse, 1e-30) * np.exp(-3 * u)
    rho = per_sigma / per_sigma.max()
    above = np.nonzero(rho >= p)[0]
    if not above.size:
        return float("nan")
    last = int(above.max())  # every bin after this one stays below p
    return float(np.exp(u[last + 1])) if last + 1 < u.size else float("nan")


@dataclass
class Profile:
    """InfoNoise's estimate on the bin centres ``u`` (ln σ): all arrays have one value per bin."""

    u: np.ndarray
    mmse: np.ndarray  # m̂, x0-space error per dimension
    rate: np.ndarray  # m̂/σ², smoothed: the entropy-rate profile (up to a constant), per unit u
    gate: np.ndarray  # g(σ)
    density: np.ndarray  # r·g/w (or r·g), normalized to integrate to 1 over u (before the floor)
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
    onset: str = "peak",
    allocation: str = "effective",
    temper: float = 1.0,
) -> Profile:
    """The InfoNoise density on bin centres u (ln σ) from per-bin mmse estimates and w(σ)."""
    sigma = np.exp(u)
    rate = exp_smoothed(np.log(np.maximum(mmse, 1e-30)) - 2 * u, smooth)
    ungated = rate / weight if allocation == "effective" else rate
    if gate_c is not None:
        c, rule = float(gate_c), "pinned"
    elif onset == "tail":
        c, rule = tail_onset_sigma(u, mmse, onset_p), "onset (tail)"
    else:
        c, rule = onset_sigma(u, ungated, onset_p), "onset"
    if not math.isfinite(c):
        c = float(sigma_min if sigma_min is not None else sigma[0])
    g = low_noise_gate(sigma, c, gate_n)
    density = ungated * g
    if temper != 1.0:  # in log space around the peak, so a large ξ cannot underflow the whole table
        log_density = np.log(np.maximum(density, 1e-300))
        density = np.exp(temper * (log_density - log_density.max()))
    du = np.gradient(u)
    density = density / float((density * du).sum())
    return Profile(u=u, mmse=mmse, rate=rate, gate=g, density=density, c=c, rule=rule)


class InfoNoise(BinnedSchedule):
    """The InfoNoise schedule: a :class:`BinnedSchedule` of the x0 error whose table is the
    gated, weight-divided entropy-rate profile (module docstring)."""

    name = "infonoise"
    what = "denoising error"

    def __init__(self, ctx: ScheduleContext, params: InfoNoiseParams | None = None) -> None:
        p = params or InfoNoiseParams()
        super().__init__(ctx, p, fixed_schedule(p.base, ctx))  # checks each parameter against its rule
        check(p.allocation != "effective" or ctx.weight is not None,
              "allocation 'effective' divides by the training loss's weight w(σ): give the weighting (or allocation: density)")  # fmt: skip
        check(p.floor + p.defensive < 1, "defensive: floor + defensive must stay below 1")
        self.profile: Optional[Profile] = None

    @property
    def mmse(self) -> np.ndarray:
        """m̂_k: the per-bin EMA of the x0 error per dimension (NaN where no bin has been seen)."""
        return self.means

    def observed(self, error: Tensor, loss: Tensor) -> Tensor:
        return error

    def _rebuild(self) -> TabulatedDensity:
        p, centers = self.params, self.stats.centers
        self.profile = infonoise_profile(
            centers,
            fill_log_interp(centers, self.means),
            self._weight(centers),
            smooth=p.smooth,
            gate_c=p.gate_c,
            gate_n=p.gate_n,
            onset_p=p.onset_p,
            sigma_min=self.ctx.sigma_min,
            onset=p.onset,
            allocation=p.allocation,
            temper=p.temper,
        )
        dens = self.profile.density  # on the bin centres; the table spans the range, flat at the ends
        grid = np.concatenate([[self.ctx.u_min], centers, [self.ctx.u_max]])
        info = TabulatedDensity(torch.tensor(grid), torch.tensor(np.r_[dens[0], dens, dens[-1]]))
        return mix_floor(mix_base(info, self.base, p.defensive, self.ctx), p.floor, self.ctx)

    def refresh_info(self) -> dict[str, Any]:
        return {"gate_c": self.profile.c} if self.profile is not None else {}

    def _weight(self, u: np.ndarray) -> np.ndarray:
        if self.ctx.weight is None:
            return np.ones_like(u)
        return self.ctx.weight(torch.from_numpy(np.exp(u))).double().numpy()

    def exported_profile(self) -> dict[str, list[float]]:
        if self.profile is None:
            return {}
        prof = self.profile
        return {"u": prof.u.tolist(), "mmse": prof.mmse.tolist(), "rate": prof.rate.tolist(), "gate": prof.gate.tolist(),
                "counts": self.total_counts.tolist()}  # fmt: skip

    def sampling_density(self) -> Optional[tuple[list[float], list[float]]]:
        """The InfoGrid's density: the gated information rate r·g on the bins (flat to the range's ends)."""
        if self.profile is None:
            return None
        prof = self.profile
        info = prof.rate * prof.gate
        u = np.r_[self.ctx.u_min, prof.u, self.ctx.u_max]
        return u.tolist(), np.r_[info[0], info, info[-1]].tolist()

    def notes(self) -> list[str]:
        if self.profile is None:
            return [f"still in its warm-up ({self.params.base} until step {self.params.warmup})"] if not self.active else []
        how = {"pinned": "pinned", "onset": f"onset rule, p = {self.params.onset_p:g}"}.get(self.profile.rule, self.profile.rule)
        return [f"low-noise gate at σ = {self.profile.c:.3g} ({how}, n = {self.params.gate_n:g}); "
                f"allocation: {self.params.allocation}"
                + (f", tempered ξ = {self.params.temper:g}" if self.params.temper != 1.0 else "")]  # fmt: skip

    def to_table(self, n: int = 256) -> ScheduleTable:
        table = super().to_table(n)
        if self.profile is not None:
            table.gate = {"c": self.profile.c, "n": self.params.gate_n, "rule": self.profile.rule, "p": self.params.onset_p}
        return table

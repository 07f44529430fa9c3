"""CDCD time warping (Dieleman et al. 2022): sample σ where the loss changes fastest.

CDCD fits a monotone function of the noise level to the training loss and uses it, normalized,
as the CDF of the noise distribution: the density is the slope of the fitted loss, so training
concentrates where the loss (for text: cross-entropy) moves most with ln σ. Here:

1. ``observe`` bins the per-example loss (``target: loss``, the weighted loss being optimized, as
   in CDCD) or the unweighted x0 error (``target: error``) by u = ln σ, on the device;
2. ``refresh`` (every R steps) folds the bin means into an EMA, smooths them lightly across bins
   (isotonic regression turns noise into steps, whose slopes would be spikes), fits a monotone
   non-decreasing piecewise-linear function F̃ of u through the bin centres (weighted isotonic
   regression, pool adjacent violators), and takes its slope as the density (linearly interpolated between the bin
   edges, so the table stays a :class:`TabulatedDensity`); the CDF is F̃ normalized;
3. a ``floor`` of log-uniform is mixed in so flat stretches of the fit still get samples (and so
   their estimates can move); before ``warmup`` steps it samples from ``base``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from torch import Tensor

from ..settings import because, choice, integer, number, setting
from .base import ScheduleContext
from .bases import fixed_schedule
from .learned import BinnedSchedule, mix_floor
from .tabulated import TabulatedDensity


@dataclass
class TimewarpParams:
    """Time-warping settings. Steps are optimizer steps."""

    bins: int = setting(100, integer(4))  # K bins of ln σ for the piecewise-linear fit
    warmup: int = setting(200, integer(0))  # steps sampled from `base` first
    refresh: int = setting(100, integer(1))  # steps between refits (R)
    base: str = "edm"  # warm-up density: any fixed schedule
    target: str = setting("loss", choice(("loss", "error")))  # what is fitted: loss (the weighted training loss, as CDCD) | error (x0 error)
    ema: float = setting(0.7, number(0, 1, open_hi=True))  # weight of the previous per-bin mean at each refit
    min_count: int = setting(4, integer(1))  # bins with fewer samples keep their estimate and carry the samples over
    smooth: float = setting(2.0, number(0))  # std, in bins, of the Gaussian smoothing of the bin means before the fit; 0 disables
    floor: float = setting(0.05, because(number(0, 1, open_lo=True, open_hi=True), "flat stretches of the fit still need samples"))  # mixture weight of log-uniform


def isotonic_increasing(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares non-decreasing fit of y (SciPy's pool-adjacent-violators); a zero
    weight counts as a tiny one, so every point stays in the fit."""
    from scipy.optimize import isotonic_regression

    return isotonic_regression(y.astype(float), weights=np.maximum(w, 1e-12).astype(float), increasing=True).x


def warp_density(centers: np.ndarray, fitted: np.ndarray) -> np.ndarray:
    """Density on the bin edges (ln σ) from a monotone fit at the bin centres: its slope.

    The slope between neighbouring centres sits on the edge between them; the two outer edges
    get zero (the fit is flat beyond the outer centres).
    """
    slope = np.diff(fitted) / np.diff(centers)
    return np.concatenate([[0.0], np.maximum(slope, 0), [0.0]])


class Timewarp(BinnedSchedule):
    name = "timewarp"

    def __init__(self, ctx: ScheduleContext, params: Optional[TimewarpParams] = None) -> None:
        p = params or TimewarpParams()
        super().__init__(ctx, p, fixed_schedule(p.base, ctx))
        self.what = f"training {p.target}"
        self.fitted: Optional[np.ndarray] = None

    def observed(self, error: Tensor, loss: Tensor) -> Tensor:
        return loss if self.params.target == "loss" else error

    def ready(self) -> bool:
        return bool(np.isfinite(self.means).sum() >= 2)

    def filled_means(self) -> np.ndarray:
        """Bin means, unseen bins linearly interpolated between seen ones."""
        c, ok = self.stats.centers, np.isfinite(self.means)
        return np.interp(c, c[ok], self.means[ok])

    def _rebuild(self) -> TabulatedDensity:
        means = self.filled_means()
        if self.params.smooth > 0:
            means = gaussian_filter1d(means, self.params.smooth, mode="nearest")
        self.fitted = isotonic_increasing(means, np.maximum(self.total_counts, 1.0))
        dens = warp_density(self.stats.centers, self.fitted)
        if not dens.max() > 0:  # a flat fit says nothing: sample log-uniformly
            dens = np.ones_like(dens)
        return mix_floor(TabulatedDensity(torch.tensor(self.stats.edges), torch.tensor(dens)), self.params.floor, self.ctx)

    def exported_profile(self) -> dict[str, list[float]]:
        if self.fitted is None:
            return {}
        return {
            "u": self.stats.centers.tolist(),
            self.params.target: self.filled_means().tolist(),
            "fitted": self.fitted.tolist(),
            "counts": self.total_counts.tolist(),
        }

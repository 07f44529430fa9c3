"""Samplers over a σ tensor, and σ grids, in the style of k-diffusion.

A sampler is a free function ``sampler(denoiser, x, sigmas, generator=...)``: ``x`` starts as
σ_0·ε, ``sigmas`` is decreasing and ends with 0, and ``denoiser(x, sigma_batch)`` returns the
x0 estimate. Grids return such a tensor of σ's (σ, not ln σ), including the final 0.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from ..recipe import SampleConfig

Denoiser = Callable[[Tensor, Tensor], Tensor]


def _append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """EDM's grid: σ_i = (σmax^(1/ρ) + i/(n−1)·(σmin^(1/ρ) − σmax^(1/ρ)))^ρ, then 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho).float()


def loguniform(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """n σ's equally spaced in ln σ from σ_max down to σ_min, then 0."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()).float()


def from_density(u: np.ndarray, density: np.ndarray, n: int) -> Tensor:
    """n σ's at equal quantiles of a density tabulated on u = ln σ (from high to low noise), then 0."""
    from ..schedules.tabulated import TabulatedDensity

    dens = TabulatedDensity(torch.as_tensor(u, dtype=torch.float64), torch.as_tensor(density, dtype=torch.float64))
    q = torch.linspace(1, 0, n, dtype=torch.float32)
    return _append_zero(dens.icdf(q).double().exp()).float()


def karras_density(u: np.ndarray, rho: float = 7.0) -> np.ndarray:
    """The density per unit u = ln σ of EDM's ρ-grid in the limit of many steps: σ^(1/ρ), normalized
    over u's span (the grid is uniform in σ^(1/ρ), and dσ^(1/ρ)/du = σ^(1/ρ)/ρ)."""
    dens = np.exp(np.asarray(u) / rho)
    return dens / np.trapezoid(dens, u)


#: share of EDM's ρ-spacing in learned grids (see :func:`from_schedule`; the recipes' ``sample.grid_mix``)
GRID_MIX = SampleConfig.grid_mix


def from_schedule(schedule: Any, n: int, mix: float = GRID_MIX, rho: float = 7.0) -> Tensor:
    """Sampling σ's from a schedule, a schedule table or a schedule file path (σ, then a final 0).

    The σ's sit at equal quantiles of a mixture: (1 − mix) × the learned density (with an InfoNoise
    profile the InfoGrid's cumulative information, the gated rate r·g; otherwise the training
    density, e.g. a CRS CDF) + mix × the density of EDM's ρ-grid. The learned part puts steps where
    the data are decided; the ρ part keeps the steps an ODE solver needs at high noise and near the
    data's coarsest scale, where the learned density can be nearly zero. Quantiles of the learned
    density alone jump from σ_max to a few σ_data in one step (on Gaussian data of std 0.7 with the
    exact denoiser, 16 Heun steps end at std 1.05, against 0.745 on EDM's grid). On continuous data
    the information rate sits at low noise: with an equal mix, a Gaussian whose stds span 1 to 0.005
    ends 3× further from its coarsest std than on EDM's grid, and at 8 steps latents' Fréchet
    distance triples. The default 0.75 keeps that error within 2× of EDM's grid while beating it on
    the typical scale (and ends the std-0.7 Gaussian at 0.718 in 16 steps).
    """
    from ..schedules.base import Schedule, ScheduleTable
    from ..schedules.io import load_schedule_file

    if isinstance(schedule, Schedule):
        table = schedule.to_table()
    elif isinstance(schedule, ScheduleTable):
        table = schedule
    else:
        table = load_schedule_file(schedule).table
    u, density = sampling_density(table)
    if not 0 <= mix <= 1:
        raise ValueError(f"grid mix must be in [0, 1], got {mix}")
    density = np.asarray(density, dtype=np.float64)
    density = density / np.trapezoid(density, u)
    return from_density(u, (1 - mix) * density + mix * karras_density(u, rho), n)


def sampling_density(table: Any) -> tuple[np.ndarray, np.ndarray]:
    """(u, density) on which sampling σ's are placed: the table's sampling density when the schedule
    gives one (InfoNoise: its gated information rate), else its training pdf."""
    if table.sampling:
        return np.asarray(table.sampling["u"]), np.asarray(table.sampling["density"])
    return np.asarray(table.u), np.asarray(table.pdf)


def _gamma(sigma: float, n_steps: int, churn: float, tmin: float, tmax: float) -> float:
    return min(churn / n_steps, math.sqrt(2) - 1) if (churn > 0 and tmin <= sigma <= tmax) else 0.0


@torch.no_grad()
def heun(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    churn: float = 0.0,
    churn_tmin: float = 0.0,
    churn_tmax: float = float("inf"),
    noise_scale: float = 1.0,
    generator: Optional[torch.Generator] = None,
    second_order: bool = True,
) -> Tensor:
    """EDM Algorithm 2: Heun's 2nd-order method with optional churn (stochasticity)."""
    n = len(sigmas) - 1
    ones = x.new_ones(x.shape[0])
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        gamma = _gamma(s, n, churn, churn_tmin, churn_tmax)
        s_hat = s * (1 + gamma)
        if gamma > 0:
            eps = torch.randn(x.shape, generator=generator, device=x.device) * noise_scale
            x = x + math.sqrt(s_hat**2 - s**2) * eps
        d = (x - denoiser(x, s_hat * ones)) / s_hat
        x_next = x + (s_next - s_hat) * d
        if second_order and s_next > 0:
            d_next = (x_next - denoiser(x_next, s_next * ones)) / s_next
            x_next = x + (s_next - s_hat) * 0.5 * (d + d_next)
        x = x_next
    return x


def euler(denoiser: Denoiser, x: Tensor, sigmas: Tensor, **kwargs: Any) -> Tensor:
    """First-order Euler steps of the probability-flow ODE (same churn options as ``heun``)."""
    return heun(denoiser, x, sigmas, second_order=False, **kwargs)


SAMPLERS = {"heun": heun, "euler": euler}


def sigma_grid(kind: str, n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, schedule: Any = None,
               mix: float = GRID_MIX) -> Tensor:  # fmt: skip
    """A grid by name: ``karras``, ``loguniform``, ``learned`` (needs ``schedule``) or a schedule file path."""
    if kind == "karras":
        return karras(n, sigma_min, sigma_max, rho)
    if kind == "loguniform":
        return loguniform(n, sigma_min, sigma_max)
    if kind == "learned":
        return from_schedule(schedule, n, mix, rho)
    return from_schedule(kind, n, mix, rho)

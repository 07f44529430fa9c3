"""Samplers over a σ tensor, and the closed-form σ grids, in the style of k-diffusion.

A sampler is a free function ``sampler(denoiser, x, sigmas, generator=..., callback=...)``: ``x``
starts as σ_0·ε, ``sigmas`` is decreasing and ends with 0, and ``denoiser(x, sigma_batch)`` returns
the x0 estimate. Grids return such a tensor of σ's (σ, not ln σ), including the final 0. The
samplers know σ lists only: grids placed by a schedule live with the schedules
(:mod:`multidiff.schedules.grids`).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor

Denoiser = Callable[[Tensor, Tensor], Tensor]


def append_zero(sigmas: Tensor) -> Tensor:
    """σ's followed by the final 0 every sampler ends at."""
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """EDM's grid: σ_i = (σmax^(1/ρ) + i/(n−1)·(σmin^(1/ρ) − σmax^(1/ρ)))^ρ, then 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((hi + ramp * (lo - hi)) ** rho).float()


def loguniform(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """n σ's equally spaced in ln σ from σ_max down to σ_min, then 0."""
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()).float()


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
    callback: Optional[Callable[[dict[str, Any]], None]] = None,
) -> Tensor:
    """EDM Algorithm 2: Heun's 2nd-order method with optional churn (stochasticity).

    ``callback``, when given, is called after every step with ``x`` (the state before the step),
    ``i``, ``sigma`` (σ_i), ``sigma_hat`` (σ_i after churn) and ``denoised`` (the x0 estimate at
    σ_hat), as k-diffusion's samplers call theirs."""
    n = len(sigmas) - 1
    ones = x.new_ones(x.shape[0])
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        gamma = _gamma(s, n, churn, churn_tmin, churn_tmax)
        s_hat = s * (1 + gamma)
        if gamma > 0:
            eps = torch.randn(x.shape, generator=generator, device=x.device) * noise_scale
            x = x + math.sqrt(s_hat**2 - s**2) * eps
        denoised = denoiser(x, s_hat * ones)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": s, "sigma_hat": s_hat, "denoised": denoised})
        d = (x - denoised) / s_hat
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

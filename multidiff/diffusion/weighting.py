"""Fixed loss weights w(σ). A schedule never changes these; it only changes p(u)."""
from __future__ import annotations

from typing import Callable

from torch import Tensor

from ..errors import UserError
from .precond import edm_output_variance


def edm_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """EDM: (σ² + σd²) / (σ·σd)² = 1/c_out², which makes the effective target unit-variance at every σ."""
    return 1 / edm_output_variance(sigma, sigma_data)


def snr_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """1/σ²: the ELBO weight in x0 space (VE continuous-time bound)."""
    return 1 / sigma**2


def unit_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """1: plain x0 mean-squared error."""
    return sigma * 0 + 1


WEIGHTINGS = {"edm": edm_weight, "snr": snr_weight, "uniform": unit_weight}


def get_weighting(name: str, sigma_data: float) -> Callable[[Tensor], Tensor]:
    """w(σ) as a one-argument function of σ (σ, not ln σ)."""
    if name not in WEIGHTINGS:
        raise UserError(f"diffusion.weighting: unknown weighting {name!r}; choose one of {', '.join(WEIGHTINGS)}")
    fn = WEIGHTINGS[name]
    return lambda sigma: fn(sigma, sigma_data)

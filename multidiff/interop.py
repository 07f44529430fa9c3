"""multidiff σ grids in the terms other samplers take (k-diffusion, diffusers).

A multidiff grid (:func:`multidiff.schedules.grids.from_schedule`, ``multidiff schedule
sigmas``) is K descending VE noise levels σ followed by a final 0.0. The σ's must be in the units of
the model that will be sampled: for a schedule learned through ``multidiff.DDPM(alphas_cumprod,
sigma_data)`` they are diffusers' own σ = √((1 − ᾱ)/ᾱ) whatever ``sigma_data`` was.

What each consumer takes (checked against diffusers 0.42.1's source and by ``tests/test_examples.py``):

- k-diffusion samplers: the σ list itself (:func:`for_k_diffusion`).
- ``EulerDiscreteScheduler.set_timesteps(sigmas=...)``: the same K+1 σ's; it derives its timesteps
  from them (:func:`for_diffusers_euler`).
- ``HeunDiscreteScheduler``: its ``set_timesteps`` takes no σ's; it steps through an interleaved
  list [σ0, σ1, σ1, …, σ_{K−1}, σ_{K−1}, 0] (2K values; 2K − 1 model calls, the last step Euler's),
  which :func:`apply_to_scheduler` installs with matching timesteps (:func:`for_diffusers_heun`).
- ``EDMEulerScheduler.set_timesteps(sigmas=...)``: a float64 tensor of K positions on its Karras
  ramp, which it maps through its own σ_min, σ_max, ρ (:func:`for_diffusers_edm`); it appends the 0.
  (A list fails in it, and a tensor of σ's would be read as ramp positions.)

Sampling with a configured diffusers scheduler: start from ``sigmas[0] * noise`` (not
``init_noise_sigma``), and at the i-th call (``for i, t in enumerate(scheduler.timesteps)``) give
the model ``scheduler.sigmas[i]``. An x0-predicting multidiff denoiser needs
``prediction_type="sample"`` and no ``scale_model_input`` (it applies c_in itself); with
``EDMEulerScheduler`` pass its output as ``step(..., pred_original_sample=x0)``. Calling
``set_timesteps`` again discards the grid.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .errors import UserError

Grid = Union[Tensor, Sequence[float]]

#: EDMEulerScheduler's defaults (σ_min, σ_max, ρ), also the CLI's for ``--format diffusers-edm``
EDM_DEFAULTS = (0.002, 80.0, 7.0)


def as_grid(sigmas: Grid) -> Tensor:
    """The grid as a float32 tensor (diffusers keeps σ's in float32), checked: 1-D, K ≥ 1 positive
    σ's strictly decreasing, then 0."""
    grid = torch.as_tensor(sigmas, dtype=torch.float32).flatten().cpu()
    if grid.numel() < 2 or float(grid[-1]) != 0.0:
        raise UserError("a multidiff σ grid has K >= 1 descending σ's followed by 0.0")
    head = grid[:-1]
    if not bool((head > 0).all()) or not bool((head.diff() < 0).all()) or not bool(torch.isfinite(head).all()):
        raise UserError("the σ's of a grid must be finite, positive and strictly decreasing")
    return grid


def for_k_diffusion(sigmas: Grid) -> list[float]:
    """σ's for k-diffusion's samplers (``torch.tensor(list)``): the K+1 σ's as they are, 0 last."""
    return as_grid(sigmas).tolist()


def for_diffusers_euler(sigmas: Grid) -> list[float]:
    """σ's for ``EulerDiscreteScheduler.set_timesteps(sigmas=list)``: the K+1 σ's, 0 last (it casts
    them to float32 and takes timesteps from the first K)."""
    return as_grid(sigmas).tolist()


def for_diffusers_heun(sigmas: Grid) -> list[float]:
    """The 2K σ's ``HeunDiscreteScheduler`` steps through: σ0, then each inner σ twice (the end of
    one step and the start of the next), then 0. :func:`apply_to_scheduler` installs them with the
    matching 2K − 1 timesteps; by hand: ``set_timesteps(K)``, then ``scheduler.sigmas =
    torch.tensor(list)`` (its timesteps then stay its own: give the model σ, not t)."""
    grid = as_grid(sigmas)
    return torch.cat([grid[:1], grid[1:-1].repeat_interleave(2), grid[-1:]]).tolist()


def for_diffusers_edm(sigmas: Grid, sigma_min: float = EDM_DEFAULTS[0], sigma_max: float = EDM_DEFAULTS[1],
                      rho: float = EDM_DEFAULTS[2]) -> list[float]:  # fmt: skip
    """K ramp positions (not σ's) for ``EDMEulerScheduler.set_timesteps(sigmas=torch.tensor(ramp,
    dtype=torch.float64))`` of a scheduler configured with these ``sigma_min``, ``sigma_max``, ``rho``.

    It maps a ramp value r to σ = (σmax^(1/ρ) + r·(σmin^(1/ρ) − σmax^(1/ρ)))^ρ in float64, so
    r = (σ^(1/ρ) − σmax^(1/ρ)) / (σmin^(1/ρ) − σmax^(1/ρ)); σ's outside [σ_min, σ_max] give r
    outside [0, 1], which it maps back just as well. Pass float64: a float32 ramp moves the σ's by a
    few ulps. The final 0 is left out: the scheduler appends it.
    """
    if not 0 < sigma_min < sigma_max or not rho > 0:
        raise UserError(f"need 0 < sigma_min < sigma_max and rho > 0, got {sigma_min}, {sigma_max}, {rho}")
    head = as_grid(sigmas)[:-1].double()  # float64 like the scheduler, so the σ's come back as they went in
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return ((head ** (1 / rho) - hi) / (lo - hi)).tolist()


def sigma_from_edm_ramp(ramp: Grid, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    """The σ's (float64) of ramp positions: the inverse of :func:`for_diffusers_edm`."""
    r = torch.as_tensor(ramp, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + r * (lo - hi)) ** rho


def discrete_timesteps(sigmas: Grid, alphas_cumprod: Union[Tensor, Sequence[float]]) -> Tensor:
    """Continuous timesteps (float32) of positive σ's in a discrete scheduler's training schedule:
    its σ_k = √((1 − ᾱ_k)/ᾱ_k) rises with k, and t interpolates k linearly in ln σ, clamped to
    [0, T − 1] (what diffusers' discrete schedulers derive from σ's)."""
    a = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu().numpy()
    log_train = 0.5 * np.log((1 - a) / a)
    log_sigma = np.log(np.asarray(torch.as_tensor(sigmas, dtype=torch.float64).cpu()))
    return torch.from_numpy(np.interp(log_sigma, log_train, np.arange(len(a), dtype=np.float64))).float()


# ---- configuring a scheduler object ---------------------------------------------------------------


def _apply_euler(scheduler: Any, grid: Tensor) -> None:
    scheduler.set_timesteps(sigmas=for_diffusers_euler(grid))


def _apply_heun(scheduler: Any, grid: Tensor) -> None:
    k = grid.numel() - 1
    scheduler.set_timesteps(k)  # resets its state (step index, stored derivative) and sizes the lists
    t = discrete_timesteps(grid[:-1], scheduler.alphas_cumprod)
    scheduler.sigmas = torch.tensor(for_diffusers_heun(grid), dtype=torch.float32)
    scheduler.timesteps = torch.cat([t[:1], t[1:].repeat_interleave(2)])


def _apply_edm(scheduler: Any, grid: Tensor) -> None:
    cfg = scheduler.config
    if cfg.sigma_schedule != "karras":  # the exponential schedule uses only the ramp's length
        raise UserError("EDMEulerScheduler follows a given grid only with sigma_schedule='karras'")
    if cfg.final_sigmas_type != "zero":
        raise UserError("EDMEulerScheduler follows a multidiff grid only with final_sigmas_type='zero'")
    ramp = for_diffusers_edm(grid, cfg.sigma_min, cfg.sigma_max, cfg.rho)
    scheduler.set_timesteps(num_inference_steps=len(ramp), sigmas=torch.tensor(ramp, dtype=torch.float64))


_APPLY: dict[str, Callable[[Any, Tensor], None]] = {
    "EulerDiscreteScheduler": _apply_euler,
    "HeunDiscreteScheduler": _apply_heun,
    "EDMEulerScheduler": _apply_edm,
}


def apply_to_scheduler(scheduler: Any, sigmas: Grid) -> Any:
    """Make a diffusers scheduler step through exactly this multidiff grid (σ's, descending, 0 last);
    returns the scheduler.

    Supported: ``EulerDiscreteScheduler`` (``set_timesteps(sigmas=...)``), ``HeunDiscreteScheduler``
    (its interleaved ``sigmas`` and ``timesteps`` replaced after ``set_timesteps(K)``) and
    ``EDMEulerScheduler`` (the Karras ramp of its own σ_min, σ_max, ρ). The begin index is set to 0:
    σ's above a discrete scheduler's training range share its last timestep, and diffusers would
    otherwise start at the second of equal timesteps. See the module docstring for the sampling loop.
    """
    grid = as_grid(sigmas)
    for cls in type(scheduler).__mro__:
        if cls.__name__ in _APPLY:
            _APPLY[cls.__name__](scheduler, grid)
            scheduler.set_begin_index(0)
            return scheduler
    raise UserError(f"apply_to_scheduler supports {', '.join(_APPLY)}; got {type(scheduler).__name__}")


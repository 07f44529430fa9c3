"""Schedules in one call, for any training loop (multidiff's trainer uses the same objects).

    sched = make_schedule("infonoise", sigma_min=0.002, sigma_max=80, sigma_data=0.5, weighting="edm", warmup=500)
    sigma = sched.sample(batch_size)                 # σ (VE), on the schedule's device
    sched.observe(sigma, x0_error, loss)             # per-example x0 error per dimension (and weighted loss)
    if sched.refresh_due(step): sched.refresh(step)
    sched.save("schedule.json")                      # reused by load_schedule or `multidiff train --schedule`

For a loop in another variable (DDPM timesteps, flow-matching t, VP time, logSNR) use
:mod:`multidiff.parameterizations`, which converts samples and losses exactly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Union

from torch import Tensor

from ..errors import UserError
from .base import Schedule, ScheduleContext

Weighting = Union[str, Callable[[Tensor], Tensor]]


def schedule_context(sigma_min: float, sigma_max: float, sigma_data: float, weighting: Optional[Weighting],
                     weighting_name: Optional[str] = None, native: Optional[Callable[[ScheduleContext], Schedule]] = None
                     ) -> ScheduleContext:  # fmt: skip
    """The one place a :class:`ScheduleContext` is made from settings: σ range (σ, not ln σ), σ_data,
    and the loss weight by name (``edm``, ``snr``, ``uniform``, ..., built for this σ_data), as a
    function of σ, or None (a frozen schedule that needs none)."""
    from ..diffusion.weighting import WEIGHTINGS, get_weighting

    if weighting is None:
        fn, label = None, weighting_name
    elif isinstance(weighting, str):  # get_weighting refuses an unknown name
        fn, label = get_weighting(weighting, float(sigma_data)), weighting_name or weighting
    elif callable(weighting):
        fn, label = weighting, weighting_name or "custom"
    else:
        raise UserError(f"weighting must be one of {', '.join(WEIGHTINGS)} or a function of σ, got {weighting!r}")
    return ScheduleContext(float(sigma_min), float(sigma_max), float(sigma_data), fn, label, native)


def make_schedule(name: str, *, sigma_min: float, sigma_max: float, sigma_data: float, weighting: Weighting,
                  weighting_name: Optional[str] = None, native: Optional[Callable[[ScheduleContext], Schedule]] = None,
                  **params: Any) -> Schedule:  # fmt: skip
    """A schedule by name (``list_schedules()``) with its parameters, over [σ_min, σ_max] (σ, not ln σ).

    ``sigma_data``: RMS of the data the σ's refer to. ``weighting``: the training loss's fixed weight
    in x0 terms — ``"edm"``, ``"snr"`` (1/σ²), ``"uniform"`` or a function of σ; there is no default,
    because the weight decides what InfoNoise learns (it divides the weight out). ``native``: the
    density of the caller's own noise variable (what ``base: native`` warms up from; the
    parameterizations supply it). Bad names or parameters raise :class:`multidiff.UserError` with a
    one-line message.
    """
    from .registry import build_schedule

    if weighting is None:
        raise UserError("weighting: give the training loss's weight (edm, snr, uniform, ...) or a function of σ")
    return build_schedule(name, params, schedule_context(sigma_min, sigma_max, sigma_data, weighting, weighting_name, native))


def load_schedule(path: Union[str, Path], weighting: Optional[Weighting] = None) -> Schedule:
    """A schedule file as a frozen schedule (its σ range and σ_data as recorded)."""
    from ..diffusion.weighting import WEIGHTINGS
    from .io import load_schedule_file
    from .tabulated import TabulatedSchedule

    loaded = load_schedule_file(path)
    t, meta = loaded.table, loaded.meta
    sigma_data = float(meta.get("sigma_data") or 1.0)
    if isinstance(weighting, str) and weighting not in WEIGHTINGS:
        raise UserError(f"weighting {weighting!r}: choose one of {', '.join(WEIGHTINGS)}, or pass a function of σ")
    name = weighting if isinstance(weighting, str) else meta.get("weighting")
    if callable(weighting):
        ctx = schedule_context(t.sigma_min, t.sigma_max, sigma_data, weighting)
    else:  # a recorded name this version does not know leaves the weight unset, as a frozen schedule needs none
        ctx = schedule_context(t.sigma_min, t.sigma_max, sigma_data, name if name in WEIGHTINGS else None,
                               name if isinstance(name, str) else None)  # fmt: skip
    return TabulatedSchedule(ctx, t, source=str(path))


def list_schedules() -> dict[str, dict[str, Any]]:
    """Every schedule name → its parameters with their defaults."""
    from .registry import REGISTRY, param_defaults

    return {name: param_defaults(name) for name in REGISTRY}

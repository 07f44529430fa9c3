"""The fixed schedules by name: closed-form densities with no state, which any learned schedule can
start from (InfoNoise's and CRS's warm-up base, timewarp's base, adaptive's importance target).

A leaf of the schedules package: it imports only the closed forms, so every learned schedule can
import it without a cycle through the registry.
"""
from __future__ import annotations

from .base import Schedule, ScheduleContext
from .families import Cauchy, Chen, Cosine, Laplace
from .fixed import EDM2, LogNormal, LogUniform

FIXED: dict[str, type[Schedule]] = {
    "edm": LogNormal,
    "edm2": EDM2,
    "loguniform": LogUniform,
    "cosine": Cosine,
    "laplace": Laplace,
    "cauchy": Cauchy,
    "chen": Chen,
}


def fixed_schedule(name: str, ctx: ScheduleContext) -> Schedule:
    """A fixed schedule with its default parameters, or ``native``: the density the caller's loop
    draws its own noise variable from (a parameterization's ``make_schedule`` supplies it).
    ValueError naming the choices otherwise."""
    if name == "native":
        if ctx.native is None:
            raise ValueError("base 'native' is the loop's own density: make the schedule through a parameterization "
                             "(e.g. multidiff.DDPM(alphas_cumprod).make_schedule(...)), or name a fixed schedule")  # fmt: skip
        return ctx.native(ctx)
    if name not in FIXED:
        raise ValueError(f"base/target must be a fixed schedule ({', '.join(FIXED)}) or native, got {name!r}")
    return FIXED[name](ctx)

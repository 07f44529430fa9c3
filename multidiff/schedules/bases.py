"""The fixed schedules by name: closed-form densities with no state, which any learned schedule can
start from (InfoNoise's and CRS's warm-up base, timewarp's base, adaptive's importance target).

A leaf of the schedules package: it imports only the closed forms, so every learned schedule can
import it without a cycle through the registry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from .base import Schedule, ScheduleContext
from .families import Cauchy, CauchyParams, Chen, ChenParams, Cosine, Laplace, LaplaceParams
from .fixed import EDM2, EDM2Params, LogNormal, LogNormalParams, LogUniform, NoParams


@dataclass(frozen=True)
class ScheduleSpec:
    """A registry entry: the CLI name, the class, its parameter dataclass and a one-line summary."""

    name: str
    cls: type[Schedule]
    params: type
    summary: str
    #: how to build it from its context and parameters, when that is more than ``cls(ctx, params)``
    make: Optional[Callable[[ScheduleContext, Any], Schedule]] = None

    def build(self, ctx: ScheduleContext, params: Any) -> Schedule:
        return self.make(ctx, params) if self.make is not None else self.cls(ctx, params)


#: the fixed closed forms, as the registry lists them (its first entries)
FIXED_SPECS: list[ScheduleSpec] = [
    ScheduleSpec("edm", LogNormal, LogNormalParams, "EDM log-normal: ln σ ~ N(p_mean, p_std²)"),
    ScheduleSpec("edm2", EDM2, EDM2Params, "EDM2 log-normal: ln σ ~ N(-0.4, 1.0²)"),
    ScheduleSpec("loguniform", LogUniform, NoParams, "uniform in ln σ over the range"),
    ScheduleSpec("cosine", Cosine, NoParams, "VP cosine: λ = −2 ln tan(πt/2), t ~ U(0, 1)"),
    ScheduleSpec("laplace", Laplace, LaplaceParams, "logSNR λ ~ Laplace(mu, b) (Hang et al. 2024)"),
    ScheduleSpec("cauchy", Cauchy, CauchyParams, "logSNR λ ~ Cauchy(mu, gamma) (Hang et al. 2024)"),
    ScheduleSpec("chen", Chen, ChenParams, "Chen 2023: γ(t) linear | cosine | sigmoid, t ~ U(0, 1), input scale b"),
]
FIXED: dict[str, type[Schedule]] = {spec.name: spec.cls for spec in FIXED_SPECS}


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

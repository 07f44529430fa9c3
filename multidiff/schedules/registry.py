"""Schedules by CLI name, their parameters and defaults, and construction with validation."""
from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any

from ..errors import UserError
from .adaptive import Adaptive, AdaptiveParams
from .base import Schedule, ScheduleContext
from .bases import FIXED, FIXED_SPECS, ScheduleSpec, fixed_schedule  # noqa: F401 - re-exported
from .crs import CRS, CRSParams
from .curriculum import Curriculum, CurriculumParams
from .infonoise import InfoNoise, InfoNoiseParams
from .io import load_schedule_file
from .tabulated import TabulatedSchedule
from .timewarp import Timewarp, TimewarpParams


def _curriculum(ctx: ScheduleContext, params: CurriculumParams) -> Curriculum:
    """A curriculum around any registered schedule but another curriculum or adaptive (whose own
    sampling correction a curriculum would undo)."""
    if params.base not in REGISTRY or params.base in ("curriculum", "adaptive"):
        raise ValueError(f"base must be a schedule name other than curriculum and adaptive, got {params.base!r}")
    return Curriculum(ctx, params, base=build_schedule(params.base, {}, ctx))


REGISTRY: dict[str, ScheduleSpec] = {
    s.name: s
    for s in [
        *FIXED_SPECS,
        ScheduleSpec(
            "infonoise", InfoNoise, InfoNoiseParams, "learned online from the entropy-rate profile mmse(σ)/σ²"
        ),
        ScheduleSpec("crs", CRS, CRSParams, "constant rate of distributional change: p ∝ speed^xi (fd | x0 | eps)"),
        ScheduleSpec("timewarp", Timewarp, TimewarpParams, "CDCD time warping: monotone fit of loss vs ln σ as the CDF"),
        ScheduleSpec("adaptive", Adaptive, AdaptiveParams, "Kingma & Gao: p ∝ target·EMA loss per bin, loss × target/p"),
        ScheduleSpec("curriculum", Curriculum, CurriculumParams, "Kim et al. 2024: equal-mass clusters of a base, high noise first",
                     make=_curriculum),
    ]
}

def is_fixed_method(method: str) -> bool:
    """Whether ``method`` (a schedule's name, as schedule files record it) is a fixed closed form:
    one that neither learns from the data or the model nor changes during training."""
    return method in FIXED


def is_schedule_file(spec: str) -> bool:
    return spec.endswith(".json") or Path(spec).is_file()


def param_defaults(name: str) -> dict[str, Any]:
    return dataclasses.asdict(REGISTRY[name].params())


def make_params(name: str, values: dict[str, Any]) -> Any:
    """The parameter dataclass of schedule ``name`` from a dict, with unknown keys and bad types refused."""
    cls = REGISTRY[name].params
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise UserError(
            f"schedule '{name}' has no parameter {unknown[0]!r}; its parameters are: {', '.join(sorted(fields)) or 'none'}"
        )
    return cls(**{k: _coerce(v, hints[k]) for k, v in values.items()})


def _coerce(value: Any, hint: Any) -> Any:
    """A number written the other way (``3.0`` for an integer, ``3`` for a float) as the field's type;
    anything else as given, for the parameter's rule to judge (checked when the schedule is built)."""
    kinds = set(typing.get_args(hint)) or {hint}
    if isinstance(value, bool):
        return value
    if int in kinds and isinstance(value, float) and value.is_integer():
        return int(value)
    if float in kinds and isinstance(value, int):
        return float(value)
    return value


def build_schedule(spec: str, values: dict[str, Any], ctx: ScheduleContext) -> Schedule:
    """A schedule from a CLI name (with parameter values) or a schedule file path (frozen)."""
    if spec in REGISTRY:
        params = make_params(spec, values)
        try:
            return REGISTRY[spec].build(ctx, params)
        except ValueError as exc:
            raise UserError(f"schedule '{spec}': {exc}") from None
    if is_schedule_file(spec):
        loaded = load_schedule_file(spec)
        table = loaded.table
        if not (math.isclose(table.sigma_min, ctx.sigma_min, rel_tol=1e-6)
                and math.isclose(table.sigma_max, ctx.sigma_max, rel_tol=1e-6)):
            raise UserError(
                f"schedule file {spec} covers σ in [{table.sigma_min:g}, {table.sigma_max:g}] but the recipe "
                f"trains on [{ctx.sigma_min:g}, {ctx.sigma_max:g}]; set diffusion.sigma_min/sigma_max to match"
            )
        return TabulatedSchedule(ctx, table, source=spec)
    raise UserError(
        f"unknown schedule {spec!r}; choose one of {', '.join(REGISTRY)} or a schedule file (.json)"
    )

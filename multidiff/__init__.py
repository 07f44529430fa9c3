"""multidiff: continuous diffusion on non-image data, with training noise distributions learned from
the data (InfoNoise, CRS, ...) instead of inherited from EDM's image-tuned log-normal.

The library surface (schedules in anyone's training loop):

- :func:`make_schedule`, :func:`load_schedule`, :func:`list_schedules`, :class:`Schedule`;
- parameterizations that speak other loops' noise variables: :class:`VE`, :class:`LogSNR`,
  :class:`VPTime`, :class:`DDPM`, :class:`FlowMatching` (``.make_schedule(...)`` →
  :class:`LoopSchedule`);
- drop-ins where other trainers take a density: :class:`KDiffusionDensity` (k-diffusion's
  ``sample_density``) and :class:`DiffusersTimestepDensity` (diffusers' flow-matching scripts);
- :class:`UserError`: every bad input, with a one-line message.

The command line (``multidiff train | compare | sample | eval | schedule``) covers the toolkit's
own trainer, domains and reports. Names are imported on first use, so the command line starts fast.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_EXPORTS = {
    "UserError": "multidiff.errors",
    "DDPM": "multidiff.parameterizations",
    "DiffusersTimestepDensity": "multidiff.dropins",
    "KDiffusionDensity": "multidiff.dropins",
    "VE": "multidiff.parameterizations",
    "FlowMatching": "multidiff.parameterizations",
    "LogSNR": "multidiff.parameterizations",
    "LoopSchedule": "multidiff.parameterizations",
    "Parameterization": "multidiff.parameterizations",
    "VPTime": "multidiff.parameterizations",
    "Schedule": "multidiff.schedules",
    "ScheduleContext": "multidiff.schedules",
    "ScheduleTable": "multidiff.schedules",
    "list_schedules": "multidiff.schedules",
    "load_schedule": "multidiff.schedules",
    "make_schedule": "multidiff.schedules",
}
__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .dropins import DiffusersTimestepDensity as DiffusersTimestepDensity
    from .dropins import KDiffusionDensity as KDiffusionDensity
    from .errors import UserError as UserError
    from .parameterizations import DDPM as DDPM
    from .parameterizations import VE as VE
    from .parameterizations import FlowMatching as FlowMatching
    from .parameterizations import LogSNR as LogSNR
    from .parameterizations import LoopSchedule as LoopSchedule
    from .parameterizations import Parameterization as Parameterization
    from .parameterizations import VPTime as VPTime
    from .schedules import Schedule as Schedule
    from .schedules import ScheduleContext as ScheduleContext
    from .schedules import ScheduleTable as ScheduleTable
    from .schedules import list_schedules as list_schedules
    from .schedules import load_schedule as load_schedule
    from .schedules import make_schedule as make_schedule


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'multidiff' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

"""The tabulated form of a schedule: what a schedule file holds (a leaf module, so the schedule
interface, the file reader and the report can all import it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ScheduleTable:
    """The tabulated form of a schedule, as exported to a schedule file.

    ``u`` is a grid of ln σ, ``pdf`` the density per unit u on it, ``cdf`` its integral. ``profile``
    holds what an adaptive schedule estimated (its own ``u`` grid, e.g. ``mmse``, ``rate``,
    ``counts``); ``gate`` a low-noise gate (InfoNoise); ``params`` the method's parameters;
    ``sampling`` the density sampling grids are placed by (``u``, ``density``; empty: ``pdf``);
    ``notes`` plain-language remarks a report or ``schedule show`` prints.
    """

    method: str
    sigma_min: float
    sigma_max: float
    u: list[float]
    pdf: list[float]
    cdf: list[float]
    profile: dict[str, list[float]] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    sampling: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

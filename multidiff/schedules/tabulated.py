"""Frozen schedules built from a tabulated density (:mod:`.density`): a schedule file's table, or
a piecewise-uniform density."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import Schedule, ScheduleContext, ScheduleTable
from .density import TabulatedDensity, interp  # noqa: F401 - re-exported: the common currency of learned schedules


class TabulatedSchedule(Schedule):
    """A frozen schedule from a table (a schedule file, or a snapshot of a learned schedule)."""

    name = "file"

    def __init__(self, ctx: ScheduleContext, table: ScheduleTable, source: str = "") -> None:
        super().__init__(ctx, table.params)
        self.table = table
        self.source = source
        self.density = TabulatedDensity(torch.tensor(table.u), torch.tensor(table.pdf))

    def to(self, device: torch.device | str) -> "TabulatedSchedule":
        super().to(device)
        self.density.to(self.device)
        return self

    def pdf(self, u: Tensor) -> Tensor:
        return self.density.pdf(u)

    def cdf(self, u: Tensor) -> Tensor:
        return self.density.cdf(u)

    def icdf(self, q: Tensor) -> Tensor:
        return self.density.icdf(q)

    def to_table(self, n: int = 256) -> ScheduleTable:
        return self.table

    def state_dict(self) -> dict[str, Any]:
        return {"source": self.source}


class PiecewiseUniformSchedule(Schedule):
    """A fixed density that is constant on each interval between ``edges`` (ln σ, increasing) with
    the given ``masses``: exact for a discrete loop variable (each DDPM timestep owns the interval
    of λ nearest to it) and, on a fine grid, for any continuous one. CDF piecewise linear."""

    name = "native"

    def __init__(self, ctx: ScheduleContext, edges: Tensor, masses: Tensor, label: str = "native") -> None:
        super().__init__(ctx, {"density": label})
        e = torch.as_tensor(edges, dtype=torch.float64).cpu()
        m = torch.as_tensor(masses, dtype=torch.float64).cpu().clamp(min=0)
        if e.ndim != 1 or e.numel() != m.numel() + 1 or not bool((e.diff() > 0).all()) or not float(m.sum()) > 0:
            raise ValueError("PiecewiseUniformSchedule needs increasing edges and one non-negative mass per interval")
        self.e64 = e
        self.c64 = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(m / m.sum(), 0)])
        self.c64[-1] = 1.0
        self.to(torch.device("cpu"))

    def to(self, device: torch.device | str) -> "PiecewiseUniformSchedule":
        super().to(device)
        self.e, self.c = self.e64.to(self.device, torch.float32), self.c64.to(self.device, torch.float32)
        self.dens = (self.c64.diff() / self.e64.diff()).to(self.device, torch.float32)
        return self

    def pdf(self, u: Tensor) -> Tensor:
        i = (torch.searchsorted(self.e, u.contiguous(), right=True) - 1).clamp(0, self.dens.numel() - 1)
        inside = (u >= self.e[0]) & (u <= self.e[-1])
        return torch.where(inside, self.dens[i], torch.zeros_like(u))

    def cdf(self, u: Tensor) -> Tensor:
        return interp(u, self.e, self.c)

    def icdf(self, q: Tensor) -> Tensor:
        return interp(q, self.c, self.e)

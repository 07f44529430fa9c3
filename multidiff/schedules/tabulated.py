"""A density tabulated on a grid of u = ln σ, and the frozen schedule built from one.

The density is piecewise linear between grid points, so its CDF is piecewise quadratic and
the inverse CDF has a closed form per segment: sampling is exact for the tabulated density,
not an approximation of it. This is the common currency of learned schedules and schedule files.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import Schedule, ScheduleContext, ScheduleTable


def interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of (xp, fp) at x, clamped to the end values (torch.interp)."""
    i = (torch.searchsorted(xp, x.contiguous(), right=True) - 1).clamp(0, xp.numel() - 2)
    x0, x1 = xp[i], xp[i + 1]
    w = ((x - x0) / (x1 - x0)).clamp(0, 1)
    return fp[i] + w * (fp[i + 1] - fp[i])


class TabulatedDensity:
    """Piecewise-linear density on grid ``u`` (increasing) with values ``pdf`` ≥ 0 (normalized here).

    Keeps float64 CPU copies (``u64``, ``p64``, ``c64``) for export, and float32 copies on the
    sampling device for ``pdf``/``cdf``/``icdf``.
    """

    def __init__(self, u: Tensor, pdf: Tensor) -> None:
        u64 = torch.as_tensor(u, dtype=torch.float64).cpu()
        p64 = torch.as_tensor(pdf, dtype=torch.float64).cpu().clamp(min=0)
        if u64.ndim != 1 or u64.numel() < 2 or u64.shape != p64.shape:
            raise ValueError("TabulatedDensity needs 1-D u and pdf of equal length >= 2")
        h = u64.diff()
        if not bool((h > 0).all()):
            raise ValueError("TabulatedDensity grid u must be strictly increasing")
        mass = 0.5 * h * (p64[:-1] + p64[1:])
        total = float(mass.sum())
        if not total > 0:
            raise ValueError("TabulatedDensity pdf has zero mass")
        self.u64 = u64
        self.p64 = p64 / total
        self.c64 = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(mass / total, 0)])
        self.c64[-1] = 1.0
        self.to(torch.device("cpu"))

    def to(self, device: torch.device | str) -> "TabulatedDensity":
        f32 = torch.float32
        self.u = self.u64.to(device, f32)
        self.p = self.p64.to(device, f32)
        self.c = self.c64.to(device, f32)
        self.h = self.u64.diff().to(device, f32)
        self.s = (self.p64.diff() / self.u64.diff()).to(device, f32)  # slope of the pdf per segment
        return self

    def segment_masses(self) -> Tensor:
        """Probability mass of each grid segment (float64, CPU)."""
        return self.c64.diff()

    def pdf(self, u: Tensor) -> Tensor:
        inside = (u >= self.u[0]) & (u <= self.u[-1])
        return torch.where(inside, interp(u, self.u, self.p), torch.zeros_like(u))

    def cdf(self, u: Tensor) -> Tensor:
        i = (torch.searchsorted(self.u, u.contiguous(), right=True) - 1).clamp(0, self.u.numel() - 2)
        t = torch.minimum((u - self.u[i]).clamp(min=0), self.h[i])
        return (self.c[i] + self.p[i] * t + 0.5 * self.s[i] * t * t).clamp(0, 1)

    def icdf(self, q: Tensor) -> Tensor:
        i = (torch.searchsorted(self.c, q.contiguous(), right=True) - 1).clamp(0, self.u.numel() - 2)
        d = (q - self.c[i]).clamp(min=0)
        p, s = self.p[i], self.s[i]
        # Solve c_i + p t + s t²/2 = q for t in the stable form 2d / (p + sqrt(p² + 2 s d)).
        den = p + (p * p + 2 * s * d).clamp(min=0).sqrt()
        t = torch.where(den > 0, 2 * d / den.clamp(min=1e-30), torch.zeros_like(d))
        return self.u[i] + torch.minimum(t, self.h[i])


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

"""Fixed schedules with closed forms: EDM's log-normal and log-uniform, truncated to the σ range."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Schedule, ScheduleContext


@dataclass
class LogNormalParams:
    """ln σ ~ N(p_mean, p_std²), truncated to [ln σ_min, ln σ_max]. EDM: (-1.2, 1.2); EDM2: (-0.4, 1.0)."""

    p_mean: float = -1.2
    p_std: float = 1.2


@dataclass
class EDM2Params(LogNormalParams):
    p_mean: float = -0.4
    p_std: float = 1.0


class LogNormal(Schedule):
    """EDM's training density: a normal in u = ln σ (truncated to the range, which EDM leaves open)."""

    name = "edm"

    def __init__(self, ctx: ScheduleContext, params: LogNormalParams | None = None) -> None:
        super().__init__(ctx, params or LogNormalParams())
        self.m, self.s = float(self.params.p_mean), float(self.params.p_std)
        if not self.s > 0:
            raise ValueError(f"p_std must be > 0, got {self.s}")
        a, b = [(x - self.m) / self.s for x in (ctx.u_min, ctx.u_max)]
        self.Fa = 0.5 * math.erfc(-a / math.sqrt(2))
        self.Z = 0.5 * math.erfc(-b / math.sqrt(2)) - self.Fa

    def pdf(self, u: Tensor) -> Tensor:
        z = (u - self.m) / self.s
        dens = torch.exp(-0.5 * z * z) / (self.s * math.sqrt(2 * math.pi) * self.Z)
        inside = (u >= self.ctx.u_min) & (u <= self.ctx.u_max)
        return torch.where(inside, dens, torch.zeros_like(dens))

    # cdf/icdf run in float64: the truncated tails are ~1e-7 of mass, below float32's resolution near 1.
    def cdf(self, u: Tensor) -> Tensor:
        z = (u.double().clamp(self.ctx.u_min, self.ctx.u_max) - self.m) / self.s
        return ((torch.special.ndtr(z) - self.Fa) / self.Z).clamp(0, 1).to(u.dtype)

    def icdf(self, q: Tensor) -> Tensor:
        p = (self.Fa + q.double() * self.Z).clamp(1e-300, 1 - 1e-16)
        u = (self.m + self.s * torch.special.ndtri(p)).clamp(self.ctx.u_min, self.ctx.u_max)
        return u.to(q.dtype)


class EDM2(LogNormal):
    name = "edm2"

    def __init__(self, ctx: ScheduleContext, params: EDM2Params | None = None) -> None:
        super().__init__(ctx, params or EDM2Params())


@dataclass
class NoParams:
    pass


class LogUniform(Schedule):
    """Uniform in u = ln σ over the range."""

    name = "loguniform"

    def __init__(self, ctx: ScheduleContext, params: NoParams | None = None) -> None:
        super().__init__(ctx, params or NoParams())
        self.width = ctx.u_max - ctx.u_min

    def pdf(self, u: Tensor) -> Tensor:
        inside = (u >= self.ctx.u_min) & (u <= self.ctx.u_max)
        return torch.where(inside, torch.full_like(u, 1 / self.width), torch.zeros_like(u))

    def cdf(self, u: Tensor) -> Tensor:
        return ((u - self.ctx.u_min) / self.width).clamp(0, 1)

    def icdf(self, q: Tensor) -> Tensor:
        return self.ctx.u_min + q.clamp(0, 1) * self.width

"""Fixed schedules with closed forms, truncated to the σ range: the shared :class:`ClosedForm`, EDM's
log-normal and log-uniform (the VP families are in :mod:`.families`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..settings import number, setting
from .base import Schedule, ScheduleContext


class ClosedForm(Schedule):
    """A closed-form density on u, truncated to [ln σ_min, ln σ_max].

    Subclasses implement ``_cdf``, ``_pdf``, ``_icdf`` for the untruncated law (float64) on
    v = u − ln σ_data, i.e. as if the data had unit scale — or on u itself when the law is stated in
    absolute σ (``relative_to_sigma_data = False``: EDM's log-normal).
    """

    relative_to_sigma_data = True

    def _setup(self) -> None:
        """Call at the end of a subclass constructor: the mass below and inside the range."""
        self.shift = math.log(self.ctx.sigma_data) if self.relative_to_sigma_data else 0.0
        lo, hi = (self._cdf(torch.tensor(v - self.shift, dtype=torch.float64)) for v in (self.ctx.u_min, self.ctx.u_max))
        self.Fa, self.Z = float(lo), float(hi - lo)
        if not self.Z > 0:
            raise ValueError("the distribution has no mass inside the σ range")

    # ---- the untruncated law on u (float64) ----------------------------------------------------
    def _cdf(self, u: Tensor) -> Tensor:
        raise NotImplementedError

    def _pdf(self, u: Tensor) -> Tensor:
        raise NotImplementedError

    def _icdf(self, q: Tensor) -> Tensor:
        raise NotImplementedError

    # ---- truncated to the range ------------------------------------------------------------------
    def pdf(self, u: Tensor) -> Tensor:
        inside = (u >= self.ctx.u_min) & (u <= self.ctx.u_max)
        dens = self._pdf(u.double().clamp(self.ctx.u_min, self.ctx.u_max) - self.shift) / self.Z
        return torch.where(inside, dens, torch.zeros_like(dens)).to(u.dtype)

    def cdf(self, u: Tensor) -> Tensor:
        c = (self._cdf(u.double().clamp(self.ctx.u_min, self.ctx.u_max) - self.shift) - self.Fa) / self.Z
        return c.clamp(0, 1).to(u.dtype)

    def icdf(self, q: Tensor) -> Tensor:
        p = self.Fa + q.double().clamp(0, 1) * self.Z
        return (self._icdf(p) + self.shift).clamp(self.ctx.u_min, self.ctx.u_max).to(q.dtype)


@dataclass
class LogNormalParams:
    """ln σ ~ N(p_mean, p_std²), truncated to [ln σ_min, ln σ_max]. EDM: (-1.2, 1.2); EDM2: (-0.4, 1.0)."""

    p_mean: float = setting(-1.2, number())
    p_std: float = setting(1.2, number(0, open_lo=True))


@dataclass
class EDM2Params(LogNormalParams):
    p_mean: float = setting(-0.4, number())
    p_std: float = setting(1.0, number(0, open_lo=True))


class LogNormal(ClosedForm):
    """EDM's training density: a normal in u = ln σ (absolute σ; truncated to the range, which EDM
    leaves open). The truncated tails are ~1e-7 of mass, below float32's resolution near 1: the
    closed form's float64 arithmetic keeps them."""

    name = "edm"
    relative_to_sigma_data = False

    def __init__(self, ctx: ScheduleContext, params: LogNormalParams | None = None) -> None:
        super().__init__(ctx, params or LogNormalParams())
        self.m, self.s = float(self.params.p_mean), float(self.params.p_std)
        self._setup()

    def _cdf(self, u: Tensor) -> Tensor:
        return torch.special.ndtr((u - self.m) / self.s)

    def _pdf(self, u: Tensor) -> Tensor:
        z = (u - self.m) / self.s
        return torch.exp(-0.5 * z * z) / (self.s * math.sqrt(2 * math.pi))

    def _icdf(self, q: Tensor) -> Tensor:
        return self.m + self.s * torch.special.ndtri(q)


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

"""Fixed noise distributions from the variance-preserving literature, in closed form on u = ln σ.

Each family is a distribution of the logSNR of the data as scaled, ``λ = 2 ln(σ_data/σ)``, or of
the VP time t with a signal level γ(t) (Chen 2023), truncated to the run's σ range. These families
are defined for unit-variance data; measuring λ against σ_data (as k-diffusion's v-diffusion
density does) keeps them meaning the same signal-to-noise ratios whatever the data's scale. With
v = u − ln σ_data (so λ = −2v), a density ``p_λ`` maps to ``p_u(u) = 2·p_λ(−2v)`` and, since v
falls as λ rises, ``F_u(u) = 1 − F_λ(−2v)``. Subclasses give the untruncated CDF, density and
inverse CDF on v = u − ln σ_data in float64 (the truncated tails are far below float32's
resolution); :class:`multidiff.schedules.fixed.ClosedForm` shifts, truncates and normalizes.

- ``cosine``: t ~ U(0, 1), λ(t) = −2 ln tan(πt/2), so σ = σ_data·tan(πt/2) and F(v) = (2/π)·arctan(eᵛ).
- ``laplace``: λ ~ Laplace(μ, b) (Hang et al. 2024; μ = 0, b = 0.5).
- ``cauchy``: λ ~ Cauchy(μ, γ) (Hang et al. 2024; μ = 0, γ = 1).
- ``chen``: t ~ U(0, 1) through Chen's γ functions (``linear``, ``cosine``, ``sigmoid``), with the
  input scale b: x_t = √γ·b·x₀ + √(1−γ)·ε, so λ = logit γ + 2 ln b.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..settings import choice, number, setting
from .base import ScheduleContext
from .fixed import ClosedForm, NoParams


class Cosine(ClosedForm):
    """VP cosine: t ~ U(0, 1), σ = σ_data·tan(πt/2) (λ = −2 ln tan(πt/2)); p_λ = sech(λ/2)/(2π)."""

    name = "cosine"

    def __init__(self, ctx: ScheduleContext, params: Optional[NoParams] = None) -> None:
        super().__init__(ctx, params or NoParams())
        self._setup()

    def _cdf(self, u: Tensor) -> Tensor:
        return (2 / math.pi) * torch.atan(u.exp())

    def _pdf(self, u: Tensor) -> Tensor:
        return 1 / (math.pi * torch.cosh(u))  # d/du (2/π)·arctan(eᵘ)

    def _icdf(self, q: Tensor) -> Tensor:
        return torch.tan(q * (math.pi / 2)).log()


@dataclass
class LaplaceParams:
    """λ = logSNR ~ Laplace(mu, b) (Hang et al. 2024)."""

    mu: float = setting(0.0, number())
    b: float = setting(0.5, number(0, open_lo=True))


class Laplace(ClosedForm):
    name = "laplace"

    def __init__(self, ctx: ScheduleContext, params: Optional[LaplaceParams] = None) -> None:
        super().__init__(ctx, params or LaplaceParams())
        self.mu, self.b = float(self.params.mu), float(self.params.b)
        self._setup()

    # In λ: survival S(l) = ½e^{−(l−μ)/b} above μ, 1 − ½e^{(l−μ)/b} below; F_u(u) = S(−2u).
    def _cdf(self, u: Tensor) -> Tensor:
        z = (-2 * u - self.mu) / self.b
        return torch.where(z >= 0, 0.5 * torch.exp(-z.clamp(min=0)), 1 - 0.5 * torch.exp(z.clamp(max=0)))

    def _pdf(self, u: Tensor) -> Tensor:
        z = (-2 * u - self.mu) / self.b
        return 2 * torch.exp(-z.abs()) / (2 * self.b)

    def _icdf(self, q: Tensor) -> Tensor:
        # S(l) = q  →  l = μ − b·ln(2q) for q ≤ ½, μ + b·ln(2(1 − q)) above; then u = −l/2
        lam = torch.where(
            q <= 0.5,
            self.mu - self.b * torch.log(2 * q.clamp(min=1e-300)),
            self.mu + self.b * torch.log(2 * (1 - q).clamp(min=1e-300)),
        )
        return -lam / 2


@dataclass
class CauchyParams:
    """λ = logSNR ~ Cauchy(mu, gamma) (Hang et al. 2024)."""

    mu: float = setting(0.0, number())
    gamma: float = setting(1.0, number(0, open_lo=True))


class Cauchy(ClosedForm):
    name = "cauchy"

    def __init__(self, ctx: ScheduleContext, params: Optional[CauchyParams] = None) -> None:
        super().__init__(ctx, params or CauchyParams())
        self.mu, self.g = float(self.params.mu), float(self.params.gamma)
        self._setup()

    # In λ: F(l) = ½ + arctan((l − μ)/γ)/π, so F_u(u) = 1 − F(−2u) = ½ − arctan((−2u − μ)/γ)/π.
    def _cdf(self, u: Tensor) -> Tensor:
        return 0.5 - torch.atan((-2 * u - self.mu) / self.g) / math.pi

    def _pdf(self, u: Tensor) -> Tensor:
        z = (-2 * u - self.mu) / self.g
        return 2 / (math.pi * self.g * (1 + z * z))

    def _icdf(self, q: Tensor) -> Tensor:
        return -(self.mu + self.g * torch.tan(math.pi * (0.5 - q))) / 2


# ---- Chen (2023): γ(t) functions and the input scale b ------------------------------------------

CHEN_DEFAULTS = {"cosine": (0.0, 1.0), "sigmoid": (-3.0, 3.0), "linear": (0.0, 1.0)}


@dataclass
class ChenParams:
    """Chen 2023: t ~ U(0, 1), signal level γ(t), input scale b (λ = logit γ + 2 ln b).

    ``start``/``end`` null: the function's defaults in the paper (cosine 0, 1; sigmoid −3, 3).
    ``linear`` (γ = 1 − t) ignores start, end and tau.
    """

    function: str = setting("sigmoid", choice(("linear", "cosine", "sigmoid")))
    start: Optional[float] = None
    end: Optional[float] = None
    tau: float = setting(1.0, number(0, open_lo=True))
    b: float = setting(1.0, number(0, open_lo=True))


class Chen(ClosedForm):
    name = "chen"

    def __init__(self, ctx: ScheduleContext, params: Optional[ChenParams] = None) -> None:
        super().__init__(ctx, params or ChenParams())
        p = self.params
        start, end = CHEN_DEFAULTS[p.function]
        self.start = float(start if p.start is None else p.start)
        self.end = float(end if p.end is None else p.end)
        self.tau, self.b = float(p.tau), float(p.b)
        if not self.start < self.end:
            raise ValueError(f"start must be below end, got start={self.start}, end={self.end}")
        if p.function == "cosine" and not (0 <= self.start and self.end <= 1):
            raise ValueError("cosine needs 0 <= start < end <= 1")
        self.v_start, self.v_end = float(self._raw(self.start)), float(self._raw(self.end))
        self._setup()

    def _raw(self, s: Tensor | float) -> Tensor:
        """Algorithm 1's unnormalized curve at position s = start + t·(end − start) (float64)."""
        s = torch.as_tensor(s, dtype=torch.float64)
        if self.params.function == "cosine":
            return torch.cos(s * math.pi / 2) ** (2 * self.tau)
        if self.params.function == "sigmoid":
            return torch.sigmoid(s / self.tau)
        return torch.zeros_like(s)

    def gamma(self, t: Tensor) -> Tensor:
        """γ(t), t in [0, 1] (float64): Chen's signal level, 1 at t = 0 and 0 at t = 1."""
        t = t.double()
        if self.params.function == "linear":
            return 1 - t
        out = self._raw(self.start + t * (self.end - self.start))
        return (self.v_end - out) / (self.v_end - self.v_start)

    def _gamma_of_u(self, u: Tensor) -> Tensor:
        return torch.sigmoid(-2 * (u + math.log(self.b)))  # γ with logit γ = λ − 2 ln b, λ = −2u

    def _t_of_gamma(self, g: Tensor) -> Tensor:
        if self.params.function == "linear":
            return 1 - g
        out = self.v_end - g * (self.v_end - self.v_start)
        if self.params.function == "sigmoid":
            pos = self.tau * torch.logit(out.clamp(1e-300, 1 - 1e-16))
        else:  # cosine: out = cos(s·π/2)^(2τ)
            pos = (2 / math.pi) * torch.acos(out.clamp(0, 1) ** (1 / (2 * self.tau)))
        return (pos - self.start) / (self.end - self.start)

    # u rises with t (γ falls), so F_u(u) = t(γ(u)).
    def _cdf(self, u: Tensor) -> Tensor:
        return self._t_of_gamma(self._gamma_of_u(u))

    def _pdf(self, u: Tensor) -> Tensor:
        g = self._gamma_of_u(u)
        dg_du = 2 * g * (1 - g)  # −dγ/du
        if self.params.function == "linear":
            return dg_du
        out = self.v_end - g * (self.v_end - self.v_start)
        span = self.end - self.start
        if self.params.function == "sigmoid":
            dt_dout = self.tau / (span * out * (1 - out))
            return dt_dout * (self.v_end - self.v_start) * dg_du
        c = out.clamp(min=1e-300) ** (1 / (2 * self.tau))
        dt_dout = -(2 / math.pi) / span * c / (2 * self.tau * out.clamp(min=1e-300) * (1 - c * c).clamp(min=1e-300).sqrt())
        return dt_dout * (self.v_end - self.v_start) * dg_du

    def _icdf(self, q: Tensor) -> Tensor:
        g = self.gamma(q).clamp(1e-300, 1 - 1e-16)
        return -0.5 * torch.logit(g) - math.log(self.b)  # u = −λ/2, λ = logit γ + 2 ln b

"""Learned schedules in any training loop's own noise variable.

multidiff's schedules are densities over u = ln σ of a variance-exploding process x + σε whose data
have RMS ``σ_data``. Other loops speak other variables: diffusers' integer DDPM timesteps, VP
continuous time, logSNR, rectified-flow / flow-matching t, EDM σ for another data scale. They all
meet in the signal-to-noise ratio of the data as the loop scales them,

    λ = logSNR = 2 ln(σ_data / σ_VE),

which every :class:`Parameterization` maps to and from exactly. A parameterization also converts
the loss a loop computes (the per-example MSE of its network's target: x0, ε, v, flow velocity or
EDM's F, weighted or not) into the x0 error per dimension that learned schedules estimate from,
and gives the x0-space weight of that loss, which InfoNoise divides out.

    ddpm = multidiff.DDPM(scheduler.alphas_cumprod, sigma_data=0.5)
    noise = ddpm.make_schedule("infonoise", target="eps")   # weighting: the ε-loss's own
    t = noise.sample(batch_size)                             # integer timesteps, drawn by InfoNoise
    ...loss = ((eps_pred - eps) ** 2).flatten(1).mean(1)...
    noise.observe(t, loss.detach())                           # per-example ε-MSE → x0 error
    if noise.refresh_due(step): noise.refresh(step)
    noise.save("schedule.json")

Units: σ is a VE noise level in the loop's data units unless a docstring says "schedule units".
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .diffusion.precond import edm_output_variance
from .errors import UserError

TARGETS = ("x0", "eps", "v", "velocity", "F")

Number = Union[float, Tensor]


def _t(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(x, dtype=torch.float64)


class Parameterization:
    """A loop's noise variable t ↔ λ = 2 ln(σ_data/σ_VE) of its data (RMS ``sigma_data``)."""

    name = "parameterization"
    discrete = False
    #: whether learned schedules warm up on the loop's own density (:meth:`native_edges`)
    has_native = True

    def __init__(self, sigma_data: float = 1.0) -> None:
        if not (isinstance(sigma_data, (int, float)) and 0 < sigma_data < math.inf):
            raise UserError(f"sigma_data must be a positive finite number, got {sigma_data!r}")
        self.sigma_data = float(sigma_data)

    # ---- the noise variable -------------------------------------------------------------------
    def logsnr(self, t: Any) -> Tensor:
        """λ of the loop's variable t (float64)."""
        raise NotImplementedError

    def from_logsnr(self, lam: Tensor) -> Tensor:
        """The loop's variable t for logSNR λ (exact inverse of :meth:`logsnr`; discrete
        parameterizations return the nearest step)."""
        raise NotImplementedError

    def sigma(self, t: Any) -> Tensor:
        """The VE noise level of t in the loop's data units: σ_data · exp(−λ/2)."""
        return self.sigma_data * torch.exp(-self.logsnr(t) / 2)

    def from_sigma(self, sigma: Any) -> Tensor:
        return self.from_logsnr(2 * torch.log(self.sigma_data / _t(sigma).double()))

    def sigma_range(self) -> tuple[float, float]:
        """(σ_min, σ_max) the loop's variable covers, in its data units (for the schedule's range)."""
        raise NotImplementedError

    # ---- its loss ---------------------------------------------------------------------------------
    def x0_factor(self, sigma: Tensor, target: str) -> Tensor:
        """x0 error per dimension = factor × the MSE of ``target`` at VE noise σ (loop's units).

        x0: 1; ε: σ²; v (VP, v = α ε − s x0): s² = σ²/(1 + σ²); flow velocity (u = ε − x0 for
        x_t = (1 − t) x0 + t ε, so t = σ/(1 + σ)): t²; EDM's F: c_out² = σ² σ_data²/(σ² + σ_data²).
        """
        s2 = sigma.double() ** 2
        if target == "x0":
            return torch.ones_like(s2)
        if target == "eps":
            return s2
        if target == "v":
            return s2 / (1 + s2)
        if target == "velocity":
            return s2 / (1 + sigma.double()) ** 2
        if target == "F":
            return edm_output_variance(sigma.double(), self.sigma_data)
        raise UserError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")

    def x0_weight(self, target: str) -> Callable[[Tensor], Tensor]:
        """The loss weight, in x0 terms, of an unweighted ``target`` MSE: w(σ) = 1 / x0_factor(σ)
        (ε-MSE ↔ 1/σ², EDM's F-MSE ↔ EDM's weight). A function of the VE σ in the loop's units."""
        return lambda sigma: 1 / self.x0_factor(_t(sigma), target)

    def make_schedule(self, name: str, *, target: str, sigma_range: Optional[tuple[float, float]] = None,
                      weighting: Optional[Callable[[Tensor], Tensor]] = None, weighting_name: Optional[str] = None,
                      **params: Any) -> "LoopSchedule":  # fmt: skip
        """A multidiff schedule for this loop: its σ range (default: what the loop's variable covers),
        its data scale and, unless given, the x0-space weight of an unweighted ``target`` MSE
        (``weighting_name``: how the schedule file names a given weight; default ``custom``).

        A learned schedule warms up from the loop's own density (uniform timesteps or t: ``base:
        native``) until it has learned, unless ``base`` names another; VE loops keep EDM's."""
        from .schedules.api import make_schedule

        if target not in TARGETS:
            raise UserError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        try:
            lo, hi = sigma_range or self.sigma_range()
        except OverflowError:
            raise UserError(f"{self.name}: the range of its noise variable reaches a σ beyond float range; narrow it") from None
        w = weighting or self.x0_weight(target)
        native = self.native_density if self.has_native else None
        if native is not None and "base" not in params and _warms_up(name):
            params = {**params, "base": "native"}
        sched = make_schedule(name, sigma_min=lo, sigma_max=hi, sigma_data=self.sigma_data, weighting=w,
                              weighting_name=f"{target}-mse" if weighting is None else weighting_name or "custom", native=native, **params)  # fmt: skip
        return LoopSchedule(sched, self, target)

    # ---- the loop's own density ---------------------------------------------------------------------
    def native_edges(self, u_min: float, u_max: float) -> tuple[Tensor, Tensor]:
        """The density this loop draws its variable from, over u = ln σ in [u_min, u_max] (σ in the
        loop's data units): interval edges (ln σ, increasing) and each interval's mass. Continuous
        variables drawn uniformly: a fine grid, each interval's mass |Δt|."""
        edges = torch.linspace(u_min, u_max, 2049, dtype=torch.float64)
        t = self.from_sigma(edges.exp())
        return edges, t.diff().abs()

    def native_density(self, ctx: Any) -> Any:
        """The loop's own density as a fixed schedule over ``ctx``'s σ range (schedule units = the
        loop's, as this parameterization's ``make_schedule`` sets σ_data)."""
        from .schedules.tabulated import PiecewiseUniformSchedule

        return PiecewiseUniformSchedule(ctx, *self.native_edges(ctx.u_min, ctx.u_max), label=f"uniform {self.name} variable")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "sigma_data": self.sigma_data}


class VE(Parameterization):
    """EDM / k-diffusion σ (variance exploding, x + σε) for data of RMS ``sigma_data``; with another
    σ_data than the schedule's it is EDM at another data scale (same λ, σ' = σ·σ_data'/σ_data)."""

    name = "ve"
    has_native = False  # an EDM loop's own density is EDM's log-normal: the learned schedules' default base

    def __init__(self, sigma_data: float = 1.0, sigma_min: float = 0.002, sigma_max: float = 80.0) -> None:
        super().__init__(sigma_data)
        self.range = (float(sigma_min), float(sigma_max))

    def logsnr(self, t: Any) -> Tensor:
        return 2 * torch.log(self.sigma_data / _t(t).double())

    def from_logsnr(self, lam: Tensor) -> Tensor:
        return self.sigma_data * torch.exp(-lam.double() / 2)

    def sigma_range(self) -> tuple[float, float]:
        return self.range



class LogSNR(Parameterization):
    """The loop's variable is λ itself (VP models conditioned on logSNR)."""

    name = "logsnr"

    def __init__(self, sigma_data: float = 1.0, lam_min: float = -20.0, lam_max: float = 20.0) -> None:
        super().__init__(sigma_data)
        self.lam_range = (float(lam_min), float(lam_max))

    def logsnr(self, t: Any) -> Tensor:
        return _t(t).double()

    def from_logsnr(self, lam: Tensor) -> Tensor:
        return lam.double()

    def sigma_range(self) -> tuple[float, float]:
        lo, hi = self.lam_range
        return self.sigma_data * math.exp(-hi / 2), self.sigma_data * math.exp(-lo / 2)


class VPTime(Parameterization):
    """Continuous VP time t ∈ (0, 1) with x_t = √ᾱ(t)·x + √(1 − ᾱ(t))·ε: ``cosine``
    (ᾱ = cos²(πt/2), so λ = 2 ln σ_data − 2 ln tan(πt/2)) or ``linear`` (Song et al.'s VP SDE,
    ᾱ = exp(−β_min t − (β_max − β_min) t²/2))."""

    name = "vp"

    def __init__(self, kind: str = "cosine", sigma_data: float = 1.0, beta_min: float = 0.1, beta_max: float = 20.0,
                 t_min: float = 1e-4, t_max: float = 1 - 1e-4) -> None:  # fmt: skip
        super().__init__(sigma_data)
        if kind not in ("cosine", "linear"):
            raise UserError(f"kind must be cosine or linear, got {kind!r}")
        self.kind, self.beta = kind, (float(beta_min), float(beta_max))
        self.t_range = (float(t_min), float(t_max))

    def _log_alpha_bar(self, t: Tensor) -> Tensor:
        if self.kind == "cosine":
            return 2 * torch.log(torch.cos(math.pi * t / 2))
        b0, b1 = self.beta
        return -(b0 * t + (b1 - b0) * t * t / 2)

    def logsnr(self, t: Any) -> Tensor:
        t = _t(t).double()
        if self.kind == "cosine":
            return 2 * math.log(self.sigma_data) - 2 * torch.log(torch.tan(math.pi * t / 2))
        la = self._log_alpha_bar(t)
        return la - torch.log(-torch.expm1(la)) + 2 * math.log(self.sigma_data)  # ln(σ_d² ᾱ/(1 − ᾱ))

    def from_logsnr(self, lam: Tensor) -> Tensor:
        snr = lam.double() - 2 * math.log(self.sigma_data)  # λ of unit-scale data: ln(ᾱ/(1 − ᾱ))
        if self.kind == "cosine":
            return (2 / math.pi) * torch.atan(torch.exp(-snr / 2))
        b0, b1 = self.beta
        c = -torch.nn.functional.logsigmoid(snr)  # −ln ᾱ, ᾱ = sigmoid(snr)
        a = (b1 - b0) / 2
        return (-b0 + torch.sqrt(b0 * b0 + 4 * a * c)) / (2 * a) if a > 0 else c / b0

    def sigma_range(self) -> tuple[float, float]:
        lo, hi = (float(self.sigma(t)) for t in self.t_range)
        return lo, hi


class FlowMatching(Parameterization):
    """Rectified flow / flow matching, x_t = (1 − t)·x + t·ε: x_t/(1 − t) = x + σε with σ = t/(1 − t)."""

    name = "flow"

    def __init__(self, sigma_data: float = 1.0, t_min: float = 1e-3, t_max: float = 1 - 1e-3) -> None:
        super().__init__(sigma_data)
        self.t_range = (float(t_min), float(t_max))

    def logsnr(self, t: Any) -> Tensor:
        t = _t(t).double()
        return 2 * torch.log(self.sigma_data * (1 - t) / t)

    def from_logsnr(self, lam: Tensor) -> Tensor:
        sigma = self.sigma_data * torch.exp(-lam.double() / 2)
        return sigma / (1 + sigma)

    def sigma_range(self) -> tuple[float, float]:
        lo, hi = self.t_range
        return lo / (1 - lo), hi / (1 - hi)


class DDPM(Parameterization):
    """Discrete timesteps k = 0 … T−1 of a given ``alphas_cumprod`` (diffusers' DDPMScheduler and
    friends): λ_k = ln(σ_data² ᾱ_k / (1 − ᾱ_k)). A continuous λ maps to the nearest timestep in λ, so
    timestep k is drawn with the schedule's mass between the midpoints around λ_k."""

    name = "ddpm"
    discrete = True

    def __init__(self, alphas_cumprod: Union[Sequence[float], Tensor], sigma_data: float = 1.0) -> None:
        super().__init__(sigma_data)
        a = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten().cpu()
        if a.numel() < 2 or not bool(((a > 0) & (a < 1)).all()) or not bool((a.diff() < 0).all()):
            raise UserError("alphas_cumprod must decrease strictly within (0, 1)")
        self.alphas_cumprod = a
        self.lams = torch.log(a / (1 - a)) + 2 * math.log(self.sigma_data)  # decreasing in k
        self._mids = (self.lams[1:] + self.lams[:-1]) / 2

    def logsnr(self, t: Any) -> Tensor:
        t = _t(t).cpu()
        k = t.long()
        T = self.lams.numel()
        if t.is_floating_point() and not bool((t == k).all()) or not bool(((k >= 0) & (k < T)).all()):
            raise UserError(f"DDPM timesteps must be integers in 0 … {T - 1}, got values from {float(t.min()):g} to {float(t.max()):g}")
        return self.lams[k]

    def from_logsnr(self, lam: Tensor) -> Tensor:
        # the midpoints decrease with k: count how many of them lie above λ
        return (self._mids[None, :] > lam.double().cpu().reshape(-1, 1)).sum(1).reshape(lam.shape).long()

    def sigma_range(self) -> tuple[float, float]:
        """The σ's half a step beyond the first and last timesteps, so each gets its full share."""
        first = self.lams[0] + (self.lams[0] - self.lams[1]) / 2
        last = self.lams[-1] - (self.lams[-2] - self.lams[-1]) / 2
        return self.sigma_data * math.exp(-float(first) / 2), self.sigma_data * math.exp(-float(last) / 2)

    def native_edges(self, u_min: float, u_max: float) -> tuple[Tensor, Tensor]:
        """Uniform timesteps: timestep k owns the u-interval between its λ-midpoints, each with mass
        1/T (so drawing from it and rounding to the nearest timestep is uniform over k); the
        range's ends cut the first and last intervals."""
        lo, hi = (math.log(s) for s in self.sigma_range())
        knots = torch.cat([torch.tensor([lo], dtype=torch.float64), math.log(self.sigma_data) - self._mids / 2,
                           torch.tensor([hi], dtype=torch.float64)])  # fmt: skip
        position = torch.arange(knots.numel(), dtype=torch.float64)  # timestep k spans positions k … k+1
        inner = knots[(knots > u_min) & (knots < u_max)]
        edges = torch.cat([torch.tensor([u_min], dtype=torch.float64), inner, torch.tensor([u_max], dtype=torch.float64)])
        at = torch.from_numpy(np.interp(edges.numpy(), knots.numpy(), position.numpy()))
        return edges, at.diff()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "timesteps": int(self.lams.numel())}


def _warms_up(name: str) -> bool:
    """Whether schedule ``name`` samples a warm-up ``base`` before it has learned."""
    from .schedules.registry import REGISTRY, param_defaults

    return name in REGISTRY and {"base", "warmup"} <= param_defaults(name).keys()


class LoopSchedule:
    """A multidiff schedule speaking a loop's noise variable: ``sample`` returns t, ``observe`` takes
    the loop's per-example loss of its ``target``.

    The schedule works in its own units (σ, u = ln σ, its σ_data); the conversions go through λ and
    are exact, so the same learned table serves every parameterization.
    """

    def __init__(self, schedule: Any, parameterization: Parameterization, target: str) -> None:
        if target not in TARGETS:
            raise UserError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        self.schedule, self.p, self.target = schedule, parameterization, target

    @property
    def refresh_every(self) -> int:
        """Steps between :meth:`refresh` calls the schedule wants (0: it never changes)."""
        return int(self.schedule.refresh_every)

    def refresh_due(self, step: int) -> bool:
        """Whether the loop should call :meth:`refresh` after training step ``step``."""
        return bool(self.schedule.refresh_due(step))

    def _to_schedule_sigma(self, lam: Tensor) -> Tensor:
        return self.schedule.ctx.sigma_data * torch.exp(-lam.double() / 2)

    def sample(self, n: int, generator: Optional[torch.Generator] = None, device: Optional[torch.device] = None) -> Tensor:
        """n values of the loop's noise variable (integer timesteps for DDPM), drawn from the schedule."""
        sigma = self.schedule.sample(n, generator, device).double()
        lam = 2 * torch.log(self.schedule.ctx.sigma_data / sigma)
        t = self.p.from_logsnr(lam)
        return t.to(device or sigma.device)

    def x0_error(self, t: Tensor, loss: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        """The x0 error per dimension, in the schedule's units, of per-example ``target`` MSEs
        (divided by ``weight`` first when the loop weighted them)."""
        loss = loss.detach().double()
        if weight is not None:
            loss = loss / _t(weight).double().to(loss.device)
        sigma = self.p.sigma(t.detach().cpu()).to(loss.device)
        scale = (self.schedule.ctx.sigma_data / self.p.sigma_data) ** 2
        return loss * self.p.x0_factor(sigma, self.target) * scale

    def observe(self, t: Tensor, loss: Tensor, *, weight: Optional[Tensor] = None) -> None:
        """Feed one batch: the loop's noise variable and each example's MSE of its target (mean
        over dimensions; ``weight``: the per-example weights it was multiplied by, if any)."""
        lam = self.p.logsnr(t.detach().cpu())
        sigma = self._to_schedule_sigma(lam).to(self.schedule.device).float()
        error = self.x0_error(t, loss, weight).to(self.schedule.device).float()
        self.schedule.observe(sigma, error, loss.detach().float().to(self.schedule.device))

    def refresh(self, step: int) -> dict[str, Any]:
        return self.schedule.refresh(step)

    def to(self, device: Union[str, torch.device]) -> "LoopSchedule":
        self.schedule.to(device)
        return self

    def save(self, path: Union[str, Path], **meta: Any) -> Path:
        """The schedule file (usable by ``multidiff train --schedule FILE``), recording this loop's
        parameterization and target."""
        return self.schedule.save(path, parameterization=self.p.describe(), target=self.target, **meta)

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state)

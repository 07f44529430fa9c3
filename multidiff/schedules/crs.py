"""Constant-rate scheduling, CRS (Okada et al.): make the diffused data change at a constant rate.

For a discrepancy D between the laws of the diffused data at neighbouring noise levels, the
speed on a grid of u = ln σ (nodes u_0 < … < u_K, spacing δ) is ``v_k = D(p_{u_k}, p_{u_k+1})/δ``
on each segment; ``p(u) ∝ v(u)^ξ`` (ξ = 1 spends equal probability on equal amounts of change),
with ln v smoothed across segments before it is integrated into the CDF. Three measures:

- ``fd`` (data only, computed once before training by :meth:`CRS.prepare`): the square root of
  the Fréchet distance (the W2 distance, which adds up along the path, while FD would shrink with
  the grid spacing) between Gaussian fits of features of noised training data. Features are the raw dimensions
  when there are at most ``features`` of them, else a fixed random orthonormal projection to
  ``features`` dimensions (a cheap, domain-free stand-in for a feature network). Because these
  features are linear, the fit of the noised features follows from the data's mean and
  covariance exactly (no noise is sampled, see :func:`gaussian_path_speed`). With
  ``space: vp`` (default) the noised data are taken in variance-preserving coordinates,
  ``(x + σε)/√(σ_data² + σ²)`` (what the network sees; the paper's α-parametrization), so the
  trivial growth of scale at high noise is not counted as change; ``space: ve`` measures raw
  ``x + σε`` (its law N(0, s² + σ²) for Gaussian data; the speed then grows like σ at high
  noise).
- ``x0`` / ``eps`` (model-based, refreshed online every R steps after the warm-up): the root
  mean square difference of the current denoiser's x0 (or ε = (x_σ − D)/σ) predictions at
  neighbouring nodes, on a fixed held-out batch with fixed ε (a :class:`Probe`). Each refresh
  costs (K+1) × ``probe_batch`` denoiser evaluations, split across processes and all-reduced;
  the trainer logs their time relative to a training step.

The same CDF gives a sampling grid (``--sigmas learned``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from ..metrics.frechet import gaussian_fit
from ..settings import choice, integer, number, setting
from .base import Probe, ScheduleContext, all_reduce_sum_, process_rank, share_from_rank0, world_size
from .bases import fixed_schedule
from .learned import LearnedSchedule, exp_smoothed, mix_floor
from .tabulated import TabulatedDensity

MEASURES = ("fd", "x0", "eps")


@dataclass
class CRSParams:
    """CRS settings. Steps are optimizer steps."""

    measure: str = setting("fd", choice(MEASURES))  # fd (data, before training) | x0 | eps (model, online)
    xi: float = setting(1.0, number(0, open_lo=True))  # p(u) ∝ v(u)^xi
    bins: int = setting(64, integer(4))  # K segments of ln σ on which the speed is measured
    smooth: float = setting(1.0, number(0))  # std, in segments, of the Gaussian smoothing of ln v; 0 disables
    space: str = setting("vp", choice(("vp", "ve")))  # fd: vp (x+σε)/√(σ_data²+σ²) | ve (x+σε)
    features: int = setting(64, integer(1))  # fd: raw dims up to this many, else a fixed random projection to this many
    examples: int = setting(2048, integer(2))  # fd: training examples used
    probe_batch: int = setting(32, integer(1))  # x0/eps: held-out examples per refresh
    refresh: int = setting(200, integer(1))  # x0/eps: steps between refreshes (R)
    warmup: int = setting(200, integer(0))  # x0/eps: steps sampled from `base` before the first measurement
    base: str = "edm"  # x0/eps warm-up density: any fixed schedule
    ema: float = setting(0.5, number(0, 1, open_hi=True))  # x0/eps: weight of the previous speed estimate at each refresh
    floor: float = setting(0.0, number(0, 1, open_hi=True))  # mixture weight of log-uniform (0: pure v^xi)
    seed: int = setting(0, integer(0))  # seed of the fixed noise (and projection)


def gaussian_path_speed(
    mean: np.ndarray, cov: np.ndarray, sigmas: np.ndarray, sigma_data: float, space: str
) -> np.ndarray:
    """√FD (the W2 distance) between Gaussian fits of noised data at neighbouring σ nodes.

    For linear features with mean μ and covariance Σ, the fit of a·(x + σε) is exactly
    N(a·μ, a²(Σ + σ²I)), a = 1/√(σ_data² + σ²) in ``vp`` space and 1 in ``ve``. All these
    covariances share Σ's eigenvectors, so the Fréchet distance ‖Δ(aμ)‖² + tr(C₁ + C₂ − 2(C₁C₂)^½)
    is a sum over Σ's eigenvalues λ_i of (a₁√(λ_i + σ₁²) − a₂√(λ_i + σ₂²))²: exact and free of
    the cancellation a general matrix square root suffers between near-identical neighbours.
    """
    lam = np.clip(np.linalg.eigvalsh(np.atleast_2d(cov)), 0, None)
    a = 1 / np.sqrt(sigma_data**2 + sigmas**2) if space == "vp" else np.ones_like(sigmas)
    std = a[:, None] * np.sqrt(lam[None, :] + sigmas[:, None] ** 2)  # per eigen-direction, per node
    fd = np.diff(a) ** 2 * float(np.sum(np.square(mean))) + np.square(np.diff(std, axis=0)).sum(1)
    return np.sqrt(fd)


def random_features(x: Tensor, dims: int, seed: int) -> Tensor:
    """x flattened to [n, d]; projected on a fixed random orthonormal basis when d > dims."""
    flat = x.reshape(x.shape[0], -1).double().cpu()
    if flat.shape[1] <= dims:
        return flat
    g = torch.Generator().manual_seed(seed + 1)
    basis, _ = torch.linalg.qr(torch.randn(flat.shape[1], dims, generator=g, dtype=torch.float64))
    return flat @ basis


class CRS(LearnedSchedule):
    name = "crs"

    def __init__(self, ctx: ScheduleContext, params: Optional[CRSParams] = None) -> None:
        p = params or CRSParams()
        super().__init__(ctx, p, fixed_schedule(p.base, ctx))
        self.model_based = p.measure != "fd"
        self.prepare_examples = 0 if self.model_based else int(p.examples)
        self.probe_examples = int(p.probe_batch) if self.model_based else 0
        self.refresh_every = int(p.refresh) if self.model_based else 0
        self.nodes = np.linspace(ctx.u_min, ctx.u_max, p.bins + 1)  # ln σ
        self.mids = 0.5 * (self.nodes[:-1] + self.nodes[1:])
        self.delta = float(self.nodes[1] - self.nodes[0])
        self.speed: Optional[np.ndarray] = None  # raw v per segment (EMA over refreshes for x0/eps)

    def sample(self, n: int, generator: Optional[torch.Generator] = None, device: Optional[torch.device] = None) -> Tensor:
        """As every schedule's; refused before ``prepare`` for ``fd``, whose table comes from data
        (drawing from the warm-up base instead would be a schedule the caller did not ask for)."""
        if not self.model_based and self.speed is None:
            raise RuntimeError(f"crs (measure fd) builds its table from data: call prepare(x) with {self.prepare_examples} "
                               "encoded training examples before sampling")  # fmt: skip
        return super().sample(n, generator, device)

    # ---- the table from a speed -------------------------------------------------------------------
    def smoothed_speed(self) -> np.ndarray:
        assert self.speed is not None, "no speed measured yet"
        return exp_smoothed(np.log(np.maximum(self.speed, 1e-30)), self.params.smooth)

    def _rebuild(self) -> TabulatedDensity:
        dens = self.smoothed_speed() ** self.params.xi
        grid = np.concatenate([[self.ctx.u_min], self.mids, [self.ctx.u_max]])
        table = TabulatedDensity(torch.tensor(grid), torch.tensor(np.r_[dens[0], dens, dens[-1]]))
        return mix_floor(table, self.params.floor, self.ctx)

    def _install(self, speed: np.ndarray, step: int, info: dict[str, Any]) -> None:
        # every process takes rank 0's estimate, so all sample from the same table
        self.speed = share_from_rank0(speed, self.device)
        warmup = 0 if not self.model_based else self.params.warmup
        self.switch(self._rebuild(), step, warmup, info)

    # ---- fd: from data, once ------------------------------------------------------------------------
    def prepare(self, x: Tensor) -> dict[str, Any]:
        if self.model_based or self.speed is not None:  # restored from a checkpoint: already built
            return {}
        p = self.params
        mean, cov = gaussian_fit(random_features(x, p.features, p.seed).numpy())
        speed = gaussian_path_speed(mean, cov, np.exp(self.nodes), self.ctx.sigma_data, p.space) / self.delta
        info = {"step": 0, "examples": int(x.shape[0]), "features": int(mean.shape[0])}
        self._install(speed, 0, info)
        self.history.append(info)
        return info

    # ---- x0 / eps: from the model, every R steps --------------------------------------------------
    def refresh(self, step: int, probe: Optional[Probe] = None) -> dict[str, Any]:
        if not self.model_based or step < self.params.warmup:
            return {}
        if probe is None:
            raise RuntimeError("CRS x0/eps needs the trainer's probe at refresh")
        self.last_refresh = int(step)
        calls, examples = probe.calls, probe.examples
        speed = self.model_speed(probe)
        if self.speed is not None:
            speed = self.params.ema * self.speed + (1 - self.params.ema) * speed
        info: dict[str, Any] = {"step": int(step)}
        self._install(speed, step, info)
        info.update(probe_calls=probe.calls - calls, probe_examples=probe.examples - examples)
        self.history.append(info)
        return info

    @torch.no_grad()
    def model_speed(self, probe: Probe) -> np.ndarray:
        """RMS change of the x0 (or ε) prediction between neighbouring nodes, per unit u."""
        x = probe.data()
        g = torch.Generator().manual_seed(self.params.seed)
        noise = torch.randn(x.shape, generator=g).to(x)  # the same ε at every refresh and node
        mine = torch.arange(process_rank(), x.shape[0], world_size(), device=x.device)  # this process's share
        x, noise = x[mine], noise[mine]
        sigmas = torch.tensor(np.exp(self.nodes), dtype=x.dtype, device=x.device)
        sq = torch.zeros(len(self.nodes) - 1, dtype=torch.float64, device=x.device)
        prev = None
        per_call = max(1, 256 // max(1, x.shape[0]))  # nodes per denoiser call
        for start in range(0, len(self.nodes), per_call):
            s = sigmas[start : start + per_call]
            b = x.shape[0]
            xs = (x[None] + s.view(-1, *[1] * x.ndim) * noise[None]).reshape(-1, *x.shape[1:])
            sig = s.repeat_interleave(b)
            pred = probe(xs, sig) if b else xs
            if self.params.measure == "eps":
                pred = (xs - pred) / sig.view(-1, *[1] * (x.ndim - 1))
            pred = pred.reshape(len(s), b, -1).double()
            chain = pred if prev is None else torch.cat([prev[None], pred])
            sq[max(0, start - 1) : start + len(s) - 1] = (chain[1:] - chain[:-1]).square().sum((1, 2))
            prev = pred[-1]
        count = torch.tensor([float(x[:1].numel()) * x.shape[0]], dtype=torch.float64, device=sq.device)
        all_reduce_sum_(sq, count)
        return (sq / count.clamp(min=1)).sqrt().cpu().numpy() / self.delta

    # ---- state and export -----------------------------------------------------------------------------
    def exported_profile(self) -> dict[str, list[float]]:
        if self.speed is None:
            return {}
        return {"u": self.mids.tolist(), "speed": self.smoothed_speed().tolist(), "raw_speed": self.speed.tolist()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "speed": None if self.speed is None else torch.from_numpy(self.speed.copy()),
            "active": self.active,
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.speed = None if state["speed"] is None else torch.as_tensor(state["speed"], dtype=torch.float64).numpy().copy()
        self.active = bool(state["active"])
        self.history = list(state["history"])
        if self.speed is not None:
            self.learned = self._rebuild().to(self.device)

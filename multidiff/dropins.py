"""A learned schedule where other trainers already take a density: k-diffusion's ``sample_density``
and the timestep density of diffusers' flow-matching training scripts.

Each object is the call the loop already makes, plus two companions:

- ``observe(noise, losses)`` right after the loss, with the per-example losses the loop computed
  (before ``.mean()``). With several processes (``torch.distributed`` initialized, as accelerate
  does) each observes its own batch: the schedule sums every process's statistics when it
  refreshes (one all-reduce), so each copy learns from the global batch and all stay identical.
- ``step()`` once per optimizer step: under gradient accumulation, where the loop counts a step
  (``if accelerator.sync_gradients:``). The schedule refreshes on optimizer steps, whatever the
  number of micro-batches observed between two of them.

Only torch is needed: the schedulers are read through their attributes, nothing is imported from
k-diffusion or diffusers.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from .diffusion.precond import edm_output_variance
from .errors import UserError
from .parameterizations import DDPM, VE, LoopSchedule
from .schedules.base import Schedule

#: k-diffusion ``Denoiser(weighting=...)`` names: the factor its F-MSE is multiplied by
KDIFFUSION_WEIGHTINGS = ("karras", "snr", "soft-min-snr")
#: what a diffusers flow-matching script regresses: ``noise - model_input`` (velocity), or the clean
#: latents when it preconditions the outputs (SD3's ``--precondition_outputs``)
FLOW_TARGETS = ("velocity", "x0")


def _per_example(values: Union[Tensor, float, None], n: int, device: torch.device) -> Optional[Tensor]:
    """One value per example from a scalar, a [n] tensor or a [n, 1, ...] tensor (a loss weight)."""
    if values is None:
        return None
    w = torch.as_tensor(values, dtype=torch.float64, device=device).detach()
    if w.ndim == 0:
        return w.expand(n).clone()
    if w.shape[0] != n:
        raise UserError(f"weight: one value per example expected ({n}), got shape {tuple(w.shape)}")
    return w.reshape(n, -1).mean(1)


class _ObservedDensity:
    """What both drop-ins share: a :class:`LoopSchedule`, the optimizer-step count, saving and state."""

    loop_name = "dropin"

    def __init__(self, loop: LoopSchedule) -> None:
        self.loop = loop
        self.steps = 0  # optimizer steps counted by step()

    @property
    def schedule(self) -> Schedule:
        """The multidiff schedule (σ units) behind the drop-in."""
        return self.loop.schedule

    def _observe(self, t: Tensor, losses: Tensor, weight: Optional[Tensor]) -> None:
        t, losses = t.detach().reshape(-1), losses.detach().reshape(-1).float()
        if t.shape[0] != losses.shape[0]:
            raise UserError(f"observe: {t.shape[0]} noise levels but {losses.shape[0]} losses; pass the per-example losses (before .mean())")
        self.loop.observe(t, losses, weight=_per_example(weight, losses.shape[0], losses.device))

    def step(self) -> bool:
        """Count one optimizer step and refresh the schedule when it is due; True when it refreshed."""
        self.steps += 1
        if self.loop.refresh_due(self.steps):
            self.loop.refresh(self.steps)
            return True
        return False

    def save(self, path: Union[str, Path], **meta: Any) -> Path:
        """The schedule file (``multidiff.load_schedule``, ``multidiff train --schedule``)."""
        return self.loop.save(path, loop=self.loop_name, **meta)

    def synchronize(self) -> None:
        """With several processes, before a checkpoint: merge every process's statistics pending since
        the last refresh into rank 0's (a collective: every process calls it)."""
        self.schedule.synchronize()

    def state_dict(self) -> dict[str, Any]:
        """For the loop's checkpoint: the schedule's statistics and the step count (with several
        processes, rank 0's; :meth:`synchronize` first keeps the others' pending statistics)."""
        return {"schedule": self.loop.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loop.load_state_dict(state["schedule"])
        self.steps = int(state["steps"])

    def to(self, device: Union[str, torch.device]) -> "_ObservedDensity":
        """Keep the schedule's tables on ``device`` (CPU by default; draws are moved where asked)."""
        self.loop.to(device)
        return self


def kdiffusion_loss_weight(name: str, sigma: Tensor, sigma_data: float) -> Tensor:
    """The factor k-diffusion's ``Denoiser.loss`` multiplies each example's F-MSE by, at VE noise σ."""
    s2, d2 = sigma.double() ** 2, float(sigma_data) ** 2
    if name == "karras":
        return torch.ones_like(s2)
    if name == "snr":
        return d2 / (s2 + d2)
    if name == "soft-min-snr":
        return s2 * d2 / (s2 + d2) ** 2
    raise UserError(f"weighting must be one of {', '.join(KDIFFUSION_WEIGHTINGS)} (k-diffusion's Denoiser), got {name!r}")


class KDiffusionDensity(_ObservedDensity):
    """k-diffusion's ``sample_density``, drawn from a multidiff schedule.

    ``sigma_data`` and ``weighting`` are the ``Denoiser``'s (its losses are F-MSEs times that weight;
    ``observe`` converts them back to the x0 error the schedule learns from). ``sigma_min`` and
    ``sigma_max`` (σ, not ln σ) bound the draws. A learned schedule warms up on EDM's log-normal.
    Further keywords are the schedule's parameters (``warmup=``, ``refresh=``, ...)::

        sample_density = multidiff.KDiffusionDensity("infonoise", sigma_data=0.5)
        sigma = sample_density([reals.shape[0]], device=device)
        losses = model.loss(reals, noise, sigma)
        sample_density.observe(sigma, losses)
        ...
        if accelerator.sync_gradients:
            sample_density.step()
    """

    loop_name = "k-diffusion"

    def __init__(self, name: str = "infonoise", *, sigma_data: float, weighting: str = "karras",
                 sigma_min: float = 0.002, sigma_max: float = 80.0, **params: Any) -> None:  # fmt: skip
        kdiffusion_loss_weight(weighting, torch.ones(1), 1.0)  # refuses an unknown name
        ve = VE(sigma_data, sigma_min, sigma_max)
        self.weighting, self.sigma_data = weighting, ve.sigma_data

        def x0_weight(sigma: Tensor) -> Tensor:  # the F-MSE's weight over c_out²: the loss's weight on the x0 error
            return kdiffusion_loss_weight(weighting, sigma, ve.sigma_data) / edm_output_variance(sigma.double(), ve.sigma_data)

        super().__init__(ve.make_schedule(name, target="F", weighting=x0_weight, weighting_name=f"k-diffusion {weighting}", **params))

    def __call__(self, shape: Union[int, Sequence[int]], device: Union[str, torch.device, None] = "cpu",
                 dtype: torch.dtype = torch.float32) -> Tensor:  # fmt: skip
        """σ's of ``shape`` (VE noise levels, in random order), as k-diffusion's densities return them."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        sigma = self.loop.sample(math.prod(shape))
        return sigma.reshape(shape).to(device=device, dtype=dtype)

    def observe(self, sigma: Tensor, losses: Tensor) -> None:
        """The σ's drawn for the batch and ``Denoiser.loss``'s per-example losses."""
        self._observe(sigma, losses, kdiffusion_loss_weight(self.weighting, sigma.detach().reshape(-1), self.sigma_data))


class DiffusersTimestepDensity(_ObservedDensity):
    """In place of ``compute_density_for_timestep_sampling`` in diffusers' flow-matching training
    scripts (SD3, Flux, Sana, ...): the same arguments, a learned density over the scheduler's
    training timesteps.

    ``noise_scheduler``: the script's ``FlowMatchEulerDiscreteScheduler`` (its training copy: its
    ``sigmas`` are the flow times t of ``x_t = (1 − t)·x + t·ε``, index 0 the noisiest, shift
    included). ``sigma_data``: the latents' RMS. ``target``: ``velocity`` (``noise - model_input``) or
    ``x0`` (SD3's preconditioned outputs). A learned schedule warms up on uniform timesteps (the
    scripts' ``weighting_scheme="none"``) unless ``base=`` names another. The script's lines stay::

        u = density(weighting_scheme=args.weighting_scheme, batch_size=bsz, device=model_input.device)
        indices = (u * noise_scheduler_copy.config.num_train_timesteps).long()
        timesteps = noise_scheduler_copy.timesteps[indices].to(device=model_input.device)
        ...
        density.observe(timesteps, loss, weight=weighting)   # per-example loss, before loss.mean()
    """

    loop_name = "diffusers-flow"

    def __init__(self, noise_scheduler: Any, name: str = "infonoise", *, sigma_data: float, target: str = "velocity",
                 **params: Any) -> None:  # fmt: skip
        if target not in FLOW_TARGETS:
            raise UserError(f"target must be one of {', '.join(FLOW_TARGETS)}, got {target!r}")
        try:
            t = torch.as_tensor(noise_scheduler.sigmas, dtype=torch.float64).flatten().cpu()
            timesteps = torch.as_tensor(noise_scheduler.timesteps, dtype=torch.float64).flatten().cpu()
            n = int(noise_scheduler.config.num_train_timesteps)
        except AttributeError as e:
            raise UserError(f"noise_scheduler: a diffusers flow-matching scheduler (sigmas, timesteps, config) is needed ({e})") from None
        t = t[: timesteps.numel()]  # a scheduler after set_timesteps() carries a final 0: not a training step
        if timesteps.numel() != n or t.numel() != n:
            raise UserError(f"noise_scheduler: {timesteps.numel()} timesteps for num_train_timesteps={n}; pass the training copy "
                            "(before set_timesteps)")  # fmt: skip
        if not bool(((t > 0) & (t <= 1)).all()) or not bool((t.diff() < 0).all()):
            raise UserError("noise_scheduler.sigmas: flow times must decrease strictly within (0, 1]")
        self.timesteps, self.n = timesteps, n
        self.ddpm = DDPM(_alphas_cumprod(t.flip(0)), sigma_data=sigma_data)  # DDPM order: k = 0 the cleanest
        super().__init__(self.ddpm.make_schedule(name, target=target, **params))

    def __call__(self, weighting_scheme: Optional[str] = None, batch_size: int = 1, logit_mean: Optional[float] = None,
                 logit_std: Optional[float] = None, mode_scale: Optional[float] = None,
                 device: Union[str, torch.device] = "cpu", generator: Optional[torch.Generator] = None) -> Tensor:  # fmt: skip
        """u in [0, 1) per example, as diffusers' density returns it: ``(u * num_train_timesteps).long()``
        indexes the scheduler's timesteps. ``weighting_scheme`` and the logit / mode settings are
        accepted for the signature; the learned schedule replaces the density they name (the scheme
        still sets the loss weight the script applies, which ``observe`` divides out).
        ``generator``: on the schedule's device (CPU unless moved with ``to``)."""
        k = self.loop.sample(int(batch_size), generator=generator)
        index = (self.n - 1 - k).double()
        return ((index + 0.5) / self.n).to(device=device, dtype=torch.float32)

    def indices(self, timesteps: Tensor) -> Tensor:
        """The scheduler's index of each training timestep (index 0 the noisiest)."""
        ts = timesteps.detach().double().reshape(-1).cpu()
        gap = (ts[:, None] - self.timesteps[None, :]).abs()
        nearest = gap.argmin(1)
        if ts.numel() and float(gap.min(1).values.max()) > 1e-3 * max(1.0, float(self.timesteps.abs().max())) / self.n:
            raise UserError("observe: timesteps that are not the scheduler's training timesteps; pass "
                            "noise_scheduler_copy.timesteps[indices]")  # fmt: skip
        return nearest

    def observe(self, timesteps: Tensor, losses: Tensor, weight: Union[Tensor, float, None] = None) -> None:
        """The batch's timesteps, the per-example losses (mean over dimensions, before ``.mean()``) and
        the weighting the script multiplied them by (``compute_loss_weighting_for_sd3``'s, if any)."""
        k = self.n - 1 - self.indices(timesteps)
        self._observe(k.to(losses.device), losses, None if weight is None else torch.as_tensor(weight))


def _alphas_cumprod(t: Tensor) -> Tensor:
    """ᾱ of each flow time t (increasing): x_t/(1 − t) = x + σ·ε with σ = t/(1 − t), so ᾱ = 1/(1 + σ²).
    Pure noise (t = 1, σ = ∞) is placed one step beyond its neighbour in logSNR, so it keeps a share."""
    lam = 2 * torch.log((1 - t) / t)  # logSNR of unit-scale data
    if bool(t[-1] >= 1):
        if t.numel() < 3:
            raise UserError("noise_scheduler: at least three training timesteps are needed")
        lam[-1] = 2 * lam[-2] - lam[-3]
    return torch.sigmoid(lam)

"""The one LightningModule: domain model + schedule group + fixed loss weights.

Every run is a group of modalities (a one-domain run: a group of one): the schedule draws σ of
shape [B, M], the model returns per-example losses [B, M], and the step's loss is their sum over
modalities, averaged over the batch. The schedule decides only where σ is drawn; the model's loss
(and each modality's weight w(σ)) is fixed by the recipe. Randomness of a step (σ's and noise) comes from a generator seeded by
(seed, step, rank), so a resumed run continues exactly.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import lightning as L
import torch
from torch import Tensor

from .. import __version__
from ..diffusion.likelihood import unit_key
from ..diffusion.model import DiffusionModel
from ..errors import NonFiniteLossError
from ..evaluation import NelboSettings, nelbo_batch
from ..recipe import Sections
from ..schedules.group import ScheduleGroup


class DiffusionModule(L.LightningModule):
    def __init__(
        self,
        model: DiffusionModel,
        schedule: ScheduleGroup,
        weight: dict[str, Callable[[Tensor], Tensor]],
        cfg: Sections,
        nelbo: NelboSettings,
        *,
        nelbo_count: float,
        nelbo_extra_units: Optional[dict[str, float]] = None,
        recipe: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.schedule = schedule  # not an nn.Module: its state travels in checkpoint["multidiff"]
        self.weight = weight  # w(σ) by modality
        self.seed = cfg.seed
        self.log_every = max(1, cfg.train.log_every)
        self.lr, self.lr_warmup, self.weight_decay = cfg.train.lr, cfg.train.lr_warmup, cfg.train.weight_decay
        self.lr_factor = lr_factor(cfg.train.lr_decay, cfg.train.lr_warmup, cfg.train.max_steps, cfg.train.lr_final)
        self.nelbo = nelbo
        self.nelbo_count = nelbo_count  # units per example of the primary NELBO unit
        self.nelbo_extra_units = dict(nelbo_extra_units or {})  # unit → units per example (e.g. bits/char)
        self.first_bad_step = torch.tensor(-1)  # first step with a non-finite loss, kept on the device
        self.recipe = recipe  # the resolved recipe, recorded in every checkpoint (eval and resume check it)

    def step_generator(self, step: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(((self.seed * 1_000_003 + step) * 1009 + self.global_rank) % (2**63))
        return g

    def on_fit_start(self) -> None:
        self.schedule.to(self.device)
        self.first_bad_step = self.first_bad_step.to(self.device)
        n = self.schedule.prepare_examples
        if n:  # data-driven schedules (CRS fd) build their table once, from encoded training data
            with torch.no_grad():
                x = self.model.encode(self.trainer.datamodule.fixed_train_batch(n).to(self.device))
            info = self.schedule.prepare(self.model.modality_parts(x))
            if info and self.trainer.is_global_zero:
                print(f"schedule {self.schedule.name}: table built from {x.shape[0]} training examples")

    def on_train_start(self) -> None:
        """A resumed run may lower ``train.lr`` (e.g. after a divergence): the restored optimizer and
        warm-up schedule are moved to the recipe's rate; an unchanged rate is left bit-identical."""
        for sched in self.trainer.lr_scheduler_configs:
            s = sched.scheduler
            if all(b == self.lr for b in s.base_lrs):
                continue
            s.base_lrs = [self.lr] * len(s.base_lrs)
            for group, lam in zip(s.optimizer.param_groups, s.lr_lambdas):
                group["initial_lr"] = self.lr
                group["lr"] = self.lr * lam(s.last_epoch)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        # seeded per micro-batch: step t's k-th micro-batch is t·N + k (N = 1: the step), so a resumed run,
        # which restarts at a step boundary, draws exactly what the straight run drew
        accumulate = self.trainer.accumulate_grad_batches
        g = self.step_generator(self.global_step * accumulate + batch_idx % accumulate)
        batch = self.model.training_batch(batch, g)  # the loss sees the batch the step learns from
        x = self.model.encode(batch)
        sigma = self.schedule.sample(x.shape[0], g, self.device)  # [B, M]
        noise = torch.randn(x.shape, generator=g, device=self.device, dtype=x.dtype)
        out = self.model.modality_loss(x, sigma, noise, self.weight, batch, generator=g)  # [B, M]
        self.schedule.observe(sigma, out.error, out.loss.detach(), out.mask)
        scale = self.schedule.loss_scale(sigma)
        per_example = (out.loss if scale is None else out.loss * scale).sum(1)  # each modality's weighted loss, summed
        loss = per_example.mean()
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, torch.full_like(self.first_bad_step, self.global_step), self.first_bad_step)
        if (self.global_step + 1) % self.log_every == 0:  # the steps Lightning writes (log_every_n_steps); logging every step costs more than small models take
            self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def check_finite(self) -> None:
        """Raise if any step so far had a non-finite loss (one host sync; called every few steps)."""
        step = int(self.first_bad_step)
        if step >= 0:
            raise NonFiniteLossError(
                f"training loss became non-finite (NaN/inf) at step {step}; stopped without writing further "
                f"checkpoints. Resume from the last good one with a lower rate: --resume --set train.lr=..."
            )

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if self.trainer.global_step >= self.trainer.max_steps:
            return  # the final evaluation measures the saved EMA weights with this same function
        raw, ids = batch
        nats = nelbo_batch(self.model, raw, ids, self.nelbo)
        # every process evaluates the whole fixed subset, so syncing averages identical values
        self.log("val/nelbo", nats.mean() / (math.log(2) * self.nelbo_count), batch_size=raw.shape[0], on_step=False,
                 on_epoch=True, prog_bar=True, sync_dist=True)  # fmt: skip
        for unit, count in self.nelbo_extra_units.items():
            # a per-example count that is the subset's mean makes the epoch mean Σ nats / Σ units
            self.log(f"val/nelbo_{unit_key(unit)}", nats.mean() / (math.log(2) * count), batch_size=raw.shape[0],
                     on_step=False, on_epoch=True, sync_dist=True)  # fmt: skip

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.model.parameters(), lr=self.lr, betas=(0.9, 0.99), weight_decay=self.weight_decay,
                               **_fast_adam(self.model))  # fmt: skip
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.schedule.synchronize()
        checkpoint["multidiff"] = {"schedule": self.schedule.state_dict(), "version": __version__}
        if self.recipe is not None:
            checkpoint["multidiff"]["recipe"] = self.recipe

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "multidiff" in checkpoint:
            self.schedule.load_state_dict(checkpoint["multidiff"]["schedule"])


def lr_factor(decay: str, warmup: int, max_steps: int, final: float = 0.0) -> Callable[[int], float]:
    """The learning rate at optimizer step ``step`` (0-based) as a fraction of ``train.lr``: a linear
    warm-up over ``warmup`` steps, then ``constant``, or ``cosine`` / ``linear`` decay that reaches
    ``final`` at ``max_steps`` (a resumed run with more steps stretches the decay to them)."""
    warm = max(1, warmup)

    def factor(step: int) -> float:
        rise = min(1.0, (step + 1) / warm)
        if decay == "constant" or step < warmup:
            return rise
        progress = min(1.0, (step + 1 - warmup) / max(1, max_steps - warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress
        return final + (1 - final) * shape

    return factor


def _fast_adam(model: torch.nn.Module) -> dict[str, Any]:
    """Fused Adam when every parameter is on a CUDA device (one kernel per step), else foreach."""
    params = list(model.parameters())
    if params and all(p.is_cuda for p in params):
        return {"fused": True}
    return {"foreach": True}

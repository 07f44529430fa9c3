"""The one LightningModule: domain model + schedule + fixed loss weight (DESIGN §7).

The schedule decides only where σ is drawn; the model's loss (and its weight w(σ)) is fixed by
the recipe. Randomness of a step (σ's and noise) comes from a generator seeded by
(seed, step, rank), so a resumed run continues exactly.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import lightning as L
import torch
from torch import Tensor

from .. import __version__
from ..diffusion.likelihood import fixed_noise, nelbo_nats, unit_key
from ..diffusion.model import DiffusionModel
from ..errors import NonFiniteLossError
from ..schedules.base import Schedule


class DiffusionModule(L.LightningModule):
    def __init__(
        self,
        model: DiffusionModel,
        schedule: Schedule,
        weight: Callable[[Tensor], Tensor],
        *,
        seed: int,
        lr: float,
        lr_warmup: int,
        weight_decay: float,
        nelbo_sigma_min: float,
        nelbo_sigma_max: float,
        nelbo_nodes: int,
        nelbo_seed: int,
        nelbo_count: int,
        nelbo_extra_units: Optional[dict[str, float]] = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.schedule = schedule  # not an nn.Module: its state travels in checkpoint["multidiff"]
        self.weight = weight
        self.seed, self.lr, self.lr_warmup, self.weight_decay = seed, lr, lr_warmup, weight_decay
        self.nelbo_range = (nelbo_sigma_min, nelbo_sigma_max)  # the bound's σ range (σ, not ln σ)
        self.nelbo_nodes, self.nelbo_seed, self.nelbo_count = nelbo_nodes, nelbo_seed, nelbo_count
        self.nelbo_extra_units = dict(nelbo_extra_units or {})  # unit → units per example (e.g. bits/char)
        self.first_bad_step = torch.tensor(-1)  # first step with a non-finite loss, kept on the device

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
            info = self.schedule.prepare(x)
            if info and self.trainer.is_global_zero:
                print(f"schedule {self.schedule.name}: table built from {x.shape[0]} training examples")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = self.model.encode(batch)
        g = self.step_generator(self.global_step)
        sigma = self.schedule.sample(x.shape[0], g, self.device)
        noise = torch.randn(x.shape, generator=g, device=self.device, dtype=x.dtype)
        out = self.model.loss(x, sigma, noise, self.weight, batch)
        self.schedule.observe(sigma, out.error, out.loss.detach())
        scale = self.schedule.loss_scale(sigma)
        loss = (out.loss if scale is None else out.loss * scale).mean()
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, torch.full_like(self.first_bad_step, self.global_step), self.first_bad_step)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def check_finite(self) -> None:
        """Raise if any step so far had a non-finite loss (one host sync; called every few steps)."""
        step = int(self.first_bad_step)
        if step >= 0:
            raise NonFiniteLossError(
                f"training loss became non-finite (NaN/inf) at step {step}; stopped without writing "
                f"further checkpoints (lower train.lr or check the data, then --resume from the last good one)"
            )

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        raw, ids = batch
        x = self.model.encode(raw)
        noise = fixed_noise(ids.cpu(), tuple(x.shape[1:]), self.nelbo_nodes + 1, self.nelbo_seed).to(x)
        parts = nelbo_nats(
            self.model.denoise, x, noise, sigma_min=self.nelbo_range[0], sigma_max=self.nelbo_range[1],
            recon_nll=self.model.recon_nll,
        )  # fmt: skip
        bits = parts["total"] / (math.log(2) * self.nelbo_count)
        # every process evaluates the whole fixed subset, so syncing averages identical values
        self.log("val/nelbo", bits.mean(), batch_size=x.shape[0], on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        for unit, count in self.nelbo_extra_units.items():
            # a per-example count that is the subset's mean makes the epoch mean Σ nats / Σ units
            other = parts["total"] / (math.log(2) * count)
            self.log(f"val/nelbo_{unit_key(unit)}", other.mean(), batch_size=x.shape[0], on_step=False, on_epoch=True, sync_dist=True)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.model.parameters(), lr=self.lr, betas=(0.9, 0.99), weight_decay=self.weight_decay)
        warm = max(1, self.lr_warmup)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.schedule.synchronize()
        checkpoint["multidiff"] = {"schedule": self.schedule.state_dict(), "version": __version__}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "multidiff" in checkpoint:
            self.schedule.load_state_dict(checkpoint["multidiff"]["schedule"])

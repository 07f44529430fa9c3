"""A multidiff schedule in someone else's LightningModule, through one callback.

    noise = multidiff.VE(sigma_data=0.5).make_schedule("infonoise", target="eps", warmup=500)
    trainer = L.Trainer(callbacks=[NoiseScheduleCallback(noise, export_path="schedule.json")])

The module draws its noise variable from ``self.noise_schedule`` and reports what it saw:

    def training_step(self, batch, batch_idx):
        t = self.noise_schedule.sample(len(batch), device=self.device)  # the loop's own variable
        ...
        per_example = (pred - target).square().flatten(1).mean(1)       # unweighted MSE of the target
        return {"loss": per_example.mean(), "t": t, "per_example_loss": per_example}

Contract of the returned dict: ``t`` holds the values drawn from ``noise_schedule`` for this batch
(shape [B]); ``per_example_loss`` each example's MSE of the schedule's ``target`` (x0, eps, v,
velocity or F), averaged over dimensions, before any per-example weight (shape [B]); an optional
``weight`` (shape [B]) says which per-example weights it was multiplied by, if it was.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import lightning as L

from ..parameterizations import LoopSchedule

_KEY = "multidiff_noise_schedule"


class NoiseScheduleCallback(L.Callback):
    """Attaches ``loop_schedule`` as ``pl_module.noise_schedule`` (on the module's device), feeds it
    each training batch's ``t`` and ``per_example_loss`` (every micro-batch under gradient
    accumulation), refreshes it every ``refresh_every`` optimizer steps (once each), keeps its state
    in checkpoints (a resumed fit continues with the same statistics and density) and writes the
    schedule file to ``export_path`` when the fit ends."""

    def __init__(self, loop_schedule: LoopSchedule, export_path: Optional[Union[str, Path]] = None, **meta: Any) -> None:
        self.schedule, self.export_path, self.meta = loop_schedule, export_path, meta
        self.refreshed_at = -1  # the optimizer step of the latest refresh

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.schedule.to(pl_module.device)
        pl_module.noise_schedule = self.schedule  # type: ignore[assignment]  # a plain attribute, not a submodule

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        if not isinstance(outputs, Mapping) or "t" not in outputs or "per_example_loss" not in outputs:
            raise KeyError('NoiseScheduleCallback: training_step must return a dict with "loss", "t" and "per_example_loss"')
        self.schedule.observe(outputs["t"], outputs["per_example_loss"], weight=outputs.get("weight"))
        # global_step already counts this batch's optimizer step; under gradient accumulation it stays
        # put over the next micro-batches, which must not refresh again
        step = trainer.global_step
        if self.schedule.refresh_due(step) and step != self.refreshed_at:
            self.schedule.refresh(step)
            self.refreshed_at = step

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.export_path is not None and trainer.is_global_zero:
            self.schedule.save(self.export_path, **self.meta)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.schedule.schedule.synchronize()  # pending statistics of every process into rank 0's
        checkpoint[_KEY] = {"state": self.schedule.state_dict(), "last_refresh": int(self.schedule.schedule.last_refresh)}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(_KEY)
        if saved is None:
            return  # a checkpoint written without this callback: the schedule starts afresh
        self.schedule.load_state_dict(saved["state"])
        self.schedule.schedule.last_refresh = self.refreshed_at = int(saved["last_refresh"])

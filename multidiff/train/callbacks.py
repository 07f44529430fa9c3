"""Callbacks that make a run directory (DESIGN §7): EMA weights, schedule refreshes and their
history, schedule.json exported with every checkpoint, and step checkpoints (the final one too).

Lightning runs callbacks in list order and checkpoint callbacks last, so at a checkpoint the EMA
has been updated and the schedule refreshed for that step.
"""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, WeightAveraging

from ..schedules.io import save_schedule_file


def ema_with_warmup(decay: float):
    """EMA whose decay ramps as (1+n)/(10+n) up to ``decay``, so early EMA weights are not stale.

    Tensor arithmetic only: the count n stays on the device.
    """

    def avg_fn(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        n = num_averaged.to(averaged.dtype)
        d = torch.clamp((1 + n) / (10 + n), max=decay)
        return averaged + (current - averaged) * (1 - d)

    return avg_fn


class EMA(WeightAveraging):
    """Lightning's weight averaging with an EMA warm-up; validation runs on the EMA weights."""

    def __init__(self, decay: float) -> None:
        super().__init__(avg_fn=ema_with_warmup(decay))


class ScheduleCallback(L.Callback):
    """Refreshes adaptive schedules every R steps and writes schedule.json and schedule_history/."""

    def __init__(self, run_dir: Path, meta: dict[str, Any], check_every: int) -> None:
        self.run_dir, self.meta, self.check_every = Path(run_dir), meta, max(1, check_every)

    def export(self, pl_module: Any, step: int, path: Path) -> None:
        table = pl_module.schedule.to_table()
        table.step = step
        save_schedule_file(path, table, self.meta)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.check_every == 0:
            pl_module.check_finite()
        every = pl_module.schedule.refresh_every
        if not every or step % every:
            return
        info = pl_module.schedule.refresh(step)
        for key in ("tv", "gate_c"):
            if key in info:
                pl_module.log(f"schedule/{key}", float(info[key]), on_step=True, on_epoch=False)
        if trainer.is_global_zero and info:
            history = self.run_dir / "schedule_history"
            self.export(pl_module, step, history / f"step{step:07d}.json")
            _append_csv(history / "refreshes.csv", info)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        pl_module.check_finite()  # never write a checkpoint or schedule from a diverged model
        if trainer.is_global_zero:
            self.export(pl_module, trainer.global_step, self.run_dir / "schedule.json")


class StepCheckpoint(Checkpoint):
    """Checkpoints every N steps and at the final step, as checkpoints/stepNNNNNNN.ckpt + last.ckpt."""

    def __init__(self, dirpath: Path, every: int) -> None:
        self.dirpath, self.every = Path(dirpath), every

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every and step < trainer.max_steps:
            return
        path = self.dirpath / f"step{step:07d}.ckpt"
        trainer.save_checkpoint(path, weights_only=False)
        if trainer.is_global_zero:
            tmp = self.dirpath / "last.ckpt.tmp"
            shutil.copyfile(path, tmp)
            os.replace(tmp, self.dirpath / "last.ckpt")


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    fields = ["step", "active", "tv", "gate_c", "bins_observed"]
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in fields})

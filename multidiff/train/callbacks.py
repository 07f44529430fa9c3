"""Callbacks that make a run directory: EMA weights, schedule refreshes and their history,
schedule.json exported with every checkpoint, step checkpoints (the final one too), and sample
quality measured during training.

Lightning runs callbacks in list order and checkpoint callbacks last, so at a checkpoint the EMA
has been updated and the schedule refreshed for that step.
"""
from __future__ import annotations

import csv
import os
import shutil
import signal
import statistics
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, WeightAveraging
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .. import faults
from ..files import atomic_write
from ..rundir import RunDir, schedule_file_names, step_stem
from ..schedules.io import save_schedule_file
from .probe import DenoiserProbe


def ema_with_warmup(decay: float):
    """EMA whose decay ramps as (1+n)/(10+n) up to ``decay``, so early EMA weights are not stale.

    One fused update over all parameters (``torch._foreach_*``) with the decay kept as a device
    tensor: no per-parameter Python loop and no host synchronization.
    """

    def multi_avg_fn(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = num_averaged.to(averaged[0].dtype)
        d = torch.clamp((1 + n) / (10 + n), max=decay)
        torch._foreach_lerp_(averaged, current, 1 - d)  # averaged += (1 − d)·(current − averaged)

    return multi_avg_fn


class EMA(WeightAveraging):
    """Lightning's weight averaging with an EMA warm-up; validation runs on the EMA weights and
    checkpoints store them as ``state_dict`` (the raw weights as ``current_model_state``).

    The per-step update is ours: one fused update over cached parameter lists. (The generic
    ``AveragedModel.update_parameters`` walks the module tree, averages constant buffers too and
    reads its step counter on the host twice per step.)
    """

    def __init__(self, decay: float) -> None:
        super().__init__(multi_avg_fn=ema_with_warmup(decay))
        self._update = ema_with_warmup(decay)
        self._lists: Optional[tuple[list[torch.Tensor], list[torch.Tensor]]] = None
        self._started = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step <= self._latest_update_step:
            return
        avg = self._average_model
        assert avg is not None
        if self._lists is None:
            self._lists = [p.detach() for p in avg.module.parameters()], [p.detach() for p in pl_module.parameters()]
            self._started = bool(avg.n_averaged > 0)  # one host read per process: a resumed run continues its average
        averaged, current = self._lists
        if self._started:
            self._update(averaged, current, avg.n_averaged)
        else:
            torch._foreach_copy_(averaged, current)
            self._started = True
        avg.n_averaged += 1
        self._latest_update_step = trainer.global_step


class ScheduleCallback(L.Callback):
    """Refreshes adaptive schedules every R steps and writes schedule.json and schedule_history/.

    A refresh gets a :class:`DenoiserProbe` when the schedule asks for one (CRS x0/eps), and is
    timed: ``refresh_s`` against the median wall time of the training steps since the previous
    refresh (``step_s``) gives ``cost_steps``, the refresh's cost in training steps, logged to
    metrics.csv and schedule_history/refreshes.csv with the probe's denoiser evaluations.
    """

    def __init__(self, run_dir: Path, meta: Callable[[str], dict[str, Any]], check_every: int, loggers: Optional[list[Any]] = None) -> None:
        self.run, self.meta, self.check_every = RunDir(run_dir), meta, max(1, check_every)
        self.loggers = list(loggers or [])  # besides the CSV log: where the density goes as an image at each refresh
        self.probe: Optional[DenoiserProbe] = None
        self._last_end: Optional[float] = None
        self._step_times: list[float] = []

    def export(self, pl_module: Any, step: int, folder: Path, stem: str) -> None:
        """Every table the schedule exports: FOLDER/STEM.json, or FOLDER/STEM.<modality>.json per member of a group of several."""
        tables = pl_module.schedule.tables()
        for key, name in schedule_file_names(list(tables), stem).items():
            tables[key].step = step
            save_schedule_file(folder / name, tables[key], self.meta(key))

    def _probe(self, trainer: L.Trainer, pl_module: Any) -> Optional[DenoiserProbe]:
        n = pl_module.schedule.probe_examples
        if not n:
            return None
        if self.probe is None:
            raw = trainer.datamodule.heldout_batch(n).to(pl_module.device)
            self.probe = DenoiserProbe(pl_module.model, raw)
        return self.probe

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._step = OptimizerSteps(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._step.completed(trainer):
            return  # a micro-batch of an accumulated step
        now = time.perf_counter()
        if self._last_end is not None:
            self._step_times.append(now - self._last_end)
        step = trainer.global_step
        if step % self.check_every == 0:
            pl_module.check_finite()
        every = pl_module.schedule.refresh_every
        if every and step % every == 0:
            self._refresh(trainer, pl_module, step)
        self._last_end = time.perf_counter()

    def _refresh(self, trainer: L.Trainer, pl_module: Any, step: int) -> None:
        _synchronize(pl_module.device)  # time the refresh alone, not queued training work
        start = time.perf_counter()
        info = pl_module.schedule.refresh(step, probe=self._probe(trainer, pl_module))
        _synchronize(pl_module.device)
        row = dict(info)
        if info and self._step_times:
            step_s = statistics.median(self._step_times)  # the median skips validation/checkpoint steps
            refresh_s = time.perf_counter() - start
            row.update(refresh_s=refresh_s, step_s=step_s, cost_steps=refresh_s / step_s)
        self._step_times.clear()
        for key, value in row.items():  # whatever the schedule reports about its refresh
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                pl_module.log(f"schedule/{key}", float(value), on_step=True, on_epoch=False)
        if trainer.is_global_zero and "step" in info:
            self.export(pl_module, step, self.run.history, step_stem(step))
            _append_csv(self.run.refreshes, row)
            if self.loggers:
                from .loggers import log_density

                log_density(self.loggers, pl_module.schedule.tables(), step)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        pl_module.check_finite()  # never write a checkpoint or schedule from a diverged model
        if trainer.is_global_zero:
            self.export(pl_module, trainer.global_step, self.run.path, "schedule")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class OptimizerSteps:
    """Tells an ``on_train_batch_end`` hook whether the batch just completed an optimizer step: with
    gradient accumulation Lightning calls it after every micro-batch, while ``global_step`` counts
    optimizer steps (and stays put until the last micro-batch of a step)."""

    def __init__(self, trainer: L.Trainer) -> None:
        self.seen = trainer.global_step

    def completed(self, trainer: L.Trainer) -> bool:
        if trainer.global_step == self.seen:
            return False
        self.seen = trainer.global_step
        return True


class StepCheckpoint(Checkpoint):
    """Checkpoints every N steps and at the final step, as checkpoints/stepNNNNNNN.ckpt + last.ckpt.

    Each file is written under a temporary name and renamed, so a crash mid-write leaves the
    previous last.ckpt intact (and never a truncated stepNNNNNNN.ckpt). At a step the trainer also
    validates (its ``val_check_batch``), the checkpoint is written after the validation: written
    before it, a crash during the validation would resume past that step and lose its metrics row.
    """

    def __init__(self, run_dir: Path, every: int) -> None:
        self.run, self.every = RunDir(run_dir), every
        self._pending: Optional[int] = None

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._step = OptimizerSteps(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._step.completed(trainer):
            return  # a micro-batch of an accumulated step
        step = trainer.global_step
        if step % self.every == 0 or step >= trainer.max_steps:
            batches = step * trainer.accumulate_grad_batches  # Lightning counts validation intervals in batches
            if isinstance(trainer.val_check_batch, int) and batches % trainer.val_check_batch == 0:
                self._pending = step  # Lightning validates right after this hook
            else:
                self._save(trainer, step)
        faults.point("step", step)

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self._pending is not None and not trainer.sanity_checking:
            self._save(trainer, self._pending)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self._pending is not None:  # the step was not evaluated after all
            self._save(trainer, self._pending)

    def _save(self, trainer: L.Trainer, step: int) -> None:
        self._pending = None
        path = self.run.step_checkpoint(step)
        partial = path.with_name(f".{path.name}.partial")  # the run directory is locked: one writer
        trainer.save_checkpoint(partial, weights_only=False)  # every rank takes part; rank 0 writes
        if trainer.is_global_zero:
            faults.point("checkpoint", step)
            os.replace(partial, path)
            atomic_write(self.run.last_checkpoint, lambda tmp: shutil.copyfile(path, tmp))


class QualityCallback(L.Callback):
    """Sample quality during training, from the EMA weights, every ``every`` steps (at validation
    points), logged as ``quality/<metric>``; also times the validation NELBO and itself.

    It must come before the EMA callback: Lightning runs callbacks in list order, so at the end of
    validation the EMA weights are still in the model when this callback measures.
    """

    def __init__(self, every: int, measure: Optional[Callable[[Any], dict[str, float]]], max_steps: int) -> None:
        self.every, self.measure, self.max_steps = every, measure, max_steps
        self.nelbo_s = self.quality_s = 0.0
        self._started = 0.0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._started = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.nelbo_s += time.perf_counter() - self._started
        step = trainer.global_step
        faults.point("validation", step)
        if self.measure is None or not self.every or step % self.every or trainer.sanity_checking:
            return
        if step >= self.max_steps:
            return  # the final evaluation measures the same weights with the same samples
        if not trainer.is_global_zero:
            return  # the other processes wait at their next collective
        if trainer.received_sigterm:
            raise SIGTERMException  # asked to stop before this evaluation began: do not start it
        start = time.perf_counter()
        with _stop_at_once_on_sigterm():
            faults.point("quality", step)
            values = self.measure(pl_module.model)
        self.quality_s += time.perf_counter() - start
        for key, value in values.items():
            pl_module.log(f"quality/{key}", float(value), on_step=False, on_epoch=True, rank_zero_only=True)


@contextmanager
def _stop_at_once_on_sigterm() -> Iterator[None]:
    """Lightning only notes a SIGTERM and stops after the next training step, but a sample quality
    evaluation can take minutes, longer than a scheduler's grace period. Inside one, a SIGTERM
    stops the run at once: nothing of the evaluation has been logged yet and its step's checkpoint
    is written after it, so ``--resume`` repeats it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def stop(signum: int, frame: Any) -> None:
        if previous == signal.SIG_IGN:
            return
        if callable(previous):
            previous(signum, frame)  # Lightning's own handler: notes the signal, stops launched processes
        raise SIGTERMException

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    """Append a refresh record; a record with new keys rewrites the file under the wider header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    fields: list[str] = []
    if path.exists():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = list(reader.fieldnames or []), list(reader)
    new = [k for k in row if k not in fields]
    if not fields or new:
        fields = ["step", *[k for k in fields if k != "step"], *[k for k in new if k != "step"]]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    with path.open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=fields, extrasaction="ignore").writerow({k: row.get(k, "") for k in fields})

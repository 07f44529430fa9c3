"""Fitting a prepared run with Lightning: devices, precision, checkpoints, logging, EMA.

The pipeline hands over a :class:`multidiff.pipeline.Setup`; this module builds the LightningModule,
the step-indexed data stream and the callbacks, and runs ``Trainer.fit``. Nothing outside
``train/`` imports Lightning.
"""
from __future__ import annotations

import csv
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..errors import Terminated
from ..recipe import TrainConfig, sections
from ..rundir import RunDir

for _pattern in (
    ".*does not have many workers.*",
    ".*Experiment logs directory.*exists and is not empty.*",
    ".*Checkpoint directory.*exists and is not empty.*",
    ".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
    ".*You called `self.log\\(.*` in .* but the value needs to be floating.*",
    ".*Found current_model_state in the checkpoint.*",
):
    warnings.filterwarnings("ignore", message=_pattern)


def _device_settings(train: TrainConfig) -> dict[str, Any]:
    out = {"accelerator": str(train.accelerator), "devices": train.devices, "precision": train.precision}
    strategy = str(train.strategy)
    if strategy == "fsdp":
        out["strategy"] = "fsdp"
    elif strategy == "ddp":
        out["strategy"] = "ddp"
    return out


def check_device_settings(recipe: dict[str, Any]) -> None:
    """Refuse an unusable accelerator/devices/precision before a run directory is made."""
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from ..errors import UserError

    train = sections(recipe).train
    settings = _device_settings(train)
    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # the real Trainer reports the devices; this probe stays silent
    try:
        L.Trainer(**settings, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    except (MisconfigurationException, ValueError, TypeError, ImportError, RuntimeError) as exc:
        described = ", ".join(f"{k}={v}" for k, v in settings.items())
        raise UserError(f"cannot train with {described}: {str(exc).splitlines()[0]}") from None
    finally:
        quiet.setLevel(level)
    from .loggers import check_loggers

    check_loggers(train.logger, train.logger_options)


def make_module(setup: Any):
    from .module import DiffusionModule

    units = setup.nelbo_units()
    primary = setup.domain.nelbo_unit
    return DiffusionModule(
        setup.model, setup.schedule, setup.weight, setup.cfg, setup.nelbo,
        nelbo_count=units[primary], nelbo_extra_units={u: c for u, c in units.items() if u != primary}, recipe=setup.recipe,
    )  # fmt: skip


def prepare_for_device(setup: Any, device_type: str) -> None:
    """The GPU path: ``train.compile`` compiles the backbone in place (its parameter names, hence
    checkpoints, stay the same); convolutional backbones go channels-last on CUDA."""
    backbone = setup.model.backbone
    if device_type == "cuda" and any(isinstance(m, torch.nn.Conv2d) for m in backbone.modules()):
        backbone.to(memory_format=torch.channels_last)
        backbone.channels_last = True
    if setup.cfg.train.compile:
        backbone.compile()


def fit(setup: Any, run_dir: Path, resume: bool = False, quality_fn: Optional[Callable[[Any], dict[str, float]]] = None,
        extra_callbacks: Optional[list[Any]] = None) -> Optional[dict[str, float]]:  # fmt: skip
    """Train into run_dir (from checkpoints/last.ckpt when ``resume``). Returns the wall times of
    training and of the evaluations inside it (and the peak device memory on a GPU) on the primary
    process, None on the others."""
    import lightning as L
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from .callbacks import EMA, QualityCallback, ScheduleCallback, StepCheckpoint
    from .data import DomainDataModule
    from .loggers import make_loggers

    cfg = setup.cfg
    t = cfg.train
    run = RunDir(run_dir)
    ckpt_path = run.last_checkpoint if resume else None
    module = make_module(setup)
    datamodule = DomainDataModule(setup.data, t.batch_size, cfg.seed, setup.nelbo)
    loggers = make_loggers(t.logger, run_dir, cfg, t.logger_options)
    if resume:
        _prepare_metrics_for_resume(run, _checkpoint_step(run.last_checkpoint), loggers[0])
    quality = QualityCallback(cfg.quality_every, quality_fn, cfg.train.max_steps)
    settings = _device_settings(t)
    trainer = L.Trainer(
        max_steps=t.max_steps,
        **settings,
        logger=loggers,
        callbacks=[
            quality,  # before EMA: its validation-end hook runs while the EMA weights are still swapped in
            EMA(t.ema_decay),
            ScheduleCallback(run_dir, setup.meta, check_every=t.log_every, loggers=loggers[1:]),
            StepCheckpoint(run_dir, t.checkpoint_every),
            *(extra_callbacks or []),
        ],
        accumulate_grad_batches=t.accumulate_grad_batches,
        val_check_interval=t.eval_every * t.accumulate_grad_batches,  # Lightning counts it in batches, we in steps
        check_val_every_n_epoch=None,
        log_every_n_steps=t.log_every,
        gradient_clip_val=t.grad_clip,
        enable_progress_bar=t.progress_bar,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        default_root_dir=str(run_dir),
        enable_model_summary=t.progress_bar,
    )
    device_type = trainer.strategy.root_device.type
    prepare_for_device(setup, device_type)
    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)
    started = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except SIGTERMException:  # a SystemExit without a code: left alone, a stopped run would exit 0
        last = run.last_checkpoint
        where = f"step {_checkpoint_step(last)}" if last.is_file() else "the start (no checkpoint yet)"
        raise Terminated(f"SIGTERM at step {trainer.global_step}; resuming (`train --resume`, or the same `compare` again) continues from {where}") from None
    if not trainer.is_global_zero:
        return None
    out = {"fit_s": time.perf_counter() - started, "nelbo_eval_s": quality.nelbo_s, "quality_eval_s": quality.quality_s,
           "steps_trained": float(trainer.global_step)}  # fmt: skip
    if device_type == "cuda":
        out["peak_device_memory_mb"] = torch.cuda.max_memory_allocated(trainer.strategy.root_device) / 2**20
    return out


def _checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def _prepare_metrics_for_resume(run: RunDir, step: int, logger: Any) -> None:
    """Keep the rows logged before the checkpoint (later ones will be logged again).

    Lightning's CSV writer deletes an existing metrics.csv when it is created, so the kept rows are
    read first, written back after the writer exists, and its header seeded so it appends.
    """
    kept = run.metrics_rows_before(step)
    if kept is None:
        return
    fields, rows = kept
    logger.experiment  # noqa: B018 - creates the writer (and removes the file)
    with run.metrics.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    logger.experiment.metrics_keys = sorted(fields)

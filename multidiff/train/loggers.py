"""Lightning loggers for a run: CSV always (the reports read metrics.csv), plus any of TensorBoard,
Weights & Biases and MLflow for following a long run on a cluster (``train.logger``)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from ..errors import UserError

#: logger name → (the package it needs, the pip extra that installs it)
OPTIONAL = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}


def logger_names(spec: Any) -> list[str]:
    names = [spec] if isinstance(spec, str) else list(spec or [])
    if not all(isinstance(n, str) for n in names):
        raise UserError(f"train.logger must be a name or a list of names (csv, {', '.join(OPTIONAL)}), got {spec!r}")
    names = [n.strip().lower() for n in names]
    unknown = [n for n in names if n != "csv" and n not in OPTIONAL]
    if unknown:
        raise UserError(f"train.logger: unknown logger {unknown[0]!r}; choose csv, {', '.join(OPTIONAL)}")
    return ["csv"] + [n for n in dict.fromkeys(names) if n != "csv"]


def logger_options(spec: Any, options: Any) -> dict[str, dict[str, Any]]:
    """``train.logger_options``: for each enabled logger, the keyword arguments its Lightning logger
    takes (W&B: project, entity, group, tags, ...; MLflow: tracking_uri, experiment_name, tags, ...;
    TensorBoard: name, ...)."""
    if options is None:
        return {}
    enabled = logger_names(spec)[1:]
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise UserError(f"train.logger_options must map a logger name to its settings, e.g. {{wandb: {{entity: me}}}}; got {options!r}")
    for name, values in options.items():
        if name not in enabled:
            raise UserError(f"train.logger_options.{name}: {name} is not among train.logger ({', '.join(enabled) or 'csv only'})")
        bad = [k for k in values if not isinstance(k, str) or k in _OURS.get(name, ())]
        if bad:
            raise UserError(f"train.logger_options.{name}.{bad[0]}: set by multidiff (the run directory decides it)")
    return {name: dict(values) for name, values in options.items()}


#: the arguments multidiff sets itself (where the logger writes inside the run directory)
_OURS = {"tensorboard": ("save_dir", "version"), "wandb": ("save_dir",), "mlflow": ("save_dir",)}


def check_loggers(spec: Any, options: Any = None) -> None:
    """Refuse a logger whose package is missing, or settings for one not enabled, before anything is written."""
    logger_options(spec, options)
    for name in logger_names(spec)[1:]:
        package, extra = OPTIONAL[name]
        if importlib.util.find_spec(package) is None:
            raise UserError(f"train.logger {name} needs the {package} package: pip install 'multidiff[{extra}]'")


def make_loggers(spec: Any, run_dir: Path, cfg: Any, options: Any = None) -> list[Any]:
    """CSV first (the reports read it), then the others with ``options`` over their defaults. W&B's
    project and MLflow's tracking URI and experiment come from the environment when not given, as
    those tools' own scripts do; otherwise MLflow writes into RUN/mlruns."""
    from lightning.pytorch import loggers as pl_loggers

    opts = logger_options(spec, options)
    run = Path(run_dir)
    out: list[Any] = [pl_loggers.CSVLogger(save_dir=str(run), name="", version="")]
    for name in logger_names(spec)[1:]:
        given = opts.get(name, {})
        if name == "tensorboard":
            out.append(pl_loggers.TensorBoardLogger(**{"name": "tensorboard", **given, "save_dir": str(run), "version": ""}))
        elif name == "wandb":
            defaults = {"project": os.environ.get("WANDB_PROJECT", "multidiff"), "name": f"{cfg.name}-{run.name}"}
            out.append(pl_loggers.WandbLogger(**{**defaults, **given, "save_dir": str(run)}))
        elif name == "mlflow":
            defaults = {"experiment_name": os.environ.get("MLFLOW_EXPERIMENT_NAME", f"multidiff-{cfg.name}"), "run_name": run.name,
                        "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI") or f"file:{run.resolve() / 'mlruns'}"}  # fmt: skip
            out.append(pl_loggers.MLFlowLogger(**{**defaults, **given}))
    return out


def log_density(loggers: list[Any], tables: dict[str, Any], step: int) -> None:
    """The schedule's current training density as an image, to every logger that takes images
    (TensorBoard, W&B, MLflow), so a long run's density can be watched as it moves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report.plots import plot_density_axes

    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 4), squeeze=False)
    for ax, (key, table) in zip(axes[0], tables.items()):
        several = len(tables) > 1  # a group of one is labelled by its schedule, several by modality
        plot_density_axes(ax, {key if several else table.method: table})
        ax.set_title(f"step {step}{': ' + key if several else ''}")
    fig.tight_layout()
    for logger in loggers:
        experiment = logger.experiment
        if hasattr(experiment, "add_figure"):  # TensorBoard
            experiment.add_figure("schedule/density", fig, global_step=step, close=False)
        elif hasattr(experiment, "log_figure"):  # MLflow
            experiment.log_figure(logger.run_id, fig, f"schedule/density_step{step:07d}.png")
        elif hasattr(experiment, "log"):  # W&B
            import wandb

            experiment.log({"schedule/density": wandb.Image(fig), "trainer/global_step": step})
    plt.close(fig)

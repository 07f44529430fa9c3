"""Lightning loggers for a run: CSV always (the reports read metrics.csv), plus any of TensorBoard,
Weights & Biases and MLflow for following a long run on a cluster (``train.logger``)."""
from __future__ import annotations

import importlib.util
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


def check_loggers(spec: Any) -> None:
    """Refuse a logger whose package is missing before anything is written."""
    for name in logger_names(spec)[1:]:
        package, extra = OPTIONAL[name]
        if importlib.util.find_spec(package) is None:
            raise UserError(f"train.logger {name} needs the {package} package: pip install 'multidiff[{extra}]'")


def make_loggers(spec: Any, run_dir: Path, cfg: Any) -> list[Any]:
    from lightning.pytorch.loggers import CSVLogger

    out: list[Any] = [CSVLogger(save_dir=str(run_dir), name="", version="")]
    for name in logger_names(spec)[1:]:
        if name == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            out.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""))
        elif name == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            out.append(WandbLogger(project="multidiff", name=f"{cfg.name}-{Path(run_dir).name}", save_dir=str(run_dir)))
        elif name == "mlflow":
            from lightning.pytorch.loggers import MLFlowLogger

            out.append(MLFlowLogger(experiment_name=f"multidiff-{cfg.name}", run_name=Path(run_dir).name,
                                    tracking_uri=f"file:{Path(run_dir).resolve() / 'mlruns'}"))  # fmt: skip
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
        plot_density_axes(ax, {key or table.method: table})
        ax.set_title(f"step {step}{': ' + key if key else ''}")
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

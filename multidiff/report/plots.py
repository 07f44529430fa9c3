"""PNG plots: a schedule's density against EDM's and its learned profile; metric curves."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..schedules.base import ScheduleContext, ScheduleTable  # noqa: E402
from ..schedules.fixed import LogNormal  # noqa: E402


def check_plot_path(path: Path) -> None:
    """Refuse a plot path whose suffix names no format matplotlib can write (it picks the format from it)."""
    from matplotlib.backend_bases import FigureCanvasBase

    from ..errors import UserError

    formats = FigureCanvasBase.get_supported_filetypes()  # no figure needed to ask
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in formats:
        raise UserError(f"cannot plot to {path}: choose a suffix matplotlib writes ({', '.join(sorted(formats))})")


def edm_density(sigma_min: float, sigma_max: float, u: np.ndarray) -> np.ndarray:
    """EDM's log-normal training density on the same σ range, per unit ln σ."""
    edm = LogNormal(ScheduleContext(sigma_min, sigma_max))
    return edm.pdf(torch.as_tensor(u, dtype=torch.float64)).numpy()


def density_peak(table: ScheduleTable) -> float:
    """σ where the training density peaks."""
    return float(math.exp(table.u[int(np.argmax(table.pdf))]))


def plot_density_axes(ax, tables: dict[str, ScheduleTable], reference: bool = True) -> None:
    first = next(iter(tables.values()))
    for label, t in tables.items():
        ax.plot(np.exp(t.u), t.pdf, label=f"{label} (peak σ={density_peak(t):.3g})")
    if reference and not any(t.method == "edm" for t in tables.values()):
        u = np.linspace(math.log(first.sigma_min), math.log(first.sigma_max), 400)
        ax.plot(np.exp(u), edm_density(first.sigma_min, first.sigma_max, u), "k--", lw=1, label="EDM log-normal")
    ax.set_xscale("log")
    ax.set_xlabel("σ")
    ax.set_ylabel("training density per unit ln σ")
    ax.legend(fontsize=8)


def plot_learned_profile_axes(ax, table: ScheduleTable) -> bool:
    """A schedule's learned estimate: every list of its profile (InfoNoise's mmse, rate and gate,
    CRS's speed, timewarp's fit, adaptive's loss), each ÷ its largest value, on a logarithmic scale
    when they span over two decades. False when the table has no profile."""
    prof = table.profile
    if not prof.get("u"):
        return False
    sigma = np.exp(np.asarray(prof["u"]))
    series = {k: np.asarray(v, dtype=float) for k, v in prof.items() if k not in ("u", "counts")}
    scaled = {k: v / v.max() if v.max() > 0 else v for k, v in series.items()}
    positive = [float(v[v > 0].min()) for v in scaled.values() if (v > 0).any()]
    span = 1 / min(positive) if positive else 1.0
    for key, v in scaled.items():
        ax.plot(sigma, v, label=key)
    ax.set_xscale("log")
    if span > 100:
        ax.set_yscale("log")
        ax.set_ylim(1e-4, 2)
    ax.set_xlabel("σ")
    ax.set_ylabel("÷ largest value")
    ax.set_title("estimated profile")
    ax.legend(fontsize=8)
    return True


def plot_schedule(table: ScheduleTable, path: Path, title: Optional[str] = None) -> Path:
    has_profile = bool(table.profile.get("u") or table.profile.get("rate"))
    fig, axes = plt.subplots(1, 2 if has_profile else 1, figsize=(12 if has_profile else 6.5, 4.2), squeeze=False)
    plot_density_axes(axes[0, 0], {table.method: table})
    axes[0, 0].set_title(title or f"{table.method} training density (step {table.step})")
    if has_profile:
        plot_learned_profile_axes(axes[0, 1], table)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_run_curves(curves: dict[str, tuple[list[int], list[float]]], path: Path, title: str = "") -> Path:
    """One run's metrics against step, one panel each (the NELBO first, then the sample metrics)."""
    keys = [k for k in curves if curves[k][0]]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(5.5 * max(1, len(keys)), 4.0), squeeze=False)
    for ax, key in zip(axes[0], keys):
        steps, values = curves[key]
        ax.plot(steps, values, marker="o", ms=3)
        ax.set_xlabel("training step")
        ax.set_ylabel("validation NELBO" if key == "nelbo" else key)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)

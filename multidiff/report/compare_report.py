"""The report of ``multidiff compare``: several schedules, each trained under the same seeds,
budget, model and evaluation (DESIGN §8). Domain-agnostic: it reads only run directories
(metrics.csv, eval.json, schedule.json, schedule_history/refreshes.csv).

Writes ``report.md``, ``summary.json`` and three PNGs: ``curves.png`` (validation NELBO against
step, mean over seeds with the min–max band), ``densities.png`` (every schedule's final training
density over ln σ on one axis) and ``profiles.png`` (what the adaptive schedules learned).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..schedules.base import ScheduleTable  # noqa: E402
from ..schedules.io import load_schedule_file  # noqa: E402
from .compare import headline_labels, headline_values, nelbo_curve, read_eval, speedup  # noqa: E402
from .plots import density_peak, plot_density_axes, plot_learned_profile_axes  # noqa: E402

# eval.json keys that are bookkeeping, not metrics


def refresh_rows(run_dir: Path) -> list[dict[str, str]]:
    path = Path(run_dir) / "schedule_history" / "refreshes.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def refresh_cost(run_dir: Path, steps: int) -> Optional[dict[str, float]]:
    """Mean cost of a refresh in training steps, and all refreshes' share of the training time."""
    rows = [r for r in refresh_rows(run_dir) if r.get("cost_steps")]
    if not rows or steps <= 0:
        return None
    cost = [float(r["cost_steps"]) for r in rows]
    step_s = float(np.median([float(r["step_s"]) for r in rows]))
    spent = sum(float(r["refresh_s"]) for r in rows)
    probe = [float(r["probe_examples"]) for r in rows if r.get("probe_examples")]
    return {
        "steps_per_refresh": float(np.mean(cost)),
        "share": spent / (spent + steps * step_s),
        "probe_examples_per_refresh": float(np.mean(probe)) if probe else 0.0,
    }


def _mean_spread(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None)


def _fmt(mean: Optional[float], spread: Optional[float] = None, nd: int = 4) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{nd}g}" + (f" ± {spread:.2g}" if spread is not None else "")


def summarize(groups: dict[str, list[Path]], baseline: str) -> dict[str, Any]:
    """Per schedule: final NELBO / metrics (mean, sample std over seeds), steps to the baseline's
    final NELBO and the speedup (per seed, against the baseline run of the same seed)."""
    out: dict[str, Any] = {}
    base_runs = groups.get(baseline, [])
    for label, runs in groups.items():
        curves = [nelbo_curve(d) for d in runs]
        evals = [read_eval(d) or {} for d in runs]
        metrics = headline_labels({str(i): e for i, e in enumerate(evals)})  # the domain's headline metrics
        entry: dict[str, Any] = {
            "runs": [str(d) for d in runs],
            "final_step": [c[0][-1] if c[0] else None for c in curves],
            "nelbo": _mean_spread([c[1][-1] if c[1] else None for c in curves]),
            "metrics": {k: _mean_spread([headline_values(e).get(k) for e in evals]) for k in metrics},
            "nelbo_unit": next((e["nelbo_unit"] for e in evals if e.get("nelbo_unit")), "bits/dim"),
        }
        reach, ratios = [], []
        for i, curve in enumerate(curves):
            if i < len(base_runs):
                sp = speedup(nelbo_curve(base_runs[i]), curve) if label != baseline else {
                    "reached": True, "steps": curve[0][-1] if curve[0] else None, "ratio": 1.0}  # fmt: skip
                reach.append(sp.get("steps") if sp.get("reached") else None)
                ratios.append(sp.get("ratio"))
        entry["steps_to_baseline"] = reach
        entry["reached"] = sum(r is not None for r in reach)
        entry["speedup"] = _mean_spread([r for r in ratios if r is not None])
        costs = [refresh_cost(d, s or 0) for d, s in zip(runs, entry["final_step"])]
        costs = [c for c in costs if c]
        entry["refresh_cost"] = {k: float(np.mean([c[k] for c in costs])) for k in costs[0]} if costs else None
        out[label] = entry
    return out


def _tables(groups: dict[str, list[Path]]) -> dict[str, ScheduleTable]:
    """Each schedule's final exported table (first seed)."""
    tables = {}
    for label, runs in groups.items():
        path = Path(runs[0]) / "schedule.json"
        if path.is_file():
            tables[label] = load_schedule_file(path).table
    return tables


def plot_nelbo_curves(groups: dict[str, list[Path]], path: Path, unit: str) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for label, runs in groups.items():
        curves = [dict(zip(*nelbo_curve(d))) for d in runs]
        steps = sorted(set.intersection(*[set(c) for c in curves])) if curves else []
        if not steps:
            continue
        values = np.array([[c[s] for s in steps] for c in curves])
        (line,) = ax.plot(steps, values.mean(0), marker="o", ms=3, label=label)
        if len(runs) > 1:
            ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.15)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"validation NELBO ({unit})")
    ax.set_title("NELBO vs step (mean over seeds; band: min–max)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_densities(tables: dict[str, ScheduleTable], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.8))
    plot_density_axes(ax, tables)
    ax.set_title("training densities at the end of training (per unit ln σ)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _stages(run_dir: Path) -> list[tuple[int, int]]:
    """Curriculum stage changes (step, stage) from refreshes.csv."""
    return [(int(r["step"]), int(r["stage"])) for r in refresh_rows(run_dir) if r.get("stage")]


def _has_profile(table: ScheduleTable, run_dir: Path) -> bool:
    return bool(table.profile.get("u")) or bool(_stages(run_dir))


def _profile_panel(ax, label: str, table: ScheduleTable, run_dir: Path) -> None:
    """One schedule's learned estimate, or a curriculum's stages over training."""
    if not plot_learned_profile_axes(ax, table):
        steps, values = zip(*([(0, 0)] + _stages(run_dir)))
        ax.step(steps, values, where="post")
        ax.set_xlabel("training step")
        ax.set_ylabel("curriculum stage")
    ax.set_title(label, fontsize=10)


def plot_profiles(groups: dict[str, list[Path]], tables: dict[str, ScheduleTable], path: Path) -> Optional[Path]:
    panels = [(lbl, t, groups[lbl][0]) for lbl, t in tables.items() if _has_profile(t, groups[lbl][0])]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.9), squeeze=False)
    for ax, (label, table, run_dir) in zip(axes[0], panels):
        _profile_panel(ax, label, table, run_dir)
    fig.suptitle("learned profiles (first seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def schedule_notes(tables: dict[str, ScheduleTable]) -> list[str]:
    """Plain-language remarks on how a schedule ended, where its final table alone would mislead."""
    notes = []
    for label, table in tables.items():
        params = table.params or {}
        if "stage" in params and "clusters" in params:
            stage, clusters = int(params["stage"]), int(params["clusters"])
            if stage < clusters - 1:
                notes.append(f"{label}: ended at stage {stage + 1} of {clusters}, so it never trained on "
                             f"the lowest-noise clusters; the smoothed loss kept improving within every "
                             f"{params.get('patience', '?')}-step patience window. Give it a longer budget or a "
                             f"smaller `schedule.patience` to see the full curriculum.")  # fmt: skip
    return notes


def write_report(groups: dict[str, list[Path]], baseline: str, out_dir: Path, title: str, seeds: list[int]) -> Path:
    """``out_dir/report.md`` (+ summary.json and PNGs) for ``groups``: label → run dirs, one per seed."""
    out_dir = Path(out_dir)
    summary = summarize(groups, baseline)
    unit = next(iter(summary.values()))["nelbo_unit"] if summary else "bits/dim"
    tables = _tables(groups)
    curves = plot_nelbo_curves(groups, out_dir / "curves.png", unit)
    dens = plot_densities(tables, out_dir / "densities.png") if tables else None
    profiles = plot_profiles(groups, tables, out_dir / "profiles.png")
    (out_dir / "summary.json").write_text(json.dumps({"baseline": baseline, "seeds": seeds, "schedules": summary}, indent=1))

    extra = list(dict.fromkeys(k for s in summary.values() for k in s["metrics"]))
    spread = "mean ± sample std over seeds" if len(seeds) > 1 else "one seed"
    lines = [f"# {title}", "",
             f"{len(groups)} schedules × {len(seeds)} seed(s) ({', '.join(map(str, seeds))}), identical model, "
             f"initial weights, data order, step budget and evaluation; only the training noise distribution "
             f"differs. NELBO in {unit} on the fixed validation subset (fixed quadrature and noise); sample "
             f"metrics from the same sampler, steps and seed ({spread}). Baseline: **{baseline}**.", ""]  # fmt: skip
    head = ["schedule", "final NELBO", *extra, "density peak σ",
            f"steps to {baseline}'s final NELBO", "speedup", "refresh cost"]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, s in summary.items():
        n = len(s["steps_to_baseline"])
        reached = [r for r in s["steps_to_baseline"] if r is not None]
        if not n:
            reach = "–"
        elif len(reached) == n:
            reach = _fmt(float(np.mean(reached)), None, 4)
        else:
            reach = f"not reached ({n - len(reached)}/{n} seeds)"
        ratio = f"{_fmt(*s['speedup'], nd=3)}×" if s["speedup"][0] is not None else "–"
        cost = s["refresh_cost"]
        cost_txt = f"{cost['steps_per_refresh']:.3g} steps/refresh ({100 * cost['share']:.1f}% of training)" if cost else "–"
        peak = _fmt(density_peak(tables[label]), None, 3) if label in tables else "–"
        row = [label, _fmt(*s["nelbo"]), *[_fmt(*s["metrics"].get(k, (None, None))) for k in extra],
               peak, reach, ratio, cost_txt]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")

    all_steps = sorted({st for runs in groups.values() for d in runs for st in nelbo_curve(d)[0]})
    lines += ["", f"Validation NELBO ({unit}) at equal steps (mean over seeds):", "",
              "| step | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]  # fmt: skip
    for st in all_steps:
        cells = []
        for runs in groups.values():
            vals = [dict(zip(*nelbo_curve(d))).get(st) for d in runs]
            cells.append(_fmt(float(np.mean(vals))) if all(v is not None for v in vals) else "–")
        lines.append(f"| {st} | " + " | ".join(cells) + " |")
    lines += ["", f"Speedup = {baseline}'s final step / the steps a run needs to reach {baseline}'s final NELBO "
              "(linear interpolation between evaluations, per seed against the same seed's baseline); below 1 "
              f"when {baseline} gets there first. Refresh cost = the wall time of a schedule refresh (including "
              "CRS's extra denoiser passes) in median training steps.", "",
              f"![NELBO curves]({curves.name})", ""]  # fmt: skip
    notes = schedule_notes(tables)
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    if dens:
        lines += [f"![training densities]({dens.name})", ""]
    if profiles:
        lines += [f"![learned profiles]({profiles.name})", ""]
    lines += ["Runs:", ""] + [f"- {label}: " + ", ".join(f"`{d}`" for d in runs) for label, runs in groups.items()] + [""]
    md = out_dir / "report.md"
    md.write_text("\n".join(lines))
    return md

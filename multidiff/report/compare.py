"""Comparing finished runs: NELBO curves at equal steps, the speedup against a baseline, training
densities on one axis, and each run's final metrics (DESIGN §8)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..schedules.io import load_schedule_file  # noqa: E402
from .plots import density_peak, plot_density_axes, plot_profile_axes  # noqa: E402


def nelbo_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    """Validation NELBO by step from metrics.csv, closed by eval.json's value at the final step.

    Lightning logs validation at the index of the last training batch, so a row at step s was
    measured after s + 1 optimizer steps.
    """
    points: dict[int, float] = {}
    path = Path(run_dir) / "metrics.csv"
    if path.is_file():
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if row.get("val/nelbo"):
                    points[int(float(row["step"])) + 1] = float(row["val/nelbo"])
    ev = read_eval(run_dir)
    if ev and "nelbo" in ev:
        points[int(ev["step"])] = float(ev["nelbo"])
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def read_eval(run_dir: Path) -> Optional[dict[str, Any]]:
    path = Path(run_dir) / "eval.json"
    return json.loads(path.read_text()) if path.is_file() else None


def steps_to_reach(steps: list[int], values: list[float], target: float) -> Optional[float]:
    """First step at which the curve reaches ``target`` (linear interpolation between evaluations)."""
    for i, (s, v) in enumerate(zip(steps, values)):
        if v <= target:
            if i == 0:
                return float(s)
            s0, v0 = steps[i - 1], values[i - 1]
            return s0 + (s - s0) * (v0 - target) / (v0 - v) if v0 != v else float(s)
    return None


def speedup(baseline: tuple[list[int], list[float]], other: tuple[list[int], list[float]]) -> dict[str, Any]:
    """Baseline steps / steps the other run needs to reach the baseline's final NELBO."""
    if not baseline[0] or not other[0]:
        return {"reached": False, "ratio": None}
    target, base_steps = baseline[1][-1], baseline[0][-1]
    reach = steps_to_reach(*other, target)
    if reach is None:
        back = steps_to_reach(*baseline, other[1][-1])  # the baseline reaches the other's final NELBO first
        return {"reached": False, "ratio": (back / other[0][-1]) if back else None, "target": target}
    return {"reached": True, "steps": reach, "ratio": base_steps / max(reach, 1.0), "target": target}


def _fmt(x: Any, nd: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}g}"
    return str(x)


def write_comparison(runs: dict[str, Path], baseline: str, out_dir: Path, title: str, stem: str = "comparison") -> Path:
    """``out_dir/{stem}.md`` and ``{stem}.png`` comparing ``runs`` (label → run dir) against ``baseline``."""
    out_dir = Path(out_dir)
    curves = {label: nelbo_curve(d) for label, d in runs.items()}
    evals = {label: read_eval(d) or {} for label, d in runs.items()}
    tables = {}
    for label, d in runs.items():
        if (Path(d) / "schedule.json").is_file():
            tables[label] = load_schedule_file(Path(d) / "schedule.json").table
    unit = next((e.get("nelbo_unit") for e in evals.values() if e.get("nelbo_unit")), "bits/dim")

    with_profile = [lbl for lbl, t in tables.items() if t.profile.get("rate")]
    ncols = 2 + len(with_profile[:1])
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4.3))
    for label, (steps, values) in curves.items():
        axes[0].plot(steps, values, marker="o", ms=3, label=label)
    axes[0].set_xlabel("training step")
    axes[0].set_ylabel(f"validation NELBO ({unit})")
    axes[0].grid(alpha=0.3)
    axes[0].legend()
    axes[0].set_title("NELBO vs step")
    if tables:
        plot_density_axes(axes[1], tables)
        axes[1].set_title("training densities")
    if with_profile:
        plot_profile_axes(axes[2], tables[with_profile[0]])
        axes[2].set_title(f"{with_profile[0]}: learned profile")
    fig.suptitle(title)
    fig.tight_layout()
    png = out_dir / f"{stem}.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)

    headline = headline_labels(evals)
    lines = [f"# {title}", "", f"Baseline: **{baseline}**. NELBO in {unit} on the fixed validation subset "
             "(fixed quadrature and noise, identical for every schedule); sample metrics "
             f"({', '.join(headline)}) from the same sampler, steps and seeds.", ""]  # fmt: skip
    lines += [f"| schedule | final step | final NELBO | {' | '.join(headline)} | density peak σ | steps to baseline's final NELBO | speedup |",
              "|---|---|---|" + "---|" * len(headline) + "---|---|---|"]  # fmt: skip
    base_curve = curves.get(baseline, ([], []))
    for label in runs:
        steps, values = curves[label]
        sp = speedup(base_curve, curves[label]) if label != baseline else {"reached": True, "steps": steps[-1] if steps else None, "ratio": 1.0}
        reach = _fmt(sp.get("steps")) if sp.get("reached") else "not reached"
        ratio = f"{sp['ratio']:.2f}×" if sp.get("ratio") else "–"
        peak = _fmt(density_peak(tables[label]), 3) if label in tables else "–"
        metrics = " | ".join(_fmt(headline_values(evals[label]).get(h)) for h in headline)
        lines.append(f"| {label} | {steps[-1] if steps else '–'} | {_fmt(values[-1] if values else None)} | "
                     f"{metrics} | {peak} | {reach} | {ratio} |")  # fmt: skip
    lines += notes_lines(evals)
    all_steps = sorted(set().union(*[set(c[0]) for c in curves.values()]))
    lines += ["", "NELBO at equal steps:", "", "| step | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for s in all_steps:
        row = [_fmt(dict(zip(*curves[lbl])).get(s)) for lbl in runs]
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    lines += ["", "Speedup = baseline's final step / steps the run needs to reach the baseline's final NELBO "
              "(linear interpolation between evaluations); below 1 when the baseline gets there first.", "",
              f"![comparison]({png.name})", ""]  # fmt: skip
    lines += samples_section(runs, evals, out_dir)
    md = out_dir / f"{stem}.md"
    md.write_text("\n".join(lines))
    return md


def notes_lines(evals: dict[str, dict[str, Any]]) -> list[str]:
    """Each distinct note a domain put in eval.json (e.g. a latent autoencoder's PSNR), once, with its runs."""
    seen: dict[str, list[str]] = {}
    for label, ev in evals.items():
        for note in ev.get("notes", []):
            seen.setdefault(str(note), []).append(label)
    return [line for note, labels in seen.items() for line in ("", f"{note} (runs: {', '.join(labels)})")]


def headline_values(ev: dict[str, Any]) -> dict[str, Any]:
    """An eval.json's headline metrics (label → value); older files: the Fréchet distance."""
    if "headline" in ev:
        return dict(ev["headline"])
    return {"Fréchet distance": ev["fd"]} if "fd" in ev else {}


def headline_labels(evals: dict[str, dict[str, Any]]) -> list[str]:
    labels: list[str] = []
    for ev in evals.values():
        labels += [h for h in headline_values(ev) if h not in labels]
    return labels or ["Fréchet distance"]


def samples_section(runs: dict[str, Path], evals: dict[str, dict[str, Any]], out_dir: Path) -> list[str]:
    """Links to each run's sample files, and the first samples quoted when eval.json has a text preview."""
    lines = ["## Samples", ""]
    for label, d in runs.items():
        ev = evals[label]
        links = []
        for rel in ev.get("samples", []):
            target = Path(d) / rel
            try:
                target = target.relative_to(out_dir)
            except ValueError:
                pass
            links.append(f"[{Path(rel).name}]({target})")
        lines.append(f"**{label}**: {', '.join(links) or '–'}")
        lines.append("")
        for i, text in enumerate(ev.get("preview", [])):
            quoted = "\n".join("    " + line for line in str(text).splitlines())
            lines += [f"sample {i}:", "", quoted, ""]
    return lines


def summary(runs: dict[str, Path], baseline: str) -> dict[str, Any]:
    curves = {label: nelbo_curve(d) for label, d in runs.items()}
    return {label: speedup(curves[baseline], curves[label]) for label in runs if label != baseline}


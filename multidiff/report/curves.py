"""Metric curves of a run directory: the validation NELBO and the sample-quality metrics against
training step, read from metrics.csv and closed by eval.json's values at the final step."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

from ..rundir import RunDir

Curve = tuple[list[int], list[float]]
NELBO = "nelbo"


def metric_curves(run_dir: Path) -> dict[str, Curve]:
    """{"nelbo": (steps, values), quality metric: (steps, values), ...}.

    Lightning logs a validation at the index of the last training batch, so a row at step s was
    measured after s + 1 optimizer steps. eval.json (the saved EMA weights, the same evaluation)
    gives the value at the final step: its ``quality_curve`` (on as many samples as the curve's
    other points) where the final evaluation drew more samples.
    """
    points: dict[str, dict[int, float]] = {}
    path = RunDir(run_dir).metrics
    if path.is_file():
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                for column, value in row.items():
                    if not value or not column:
                        continue
                    if column == "val/nelbo":
                        points.setdefault(NELBO, {})[int(float(row["step"])) + 1] = float(value)
                    elif column.startswith("quality/"):
                        points.setdefault(column[len("quality/"):], {})[int(float(row["step"])) + 1] = float(value)
    ev = RunDir(run_dir).read_eval() or {}
    if "step" in ev:
        if "nelbo" in ev:
            points.setdefault(NELBO, {})[int(ev["step"])] = float(ev["nelbo"])
        for key, value in (ev.get("quality_curve") or ev.get("quality") or {}).items():
            points.setdefault(key, {})[int(ev["step"])] = float(value)
    return {k: (sorted(v), [v[s] for s in sorted(v)]) for k, v in points.items()}


def nelbo_curve(run_dir: Path) -> Curve:
    return metric_curves(run_dir).get(NELBO, ([], []))


def final_value(curve: Curve) -> Optional[float]:
    return curve[1][-1] if curve[1] else None


def quality_directions(ev: dict[str, Any]) -> dict[str, Optional[str]]:
    """The tracked quality metrics of an eval.json and which way is better (None: a diagnostic)."""
    return dict(ev.get("quality_directions") or {})


def final_values(run_dir: Path, curves: dict[str, Curve]) -> dict[str, float]:
    """A run's final value of every metric: eval.json's (for sample metrics, on all of the final
    evaluation's samples), else the curve's last point (a run not yet evaluated)."""
    out = {key: values[-1] for key, (_, values) in curves.items() if values}
    ev = RunDir(run_dir).read_eval() or {}
    if "nelbo" in ev:
        out[NELBO] = float(ev["nelbo"])
    out.update({key: float(v) for key, v in (ev.get("quality") or {}).items()})
    return out

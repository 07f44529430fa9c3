"""Planning the runs of ``multidiff compare``: one per (schedule, seed), under OUT/LABEL/seedS.

Every run gets the same recipe except the schedule (``select_schedule``: the recipe's own schedule
keeps its parameters, any other starts from its defaults) and the seed. ``--set`` overrides apply
to every run; a ``schedule.KEY=V`` override applies to the schedules that have parameter KEY.
Everything is validated before anything is trained, so a typo fails at once, not after hours.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..recipe import parse_yaml, resolve, select_schedule
from ..schedules.base import ScheduleContext
from ..schedules.registry import REGISTRY, build_schedule, is_schedule_file


@dataclass
class PlannedRun:
    label: str
    seed: int
    recipe: dict[str, Any]  # resolved, before the domain fills in its defaults
    run_dir: Path


def parse_schedules(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise UserError("--schedules: give at least one schedule, e.g. --schedules edm,infonoise")
    return names


def _schedule_overrides(name: str, overrides: list[str]) -> list[str]:
    keys = {f.name for f in dataclasses.fields(REGISTRY[name].params)} if name in REGISTRY else set()
    return [o for o in overrides if o.split("=", 1)[0].strip().split(".", 1)[1] in keys]


def plan_runs(raw: dict[str, Any], source: str, schedules: list[str], seeds: list[int], overrides: list[str], out: Path) -> list[PlannedRun]:
    """The runs to make, every recipe resolved and every schedule built once (validation only)."""
    labels = []
    for name in schedules:
        if name not in REGISTRY and not is_schedule_file(name):
            raise UserError(f"--schedules: unknown schedule {name!r}; choose from {', '.join(REGISTRY)} or a schedule file (.json)")
        label = name if name in REGISTRY else Path(name).stem
        if label in labels:
            raise UserError(f"--schedules: {label!r} appears twice")
        labels.append(label)
    general = [o for o in overrides if not o.strip().startswith("schedule.")]
    per_schedule = [o for o in overrides if o.strip().startswith("schedule.")]
    for o in per_schedule:
        key = o.split("=", 1)[0].strip()
        if key == "schedule.name":
            raise UserError("--set schedule.name: choose schedules with --schedules")
        if not any(_schedule_overrides(n, [o]) for n in schedules):
            raise UserError(f"--set {o}: none of the schedules {', '.join(schedules)} has parameter '{key.split('.', 1)[1]}'")
    plans = []
    for name, label in zip(schedules, labels):
        for seed in seeds:
            recipe = resolve(select_schedule(raw, name), source, general + _schedule_overrides(name, per_schedule) + [f"seed={seed}"])
            if seed == seeds[0]:
                _validate_schedule(recipe)
            plans.append(PlannedRun(label, seed, recipe, Path(out) / label / f"seed{seed}"))
    return plans


def _validate_schedule(recipe: dict[str, Any]) -> None:
    spec = dict(recipe["schedule"])
    name = spec.pop("name")
    d = recipe["diffusion"]
    build_schedule(name, spec, ScheduleContext(float(d["sigma_min"]), float(d["sigma_max"])))


def trained_steps(plan: PlannedRun) -> int | None:
    """Steps of the run's last evaluation (eval.json), if it has one."""
    from ..report.compare import read_eval

    ev = read_eval(plan.run_dir)
    return int(ev["step"]) if ev and "step" in ev else None


def finished(plan: PlannedRun) -> bool:
    """True when the run directory holds this plan's finished evaluation (reused, not retrained)."""
    return trained_steps(plan) == int(plan.recipe["train"]["max_steps"]) and (
        plan.run_dir / "checkpoints" / "last.ckpt"
    ).is_file()


def recipe_mismatch(plan: PlannedRun) -> str | None:
    """The first recipe key the user set (directly or through defaults of the top-level sections)
    that the stored run used differently; None when they agree (or nothing is stored)."""
    path = plan.run_dir / "recipe.yaml"
    if not path.is_file():
        return None
    stored = parse_yaml(path.read_text())
    allowed = {"train.max_steps", "train.accelerator", "train.devices", "train.precision", "train.progress_bar"}

    def flat(d: dict, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(stored), flat(plan.recipe)
    # keys left null here are filled in at build time (measured σ_data, domain choices): not compared
    diff = sorted(k for k, v in b.items() if v is not None and k not in allowed and a.get(k) != v)
    return diff[0] if diff else None

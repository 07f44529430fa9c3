"""The runs of a comparison: one per (schedule, seed), under OUT/LABEL/seedS, and whether an existing
run directory may be reused.

Every run gets the same recipe except the schedule (``select_schedule``: the recipe's own schedule
keeps its parameters, any other starts from its defaults) and the seed. ``--set`` overrides apply
to every run; a ``schedule.KEY=V`` override applies to the schedules that have parameter KEY.
Everything is validated before anything is trained, so a typo fails at once, not after hours.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .errors import UserError
from .files import has_content
from .recipe import RESUMABLE_KEYS, differences, flatten, load_recipe_file, resolve, sections, select_schedule
from .rundir import RunDir
from .schedules.registry import REGISTRY, build_schedule, is_schedule_file

#: settings a reused or resumed run of a comparison may differ in (how it ran, not what it learned);
#: a shorter budget is resumed, a longer one refused (see :func:`reuse_problem`)
REUSABLE_KEYS = RESUMABLE_KEYS - {"train.lr"}


@dataclass
class RunPlan:
    label: str
    seed: int
    recipe: dict[str, Any]  # resolved (defaults of the generic sections), before the domain's
    run_dir: Path

    @property
    def max_steps(self) -> int:
        return sections(self.recipe).train.max_steps


def parse_schedules(text: str) -> list[str]:
    """``--schedules edm,infonoise,infonoise:allocation=density``: names or files, each optionally
    followed by ``:KEY=VALUE`` parameters (a variant of that schedule, labelled by the whole spec)."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise UserError("--schedules: give at least one schedule, e.g. --schedules edm,infonoise")
    return names


def split_spec(spec: str) -> tuple[str, list[str]]:
    """``infonoise:allocation=density:onset=tail`` → (``infonoise``, [``schedule.allocation=density``, ...])."""
    name, *params = spec.split(":")
    for p in params:
        if "=" not in p or not p.split("=", 1)[0]:
            raise UserError(f"--schedules {spec}: parameters follow the name as :KEY=VALUE, got {p!r}")
    return name, [f"schedule.{p}" for p in params]


def spec_label(spec: str) -> str:
    """The run-directory label of a schedule spec: its name (a file's stem), then its parameters."""
    name, params = split_spec(spec)
    base = name if name in REGISTRY else Path(name).stem
    return "-".join([base, *(p[len("schedule."):] for p in params)])


def _schedule_overrides(name: str, overrides: list[str]) -> list[str]:
    """The ``schedule.KEY=V`` (or a joint recipe's ``schedule.MODALITY.KEY=V``) overrides whose KEY
    schedule ``name`` has."""
    keys = {f.name for f in dataclasses.fields(REGISTRY[name].params)} if name in REGISTRY else set()
    return [o for o in overrides if o.split("=", 1)[0].strip().split(".")[-1] in keys]


def plan_runs(raw: dict[str, Any], source: str, schedules: list[str], seeds: list[int], overrides: list[str], out: Path) -> list[RunPlan]:
    """The runs to make, every recipe resolved and every schedule built once (validation only)."""
    labels = []
    for spec in schedules:
        name, _ = split_spec(spec)
        if name not in REGISTRY and not is_schedule_file(name):
            raise UserError(f"--schedules: unknown schedule {name!r}; choose from {', '.join(REGISTRY)} or a schedule file (.json)")
        label = spec_label(spec)
        if label in labels:
            raise UserError(f"--schedules: {label!r} appears twice")
        labels.append(label)
    general = [o for o in overrides if not o.strip().startswith("schedule.")]
    per_schedule = [o for o in overrides if o.strip().startswith("schedule.")]
    names = [split_spec(s)[0] for s in schedules]
    for o in per_schedule:
        key = o.split("=", 1)[0].strip()
        if key == "schedule.name":
            raise UserError("--set schedule.name: choose schedules with --schedules")
        if not any(_schedule_overrides(n, [o]) for n in names):
            raise UserError(f"--set {o}: none of the schedules {', '.join(names)} has parameter '{key.split('.')[-1]}'")
    plans = []
    for spec, label in zip(schedules, labels):
        name, own = split_spec(spec)
        for seed in seeds:
            sets = general + _schedule_overrides(name, per_schedule) + own + [f"seed={seed}"]
            recipe = resolve(select_schedule(raw, name), source, sets)
            if seed == seeds[0]:
                _validate_schedule(recipe)
            plans.append(RunPlan(label, seed, recipe, Path(out) / label / f"seed{seed}"))
    return plans


def _validate_schedule(recipe: dict[str, Any]) -> None:
    """Build the plan's schedule(s) once, so a bad parameter fails before anything is trained."""
    from .recipe import per_modality, schedule_specs
    from .schedules.api import schedule_context

    d = sections(recipe).diffusion
    specs = schedule_specs(recipe)
    given = per_modality(d.sigma_data, list(specs))
    for key, spec in specs.items():
        spec = dict(spec)
        name = spec.pop("name")
        sigma_data = float(given[key] or 1.0)  # measured later; any works here
        build_schedule(name, spec, schedule_context(d.sigma_min, d.sigma_max, sigma_data, d.weighting))


def trained_steps(plan: RunPlan) -> Optional[int]:
    """Steps of the run's last evaluation (eval.json), if it has one."""
    ev = RunDir(plan.run_dir).read_eval()
    return int(ev["step"]) if ev and "step" in ev else None


def finished(plan: RunPlan) -> bool:
    """True when the run directory holds this plan's finished evaluation (reused, not retrained)."""
    return trained_steps(plan) == plan.max_steps and RunDir(plan.run_dir).last_checkpoint.is_file()


def reuse_problem(plan: RunPlan, resolved: dict[str, Any], defaults: Optional[dict[str, Any]] = None) -> Optional[str]:
    """Why the plan's existing run directory cannot be reused or resumed (None if it can, or is new).

    ``resolved``: the plan's recipe with every data-independent default filled in, compared key by
    key with the stored recipe.yaml, so settings that were never written in the recipe file
    (``--set data.limit=300``, a changed default) count too. σ_data measured from the data is
    compared only when the plan gives one.
    """
    run_dir = plan.run_dir
    path = RunDir(run_dir).recipe
    if not path.is_file():
        if has_content(run_dir):
            return f"{run_dir} exists and is not a multidiff run; use another --out"
        return None
    stored = resolve(load_recipe_file(path, what="run recipe"), str(path))
    allowed = REUSABLE_KEYS | ({"diffusion.sigma_data"} if sections(resolved).diffusion.sigma_data is None else set())
    diff = differences(stored, resolved, allowed, defaults)
    if diff:
        was, now = flatten(stored).get(diff[0]), flatten(resolved).get(diff[0])
        return f"{run_dir} was trained with a different recipe (differs at '{diff[0]}': {was!r} there, {now!r} now); use another --out or move it away"
    done = trained_steps(plan)
    if done is not None and done > plan.max_steps:
        return f"{run_dir} was trained for {done} steps, more than --max-steps {plan.max_steps}; use another --out"
    return None

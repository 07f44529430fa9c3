"""The commands: ``train`` (one run directory: lock, recipe and artifacts, fit, evaluation, plots),
``compare`` (schedules × seeds under one recipe, then one report) and ``train --print-recipe``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import UserError
from ..files import RunLock, atomic_write_text, clear_directory, has_content, user_path_error
from ..plans import RunPlan, finished, plan_runs, reuse_problem
from ..recipe import RESUMABLE_KEYS, differences, dump, flatten, load_recipe_file, resolve, schedule_specs, sections, select_schedule
from ..rundir import RunDir
from ..schedules.io import load_schedule_file
from .evaluate import check_checkpoint_recipe, evaluate_run, quality, read_checkpoint, read_run_recipe, tracked_values
from .prepare import Setup, known_defaults, prepare, resolve_full, schedule_label


def is_launched_worker() -> bool:
    """True in the extra processes of a multi-process run (Lightning's DDP launcher re-runs this
    command with LOCAL_RANK set; torchrun/SLURM set RANK/SLURM_PROCID). Only the primary process
    checks, replaces or creates the run directory."""
    return any(os.environ.get(k, "0") not in ("", "0") for k in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


def check_device_settings(recipe: dict[str, Any]) -> None:
    from ..train.fit import check_device_settings as check

    check(recipe)


def train_run(plan: RunPlan, mode: str = "new", setup: Optional[Setup] = None) -> Optional[dict[str, Any]]:
    """Train one run directory and evaluate it; ``mode``: new | resume | overwrite | continue (resume
    if there is anything to resume, else start: what ``compare`` does). Returns eval.json's content
    (None in the extra processes of a multi-process run)."""
    run_dir, primary = Path(plan.run_dir), not is_launched_worker()
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file, not a run directory")
    run = RunDir(run_dir)
    exists = has_content(run_dir)
    stored_recipe = run.recipe
    if mode == "continue":
        mode = "resume" if stored_recipe.is_file() else ("overwrite" if exists else "new")
    if primary:
        if mode == "new" and exists:
            raise UserError(f"run directory {run_dir} already exists; pass --resume to continue it, --overwrite to replace it, or --out DIR")
        if mode == "resume" and not stored_recipe.is_file():
            raise UserError(f"nothing to resume: {run_dir} holds no run (no recipe.yaml)")
        if mode == "overwrite" and exists and not stored_recipe.is_file():
            raise UserError(f"--overwrite: {run_dir} holds files but no multidiff run (no recipe.yaml); nothing was removed. "
                            "Choose another --out, or empty it yourself")  # fmt: skip
    resuming = mode == "resume"
    ckpt = run.last_checkpoint
    if resuming and not ckpt.is_file():
        _refuse_lost_checkpoint(run)
    saved = read_checkpoint(ckpt) if resuming and ckpt.is_file() else None  # a damaged checkpoint fails here
    start_step = int(saved["global_step"]) if saved else 0
    if setup is None:
        setup = prepare(plan.recipe, run_dir if resuming else None)
    if resuming and primary:
        stored = read_run_recipe(run_dir)
        diff = differences(stored, setup.recipe, RESUMABLE_KEYS, known_defaults(setup.domain, setup.recipe))
        if diff:
            was, now = flatten(stored).get(diff[0]), flatten(setup.recipe).get(diff[0])
            raise UserError(f"--resume: {stored_recipe} differs at '{diff[0]}' (run: {was!r}, now: {now!r}); resume with the "
                            f"run's own recipe and flags (only {', '.join(sorted(k.split('.', 1)[1] for k in RESUMABLE_KEYS))} may change)")  # fmt: skip
        if saved is not None:
            check_checkpoint_recipe(setup, saved, ckpt, allowed=RESUMABLE_KEYS)
        if start_step > setup.cfg.train.max_steps:
            raise UserError(f"--resume: {run_dir} is already at step {start_step}, past train.max_steps "
                            f"{setup.cfg.train.max_steps}; nothing was changed (use --max-steps {start_step} or more)")  # fmt: skip
        run.validate_files()
    if primary:
        check_device_settings(setup.recipe)
    lock = RunLock(run_dir).acquire() if primary else None
    try:
        if primary:
            if mode == "new" and has_content(run_dir):  # another process made it since we looked
                raise UserError(f"run directory {run_dir} already exists; pass --resume to continue it, --overwrite to replace it, or --out DIR")
            if mode == "overwrite":
                clear_directory(run_dir)
            _write_run_files(setup, run_dir, fresh=not resuming)
            if resuming:
                run.truncate_history(start_step)
        from ..train.fit import fit

        timing = fit(setup, run_dir, resume=resuming and ckpt.is_file(), quality_fn=_quality_fn(setup))
        if not primary or timing is None:
            return None
        run.record_timing(**timing)
        result = evaluate_run(setup, run_dir)
        _run_plots(setup, run_dir)
        _print_summary(setup, run_dir, result)
        return result
    finally:
        if lock is not None:
            lock.release()


def _refuse_lost_checkpoint(run: RunDir) -> None:
    """``--resume`` without last.ckpt: from scratch only when nothing was ever checkpointed (a run
    stopped before its first checkpoint); otherwise say which checkpoint to resume from."""
    steps, ckpt = run.step_checkpoints(), run.last_checkpoint
    if steps:
        raise UserError(f"--resume: {ckpt} is missing but {steps[-1].name} is there; nothing was changed. Copy it to "
                        f"{ckpt.name} to resume from its step, or pass --overwrite to start again")  # fmt: skip


def _write_run_files(setup: Setup, run_dir: Path, fresh: bool) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(RunDir(run_dir).recipe, dump(setup.recipe))
        if fresh:
            setup.domain.save_artifacts(setup.data, run_dir)
    except OSError as exc:
        raise user_path_error(exc, "write") from None


def _quality_fn(setup: Setup) -> Callable[[Any], dict[str, float]]:
    def measure(model: Any) -> dict[str, float]:
        device = next(model.parameters()).device
        return tracked_values(setup, quality(setup, model, device).metrics)

    return measure


def _run_plots(setup: Setup, run_dir: Path) -> None:
    from ..report.curves import metric_curves
    from ..report.plots import plot_run_curves, plot_schedule

    run = RunDir(run_dir)
    plots = run.plots
    plots.mkdir(exist_ok=True)
    files = run.schedule_files()
    for key, path in files.items():
        member = f" ({key})" if len(files) > 1 else ""
        plot_schedule(load_schedule_file(path).table, plots / path.with_suffix(".png").name, title=f"{run_dir.name}: training density{member}")
    plot_run_curves(metric_curves(run_dir), plots / "curves.png", title=run_dir.name)


def _print_summary(setup: Setup, run_dir: Path, result: dict[str, Any]) -> None:
    from ..report.plots import density_peak

    run = RunDir(run_dir)
    files = run.schedule_files()
    peaks = " · ".join(f"{k + ' ' if len(files) > 1 else ''}density peaks at σ={density_peak(load_schedule_file(p).table):.3g}"
                       for k, p in files.items())
    extra = "".join(f" · {label} {value:.4g}" for label, value in result.get("headline", {}).items() if isinstance(value, (int, float)))
    print(f"\nrun {run_dir}: step {result['step']} · NELBO {result['nelbo']:.4f} {result['nelbo_unit']}{extra} · {peaks}")
    print(f"  samples {run_dir / result['samples'][0]} · schedule {', '.join(str(p) for p in files.values())} · plots {run.plots}/")


# ---- the commands ---------------------------------------------------------------------------------


def resolved_recipe_text(recipe_path: str, *, schedule: Optional[str], overrides: list[str]) -> str:
    """``multidiff train --print-recipe``: the recipe a run would record in recipe.yaml, after the
    checks a run makes before its directory exists (data loaded, model and schedule built, devices
    probed; σ_data measured). Nothing is written."""
    raw = load_recipe_file(recipe_path)
    if schedule:
        raw = select_schedule(raw, schedule)
    setup = prepare(resolve(raw, recipe_path, overrides), metrics=False)
    check_device_settings(setup.recipe)
    return dump(setup.recipe)


def train(recipe_path: str, *, schedule: Optional[str], overrides: list[str], out: Optional[str], mode: str,
          baseline: Optional[str] = None) -> None:  # fmt: skip
    """``multidiff train``: one run, or with ``baseline`` a two-schedule comparison against it (one seed)."""
    raw = load_recipe_file(recipe_path)
    if schedule:
        raw = select_schedule(raw, schedule)
    recipe = resolve(raw, recipe_path, overrides)
    cfg = sections(recipe)
    label = schedule_label(recipe)
    if baseline and ":" in baseline:
        raise UserError(f"--baseline {baseline}: give a schedule name or file; variants with :KEY=VALUE go to `multidiff compare --schedules`")
    if baseline:
        base = schedule_label(resolve(select_schedule(raw, baseline), recipe_path, [o for o in overrides if not o.strip().startswith("schedule.")]))
        if base == label:
            raise UserError(f"--baseline {baseline}: the recipe already trains {label}; pick another schedule")
        names = {spec["name"] for spec in schedule_specs(recipe).values()}
        if len(names) > 1:
            raise UserError("--baseline: the recipe's modalities use different schedules; compare them with `multidiff compare --schedules`")
        # like `compare`, a comparison reuses its finished runs and resumes unfinished ones
        run_comparison(raw, recipe_path, [names.pop(), baseline], seeds=[cfg.seed], overrides=overrides,
                       out=out or f"runs/{cfg.name}-{label}-vs-{base}", baseline=base, overwrite=mode == "overwrite")  # fmt: skip
        return
    plan = RunPlan(label, cfg.seed, recipe, Path(out or f"runs/{cfg.name}-{label}"))
    train_run(plan, mode)


def run_comparison(raw: dict[str, Any], source: str, schedules: list[str], *, seeds: list[int], overrides: list[str],
                   out: str, baseline: Optional[str] = None, overwrite: bool = False, runs: Optional[str] = None) -> Optional[Path]:  # fmt: skip
    """Train every schedule × seed under the same model, data order, budget and evaluation into
    ``RUNS/LABEL/seedS`` (RUNS defaults to OUT; finished runs reused, interrupted ones resumed) and
    write OUT/report.md."""
    from ..report.compare_report import write_report

    out_dir = Path(out)
    if RunDir(out_dir).is_run():
        raise UserError(f"--out {out_dir} is a training run directory; pick another directory for the comparison")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a directory")
    runs_dir = Path(runs) if runs else out_dir
    if RunDir(runs_dir).is_run():
        raise UserError(f"--runs {runs_dir} is a training run directory; pick the folder that holds SCHEDULE/seedS runs")
    plans = plan_runs(raw, source, schedules, seeds, overrides, runs_dir)
    labels = list(dict.fromkeys(p.label for p in plans))
    baseline = baseline or ("edm" if "edm" in labels else labels[0])
    if baseline not in labels:
        raise UserError(f"--baseline {baseline}: not among the compared schedules ({', '.join(labels)})")
    primary = not is_launched_worker()
    if primary and not overwrite:
        for plan in plans:  # refuse before training anything
            resolved, domain = resolve_full(plan.recipe)
            problem = reuse_problem(plan, resolved, known_defaults(domain, resolved))
            if problem:
                raise UserError(problem)
    todo = [p for p in plans if overwrite or not finished(p)]
    first = prepare(todo[0].recipe) if todo else None  # data, metric and sampler validated before any directory is made
    if primary and first is not None:
        check_device_settings(first.recipe)
    lock = RunLock(out_dir).acquire() if primary else None
    try:
        for i, plan in enumerate(plans, 1):
            tag = f"[{i}/{len(plans)}] {plan.label} seed {plan.seed}"
            if overwrite:
                if primary:
                    print(f"{tag}: training → {plan.run_dir} (replacing what was there)", flush=True)
                train_run(plan, "overwrite")
                continue
            if finished(plan):
                if primary:
                    print(f"{tag}: reusing {plan.run_dir} (finished at step {plan.max_steps})")
                continue
            resume = RunDir(plan.run_dir).is_run()
            if primary:
                print(f"{tag}: {'resuming' if resume else 'training'} → {plan.run_dir}", flush=True)
            train_run(plan, "continue", setup=first if plan is todo[0] and not resume else None)
        if not primary:
            return None
        groups = {label: [p.run_dir for p in plans if p.label == label] for label in labels}
        name = sections(plans[0].recipe).name
        md = write_report(groups, baseline, out_dir, title=f"{name}: {', '.join(labels)}", seeds=seeds)
        print(f"\nreport: {md}  (plots: {out_dir}/curves.png, densities.png, profiles.png)")
        return md
    finally:
        if lock is not None:
            lock.release()

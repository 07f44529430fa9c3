"""The ``multidiff`` command line (DESIGN §8).

Bad input is one line on stderr (``multidiff: error: ...``) and exit status 2, never a traceback;
an existing run directory is never overwritten unless --resume or --overwrite says so.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

from .errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"multidiff: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("multidiff: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="multidiff", description="Continuous diffusion with training noise learned per domain.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"multidiff {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a recipe (optionally against the EDM baseline)")
    t.add_argument("recipe", help="recipe YAML file")
    t.add_argument("--schedule", help="schedule name (see `multidiff schedule list`) or a schedule file .json")
    t.add_argument("--compare-to", metavar="SCHEDULE", help="also train this schedule (e.g. edm) under the same seed and budget, and compare")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value, e.g. train.lr=1e-3 or schedule.warmup=200")
    t.add_argument("--max-steps", type=int)
    t.add_argument("--out", help="run directory (default runs/NAME-SCHEDULE)")
    t.add_argument("--seed", type=int)
    t.add_argument("--accelerator", choices=["cpu", "gpu", "cuda", "mps", "auto"])
    t.add_argument("--devices", help="number of devices (or 'auto')")
    t.add_argument("--precision", help="Lightning precision, e.g. 32-true, bf16-mixed")
    mode = t.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue an existing run from its last checkpoint")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate samples from a run")
    s.add_argument("run_dir")
    s.add_argument("--n", type=int)
    s.add_argument("--steps", type=int)
    s.add_argument("--sigmas", help="karras | loguniform | learned | FILE.json")
    s.add_argument("--sampler", choices=["heun", "euler"])
    s.add_argument("--seed", type=int)
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="evaluate a run: NELBO and sample metrics → eval.json")
    e.add_argument("run_dir")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("compare", help="train several schedules under the same seeds, budget, model and evaluation; write report.md")
    c.add_argument("recipe", help="recipe YAML file")
    c.add_argument("--schedules", required=True, help="comma-separated schedule names or files, e.g. edm,infonoise,crs")
    c.add_argument("--max-steps", type=int, help="training steps of every run (default: the recipe's)")
    c.add_argument("--seeds", type=int, default=1, help="seeds per schedule: the recipe's seed, +1, ... (default 1)")
    c.add_argument("--baseline", help="schedule whose final NELBO the others race to (default: edm if listed, else the first)")
    c.add_argument("--out", help="output directory (default runs/NAME-compare); runs go to OUT/SCHEDULE/seedS")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value for every run; schedule.KEY=V applies to the schedules with parameter KEY")  # fmt: skip
    c.add_argument("--accelerator", choices=["cpu", "gpu", "cuda", "mps", "auto"])
    c.add_argument("--devices", help="number of devices (or 'auto')")
    c.add_argument("--precision", help="Lightning precision, e.g. 32-true, bf16-mixed")
    c.set_defaults(func=cmd_compare)

    sc = sub.add_parser("schedule", help="list, show, export schedules")
    ssub = sc.add_subparsers(dest="schedule_command", required=True, parser_class=_Parser)
    ls = ssub.add_parser("list", help="schedule names with their parameters and defaults")
    ls.set_defaults(func=cmd_schedule_list)
    sh = ssub.add_parser("show", help="summarize a schedule file and plot it against EDM's density")
    sh.add_argument("file")
    sh.add_argument("-o", "--output", help="PNG path (default: next to the file)")
    sh.set_defaults(func=cmd_schedule_show)
    ex = ssub.add_parser("export", help="copy a run's learned schedule to a file")
    ex.add_argument("run_dir")
    ex.add_argument("-o", "--output", required=True)
    ex.add_argument("--overwrite", action="store_true")
    ex.set_defaults(func=cmd_schedule_export)
    sg = ssub.add_parser("sigmas", help="print a sampling σ list (for k-diffusion / diffusers) from a schedule file")
    sg.add_argument("file")
    sg.add_argument("--steps", type=int, default=32)
    sg.set_defaults(func=cmd_schedule_sigmas)
    return p


# ---- train ----------------------------------------------------------------------------------------


def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.set)
    for flag, key in (("max_steps", "train.max_steps"), ("seed", "seed"), ("accelerator", "train.accelerator"),
                      ("devices", "train.devices"), ("precision", "train.precision")):  # fmt: skip
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{key}={value}")
    return out


def _is_launched_worker() -> bool:
    """True in the extra processes of a multi-process run (Lightning's DDP launcher re-runs this
    command with LOCAL_RANK set; torchrun/SLURM set RANK/SLURM_PROCID). Only the primary process
    checks, replaces or creates the run directory."""
    import os

    return any(os.environ.get(k, "0") not in ("", "0") for k in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


def _check_run_dir(path: Path, resume: bool, overwrite: bool) -> None:
    exists = path.exists() and any(path.iterdir()) if path.is_dir() else path.exists()
    if exists and not (resume or overwrite):
        raise UserError(f"run directory {path} already exists; pass --resume to continue it, --overwrite to replace it, or --out DIR")
    if resume and not exists:
        raise UserError(f"nothing to resume: {path} does not exist")


def _resume_differences(stored: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys whose values differ, except those a resumed run may change."""
    allowed = {"train.max_steps", "train.accelerator", "train.devices", "train.precision", "train.progress_bar"}

    def flat(d: dict, prefix: str = "") -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            out.update(flat(v, key + ".") if isinstance(v, dict) else {key: v})
        return out

    a, b = flat(stored), flat(new)
    return sorted(k for k in set(a) | set(b) if k not in allowed and a.get(k) != b.get(k))


def cmd_train(args: argparse.Namespace) -> int:
    from .recipe import load_recipe_file, parse_yaml, resolve, select_schedule
    from .report.compare import write_comparison
    from .train.run import build, check_device_settings, schedule_label

    raw = load_recipe_file(args.recipe)
    if args.schedule:
        raw = select_schedule(raw, args.schedule)
    overrides = _overrides(args)
    recipe = resolve(raw, args.recipe, overrides)
    label = schedule_label(recipe)
    plans: list[tuple[str, dict[str, Any], Path]] = []
    if args.compare_to:
        base_raw = select_schedule(raw, args.compare_to)
        base = resolve(base_raw, args.recipe, [o for o in overrides if not o.startswith("schedule.")])
        base_label = schedule_label(base)
        if base_label == label:
            raise UserError(f"--compare-to {args.compare_to}: the recipe already trains {label}; pick another schedule")
        out = Path(args.out or f"runs/{recipe['name']}-{label}-vs-{base_label}")
        plans = [(label, recipe, out / label), (base_label, base, out / base_label)]
    else:
        out = Path(args.out or f"runs/{recipe['name']}-{label}")
        plans = [(label, recipe, out)]
    primary = not _is_launched_worker()
    if primary:
        _check_run_dir(out, args.resume, args.overwrite)
        check_device_settings(recipe)
    # validates data, schedule and model before anything is written; a resumed run reuses its artifacts
    setups = [build(r, d if args.resume and (d / "recipe.yaml").is_file() else None) for _, r, d in plans]
    for (lbl, _, run_dir), setup in zip(plans, setups):
        if primary and args.resume and (run_dir / "recipe.yaml").is_file():
            stored = parse_yaml((run_dir / "recipe.yaml").read_text())
            diff = _resume_differences(stored, setup.recipe)
            if diff:
                raise UserError(f"--resume: {run_dir}/recipe.yaml differs at '{diff[0]}'; resume with the run's own recipe and flags")
    if primary and args.overwrite and out.exists():
        shutil.rmtree(out)
    for (lbl, _, run_dir), setup in zip(plans, setups):
        _train_one(setup, run_dir, resume=args.resume and (run_dir / "checkpoints" / "last.ckpt").is_file(), primary=primary)
    if args.compare_to and primary:
        md = write_comparison({p[0]: p[2] for p in plans}, plans[1][0], out, title=f"{recipe['name']}: {label} vs {plans[1][0]}")
        print(f"comparison: {md}  (plot: {md.with_suffix('.png')})")
    return 0


def _train_one(setup: Any, run_dir: Path, resume: bool, primary: bool = True) -> None:
    from .report.plots import density_peak, plot_curves, plot_schedule
    from .report.compare import nelbo_curve
    from .schedules.io import load_schedule_file
    from .train.run import LoadedRun, evaluate, fit, write_recipe

    if primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_recipe(run_dir, setup.recipe)
        setup.domain.save_artifacts(setup.data, run_dir)
    module, trainer = fit(setup, run_dir, resume=resume)
    if not trainer.is_global_zero:
        return
    run = LoadedRun(run_dir, setup, module.eval(), int(trainer.global_step))
    result = evaluate(run)
    table = load_schedule_file(run_dir / "schedule.json").table
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    plot_schedule(table, plots / "schedule.png", title=f"{run_dir.name}: training density")
    steps, values = nelbo_curve(run_dir)
    plot_curves({run_dir.name: (steps, values)}, plots / "nelbo.png", f"validation NELBO ({result['nelbo_unit']})")
    extra = "".join(f" · {label} {value:.4g}" for label, value in result.get("headline", {}).items())
    print(f"\nrun {run_dir}: step {result['step']} · NELBO {result['nelbo']:.4f} {result['nelbo_unit']}{extra} "
          f"· training density peaks at σ={density_peak(table):.3g}")  # fmt: skip
    print(f"  samples {run_dir / result['samples'][0]} · schedule {run_dir / 'schedule.json'} · plots {plots}/")


# ---- compare ---------------------------------------------------------------------------------------


def cmd_compare(args: argparse.Namespace) -> int:
    from .recipe import load_recipe_file, resolve
    from .report.compare_report import write_report
    from .train.compare_runs import finished, parse_schedules, plan_runs, recipe_mismatch, trained_steps
    from .train.run import build

    if args.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {args.seeds}")
    raw = load_recipe_file(args.recipe)
    names = parse_schedules(args.schedules)
    overrides = _overrides(args)
    recipe = resolve(raw, args.recipe, [o for o in overrides if not o.strip().startswith("schedule.")])
    seeds = [int(recipe["seed"]) + i for i in range(args.seeds)]
    out = Path(args.out or f"runs/{recipe['name']}-compare")
    if (out / "recipe.yaml").is_file():
        raise UserError(f"--out {out} is a training run directory; pick another directory for the comparison")
    plans = plan_runs(raw, args.recipe, names, seeds, overrides, out)
    labels = list(dict.fromkeys(p.label for p in plans))
    baseline = args.baseline or ("edm" if "edm" in labels else labels[0])
    if baseline not in labels:
        raise UserError(f"--baseline {baseline}: not among the compared schedules ({', '.join(labels)})")
    primary = not _is_launched_worker()
    for plan in plans:  # refuse before training anything
        key = recipe_mismatch(plan)
        if key:
            raise UserError(f"{plan.run_dir} was trained with a different recipe (differs at '{key}'); "
                            f"use another --out or move it away")  # fmt: skip
        if plan.run_dir.exists() and not (plan.run_dir / "recipe.yaml").is_file() and any(plan.run_dir.iterdir()):
            raise UserError(f"{plan.run_dir} exists and is not a multidiff run; use another --out")
        done = trained_steps(plan)
        if done is not None and done > int(plan.recipe["train"]["max_steps"]):
            raise UserError(f"{plan.run_dir} was trained for {done} steps, more than --max-steps "
                            f"{plan.recipe['train']['max_steps']}; use another --out")  # fmt: skip
    for i, plan in enumerate(plans, 1):
        tag = f"[{i}/{len(plans)}] {plan.label} seed {plan.seed}"
        if finished(plan):
            if primary:
                print(f"{tag}: reusing {plan.run_dir} (finished at step {plan.recipe['train']['max_steps']})")
            continue
        resume = (plan.run_dir / "checkpoints" / "last.ckpt").is_file()
        if primary:
            print(f"{tag}: {'resuming' if resume else 'training'} → {plan.run_dir}", flush=True)
            if not resume and plan.run_dir.exists():
                shutil.rmtree(plan.run_dir)  # our own run that stopped before its first checkpoint
        setup = build(plan.recipe, plan.run_dir if resume else None)
        _train_one(setup, plan.run_dir, resume=resume, primary=primary)
    if primary:
        groups = {label: [p.run_dir for p in plans if p.label == label] for label in labels}
        md = write_report(groups, baseline, out, title=f"{recipe['name']}: {', '.join(labels)}", seeds=seeds)
        print(f"\nreport: {md}  (plots: {out}/curves.png, densities.png, profiles.png)")
    return 0


# ---- sample / eval ---------------------------------------------------------------------------------


def cmd_sample(args: argparse.Namespace) -> int:
    from .train.run import device_for_inference, generate, load_run, sampling_sigmas

    run = load_run(Path(args.run_dir))
    s = run.setup.recipe["sample"]
    n, steps = args.n or int(s["n"]), args.steps or int(s["steps"])
    kind, seed, sampler = args.sigmas or str(s["sigmas"]), args.seed if args.seed is not None else int(s["seed"]), args.sampler or str(s["sampler"])
    if n <= 0 or steps <= 0:
        raise UserError("--n and --steps must be positive")
    sigmas = sampling_sigmas(run, kind, steps)
    device = device_for_inference()
    model = run.module.model.to(device)
    x = generate(model, run.setup.domain.example_shape(run.setup.data), n, sigmas, sampler=sampler, seed=seed,
                 batch=int(s["batch"]), churn=float(s["churn"]), device=device)  # fmt: skip
    tag = f"{Path(kind).stem if kind.endswith('.json') else kind}-{sampler}{steps}-seed{seed}"
    files = run.setup.domain.write_samples(model.decode(x.to(device)).cpu(), run.run_dir / "samples", tag)
    for f in files:
        print(f)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .train.run import evaluate, load_run

    run = load_run(Path(args.run_dir))
    result = evaluate(run)
    print(json.dumps({k: v for k, v in result.items() if k not in ("classifier",)}, indent=1))
    print(f"wrote {run.run_dir / 'eval.json'}")
    return 0


# ---- schedule ------------------------------------------------------------------------------------


def cmd_schedule_list(args: argparse.Namespace) -> int:
    from .schedules.registry import REGISTRY, param_defaults

    for name, spec in REGISTRY.items():
        print(f"{name:12s} {spec.summary}")
        for key, value in param_defaults(name).items():
            print(f"    {key} = {value}")
    print("PATH.json    a schedule file exported earlier, used frozen")
    return 0


def cmd_schedule_show(args: argparse.Namespace) -> int:
    import numpy as np

    from .report.plots import density_peak, plot_schedule
    from .schedules.io import load_schedule_file

    loaded = load_schedule_file(args.file)
    t, meta = loaded.table, loaded.meta
    u, cdf = np.asarray(t.u), np.asarray(t.cdf)
    quant = {q: float(np.exp(np.interp(q, cdf, u))) for q in (0.05, 0.5, 0.95)}
    print(f"{args.file}: method {t.method}, domain {meta.get('domain')}, dataset {meta.get('dataset')}, step {t.step}")
    print(f"  σ range [{t.sigma_min:g}, {t.sigma_max:g}], σ_data {meta.get('sigma_data')}, weighting {meta.get('weighting')}")
    print(f"  density peaks at σ = {density_peak(t):.4g}; σ quantiles 5% {quant[0.05]:.4g} · 50% {quant[0.5]:.4g} · 95% {quant[0.95]:.4g}")
    if t.gate:
        print(f"  gate: c = {t.gate.get('c', float('nan')):.4g} ({t.gate.get('rule', '?')}), n = {t.gate.get('n')}")
    out = Path(args.output) if args.output else Path(args.file).with_suffix(".png")
    try:
        plot_schedule(t, out)
    except OSError as exc:
        raise UserError(f"cannot write {out} ({exc.strerror}); pass -o PATH.png") from None
    print(f"  plot: {out}")
    return 0


def cmd_schedule_export(args: argparse.Namespace) -> int:
    from .schedules.io import load_schedule_file

    src = Path(args.run_dir) / "schedule.json"
    if not src.is_file():
        raise UserError(f"{args.run_dir} has no schedule.json (is it a multidiff run directory?)")
    load_schedule_file(src)  # validate before copying
    dst = Path(args.output)
    if dst.exists() and not args.overwrite:
        raise UserError(f"{dst} already exists; pass --overwrite to replace it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    print(f"exported {src} → {dst}")
    return 0


def cmd_schedule_sigmas(args: argparse.Namespace) -> int:
    from .diffusion.sampling import from_schedule

    if args.steps <= 0:
        raise UserError("--steps must be positive")
    sigmas = from_schedule(args.file, args.steps)
    print(json.dumps([float(f"{s:.6g}") for s in sigmas.tolist()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

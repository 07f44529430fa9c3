"""The ``multidiff`` command line: it parses arguments and calls the pipeline (``multidiff.pipeline``).

Bad input is one line on stderr (``multidiff: error: ...``, whether argparse or the pipeline found
it) and exit status 2, never a traceback; an existing run directory is never overwritten unless
--resume or --overwrite says so. ``--help`` shows every flag with its default.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn, Optional

from .errors import Terminated, UserError
from .rundir import RunDir

MAX_SEEDS = 100  # a comparison trains every schedule this many times
ACCELERATORS = ["cpu", "gpu", "cuda", "mps", "auto"]


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsShown)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # one line, status 2, the same prefix as every other error
        command = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        self.exit(2, f"multidiff: error: {message}{f' (see multidiff {command} --help)' if command else ''}\n")


class _DefaultsShown(argparse.HelpFormatter):
    """Help that states each flag's default where it has one (argparse's own formatter also prints
    "default: None" for flags whose absence means "the recipe's value")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default in (None, False, [], argparse.SUPPRESS) or action.option_strings == []:
            return text
        return f"{text} (default: {default})"


def parse_seeds(text: str, recipe_seed: int) -> list[int]:
    """``--seeds``: a count K (the recipe's seed, +1, ..., +K−1) or a comma-separated list of seeds."""
    from .recipe import MAX_SEED

    parts = [p.strip() for p in str(text).split(",")]
    if not all(p.isdigit() for p in parts):
        raise UserError(f"--seeds {text!r}: give a count (3) or a comma-separated list of seeds (0,1,2)")
    if len(parts) == 1:
        count = int(parts[0])
        if not 1 <= count <= MAX_SEEDS:
            raise UserError(f"--seeds must be a count between 1 and {MAX_SEEDS} (or a list of seeds), got {count}")
        seeds = [recipe_seed + i for i in range(count)]
    else:
        seeds = [int(p) for p in parts]
        if len(set(seeds)) != len(seeds):
            raise UserError(f"--seeds {text}: a seed is listed twice")
        if len(seeds) > MAX_SEEDS:
            raise UserError(f"--seeds lists {len(seeds)} seeds; at most {MAX_SEEDS}")
    bad = [s for s in seeds if s > MAX_SEED]
    if bad:
        raise UserError(f"--seeds: seed {bad[0]} is above {MAX_SEED}")
    return seeds


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that closed the pipe early shows here, inside the handler below
        return status
    except BrokenPipeError:  # `multidiff schedule list | head`: the reader has what it wanted
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away
    except UserError as exc:
        print(f"multidiff: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"multidiff: error: {_OUT_OF_MEMORY}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # torch reports a failed allocation as a RuntimeError (OutOfMemoryError on GPUs)
        if not _is_out_of_memory(exc):
            raise
        print(f"multidiff: error: {_OUT_OF_MEMORY} ({str(exc).splitlines()[0][:120]})", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the user chose cannot be read or written (read-only, full disk, ...)
        where = f" {exc.filename}" if exc.filename else ""
        print(f"multidiff: error: cannot access{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # a package of an extra that was not installed
        print(f"multidiff: error: {missing_package(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("multidiff: interrupted", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"multidiff: terminated: {exc}", file=sys.stderr)
        return 143


#: the package a ModuleNotFoundError names → the pip extra that installs it
EXTRAS = {"lightning": "train", "yaml": "train", "matplotlib": "train", "sklearn": "train", "filelock": "train",
          "tokenizers": "text", "datasets": "text", "torchaudio": "audio", "soundfile": "audio", "diffusers": "latent"}  # fmt: skip


def missing_package(exc: ModuleNotFoundError) -> str:
    """One line naming what to install for a package that is not there (re-raised if it is none of ours)."""
    top = (exc.name or "").split(".")[0]
    if top not in EXTRAS:
        raise exc
    return f"this needs the {top} package, which is not installed: pip install 'multidiff[{EXTRAS[top]}]'"


_OUT_OF_MEMORY = "out of memory: lower train.batch_size, eval.nelbo_batch or sample.batch (--set KEY=VALUE)"


def _is_out_of_memory(exc: RuntimeError) -> bool:
    text = str(exc).lower()
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text or "can't allocate memory" in text


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again on the closed pipe."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="multidiff", description="Continuous diffusion with training noise learned per domain.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"multidiff {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a recipe (optionally against the EDM baseline)")
    t.add_argument("recipe", help="recipe YAML file")
    t.add_argument("--schedule", help="schedule name (see `multidiff schedule list`) or a schedule file .json")
    t.add_argument("--baseline", metavar="SCHEDULE",
                   help="also train this schedule (e.g. edm) under the same seed and budget, and compare against it")
    t.add_argument("--compare-to", dest="compare_to", metavar="SCHEDULE", help=argparse.SUPPRESS)  # the old name of --baseline
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value, e.g. train.lr=1e-3 or schedule.warmup=200")
    t.add_argument("--max-steps", type=int, metavar="N", help="training steps (train.max_steps; default: the recipe's)")
    t.add_argument("--out", help="run directory (default: runs/NAME-SCHEDULE)")
    t.add_argument("--seed", type=int, metavar="S", help="the run's seed: initial weights, data order, σ's and noise (default: the recipe's)")
    t.add_argument("--accelerator", choices=ACCELERATORS, help="train.accelerator (default: the recipe's)")
    t.add_argument("--devices", help="number of devices, or 'auto' (train.devices; default: the recipe's)")
    t.add_argument("--precision", help="Lightning precision, e.g. 32-true, bf16-mixed (train.precision; default: the recipe's)")
    t.add_argument("--print-recipe", action="store_true",
                   help="check the recipe, its data and model, print the resolved recipe and exit (nothing is written)")
    mode = t.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue an existing run from its last checkpoint")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate samples from a run")
    s.add_argument("run_dir", help="a run directory (trained by `multidiff train` or `compare`)")
    s.add_argument("--n", type=int, help="number of samples (default: the recipe's sample.n)")
    s.add_argument("--steps", type=int, help="sampler steps (default: the recipe's sample.steps)")
    s.add_argument("--sigmas", help="the σ grid: karras | loguniform | learned | FILE.json (default: the recipe's sample.sigmas)")
    s.add_argument("--sampler", choices=["heun", "euler"], help="default: the recipe's sample.sampler")
    s.add_argument("--seed", type=int, help="the sampler's seed (default: the recipe's sample.seed)")
    s.add_argument("--given", action="append", default=[], metavar="MODALITY=heldout|FILE",
                   help="joint runs: hold a modality fixed (held-out examples or a file) and generate the others")
    s.add_argument("--only", metavar="MODALITY", help="joint runs: generate one modality alone (the others at σ_max)")
    s.add_argument("--guidance", type=float, metavar="W",
                   help="with --given: classifier-free guidance against the model's marginal (1: none; default: the recipe's sample.guidance)")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="evaluate a run: NELBO and sample metrics → eval.json")
    e.add_argument("run_dir", help="a run directory; eval.json is written again from its last checkpoint")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("compare", help="train several schedules under the same seeds, budget, model and evaluation; write report.md")
    c.add_argument("recipe", help="recipe YAML file")
    c.add_argument("--schedules", required=True, help="comma-separated schedule names or files, e.g. edm,infonoise,crs")
    c.add_argument("--max-steps", type=int, metavar="N", help="training steps of every run (default: the recipe's)")
    c.add_argument("--seeds", default="1", metavar="K|S,S,...",
                   help="a count K (the recipe's seed, +1, ..., +K-1) or a comma-separated list of seeds, e.g. 0,1,2")
    c.add_argument("--baseline", help="schedule whose final NELBO the others race to (default: edm if listed, else the first)")
    c.add_argument("--out", help="output directory (default: runs/NAME-compare); runs go to OUT/SCHEDULE/seedS")
    c.add_argument("--runs", help="where the runs live (RUNS/SCHEDULE/seedS; default OUT): several reports can share them")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value for every run; schedule.KEY=V applies to the schedules with parameter KEY")  # fmt: skip
    c.add_argument("--accelerator", choices=ACCELERATORS, help="train.accelerator (default: the recipe's)")
    c.add_argument("--devices", help="number of devices, or 'auto' (train.devices; default: the recipe's)")
    c.add_argument("--precision", help="Lightning precision, e.g. 32-true, bf16-mixed (train.precision; default: the recipe's)")
    c.add_argument("--overwrite", action="store_true", help="retrain every run instead of reusing or resuming them")
    c.set_defaults(func=cmd_compare)

    sc = sub.add_parser("schedule", help="list, show, export schedules")
    ssub = sc.add_subparsers(dest="schedule_command", required=True, parser_class=_Parser)
    ls = ssub.add_parser("list", help="schedule names with their parameters and defaults")
    ls.set_defaults(func=cmd_schedule_list)
    sh = ssub.add_parser("show", help="summarize a schedule file and plot it against EDM's density")
    sh.add_argument("file", help="a schedule file (.json)")
    sh.add_argument("-o", "--output", help="PNG path (default: next to the file)")
    sh.set_defaults(func=cmd_schedule_show)
    ex = ssub.add_parser("export", help="copy a run's learned schedule to a file")
    ex.add_argument("run_dir", help="a run directory")
    ex.add_argument("-o", "--output", required=True, help="where to write the schedule file (.json)")
    ex.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    ex.set_defaults(func=cmd_schedule_export)
    sg = ssub.add_parser("sigmas", help="print a sampling σ list (for k-diffusion / diffusers) from a schedule file")
    sg.add_argument("file", help="a schedule file (.json)")
    sg.add_argument("--steps", type=int, default=32, help="sampling steps K")
    sg.add_argument("--mix", type=float, help="share of EDM's rho-spacing mixed into the learned density (0: the learned density alone; default: the recipes' sample.grid_mix)")
    sg.add_argument("--rho", type=float, default=7.0, help="ρ of EDM's grid, the part mixed in")
    sg.add_argument("--format", default="k-diffusion", choices=SIGMA_FORMATS,
                    help="k-diffusion: the K+1 σ's (default); diffusers-euler: σ's for EulerDiscreteScheduler.set_timesteps(sigmas=...); "
                         "diffusers-heun: the 2K interleaved σ's HeunDiscreteScheduler steps through (its .sigmas); "
                         "diffusers-edm: K Karras-ramp positions for EDMEulerScheduler.set_timesteps(sigmas=torch.tensor(..., dtype=torch.float64))")  # fmt: skip
    sg.add_argument("--edm-sigma-min", type=float, default=0.002, help="diffusers-edm: the EDMEulerScheduler's sigma_min")
    sg.add_argument("--edm-sigma-max", type=float, default=80.0, help="diffusers-edm: the EDMEulerScheduler's sigma_max")
    sg.add_argument("--edm-rho", type=float, default=7.0, help="diffusers-edm: the EDMEulerScheduler's rho")
    sg.set_defaults(func=cmd_schedule_sigmas)
    return p


# ---- train / compare / sample / eval: parsing only; the pipeline does the work ------------------


def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.set)
    for flag, key in (("max_steps", "train.max_steps"), ("seed", "seed"), ("accelerator", "train.accelerator"),
                      ("devices", "train.devices"), ("precision", "train.precision")):  # fmt: skip
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{key}={value}")
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from .pipeline import train

    mode = "resume" if args.resume else "overwrite" if args.overwrite else "new"
    if args.compare_to is not None:
        if args.baseline is not None:
            raise UserError("--compare-to is the old name of --baseline: give one of them")
        print("multidiff: --compare-to is now --baseline (the old name still works for now)", file=sys.stderr)
    baseline = args.baseline if args.baseline is not None else args.compare_to
    if args.print_recipe:
        from .pipeline import resolved_recipe_text

        if baseline or args.resume or args.overwrite:
            raise UserError("--print-recipe shows the recipe of one new run: drop --baseline, --resume and --overwrite")
        print(resolved_recipe_text(args.recipe, schedule=args.schedule, overrides=_overrides(args)), end="")
        return 0
    train(args.recipe, schedule=args.schedule, overrides=_overrides(args), out=args.out, mode=mode, baseline=baseline)
    return 0




def cmd_compare(args: argparse.Namespace) -> int:
    from .pipeline import run_comparison
    from .plans import parse_schedules
    from .recipe import load_recipe_file, resolve, sections

    raw = load_recipe_file(args.recipe)
    overrides = _overrides(args)
    recipe = resolve(raw, args.recipe, [o for o in overrides if not o.strip().startswith("schedule.")])
    cfg = sections(recipe)
    seeds = parse_seeds(args.seeds, cfg.seed)
    run_comparison(raw, args.recipe, parse_schedules(args.schedules), seeds=seeds, overrides=overrides,
                   out=args.out or f"runs/{cfg.name}-compare", baseline=args.baseline, overwrite=args.overwrite,
                   runs=args.runs)  # fmt: skip
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .pipeline import sample_run

    for f in sample_run(Path(args.run_dir), args.n, args.steps, args.sigmas, args.sampler, args.seed, args.given, args.only,
                         args.guidance):
        print(f)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .pipeline import evaluate_existing

    result = evaluate_existing(Path(args.run_dir))
    print(json.dumps({k: v for k, v in result.items() if k not in ("classifier",)}, indent=1))
    print(f"wrote {RunDir(args.run_dir).eval_json}")
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
    out = _plot_path(Path(args.file), args.output)  # a bad -o fails before anything is printed
    t, meta = loaded.table, loaded.meta
    u, cdf = np.asarray(t.u), np.asarray(t.cdf)
    quant = {q: float(np.exp(np.interp(q, cdf, u))) for q in (0.05, 0.5, 0.95)}
    print(f"{args.file}: method {t.method}, domain {meta.get('domain')}, dataset {meta.get('dataset')}, step {t.step}")
    print(f"  σ range [{t.sigma_min:g}, {t.sigma_max:g}], σ_data {meta.get('sigma_data')}, weighting {meta.get('weighting')}")
    print(f"  density peaks at σ = {density_peak(t):.4g}; σ quantiles 5% {quant[0.05]:.4g} · 50% {quant[0.5]:.4g} · 95% {quant[0.95]:.4g}")
    for note in t.notes:
        print(f"  {note}")
    try:
        plot_schedule(t, out)
    except OSError as exc:
        raise UserError(f"cannot write {out} ({exc.strerror}); pass -o PATH.png") from None
    print(f"  plot: {out}")
    return 0


def _plot_path(source: Path, output: Optional[str]) -> Path:
    """Where ``schedule show`` plots: -o, or SOURCE with .png for its suffix (SOURCE.png when the
    source itself ends in .png). Never the schedule file itself; a format matplotlib can write."""
    from .report.plots import check_plot_path

    out = Path(output) if output else source.with_suffix(".png")
    if out.suffix.lower() == ".png" and not output and out == source:
        out = source.with_name(source.name + ".png")
    if out.resolve() == source.resolve():
        raise UserError(f"-o {out}: that is the schedule file being shown; plot to another path")
    check_plot_path(out)
    return out


def cmd_schedule_export(args: argparse.Namespace) -> int:
    from .schedules.io import load_schedule_file

    src = RunDir(args.run_dir).schedule_file()
    if not src.is_file():
        raise UserError(f"{args.run_dir} has no schedule.json (is it a multidiff run directory?)")
    load_schedule_file(src)  # validate before copying
    dst = Path(args.output)
    if dst.exists() and not args.overwrite:
        raise UserError(f"{dst} already exists; pass --overwrite to replace it")
    from .files import atomic_write, user_path_error

    try:
        atomic_write(dst, lambda tmp: tmp.write_bytes(src.read_bytes()))
    except OSError as exc:
        raise user_path_error(exc, "write") from None
    print(f"exported {src} → {dst}")
    return 0


SIGMA_FORMATS = ("k-diffusion", "diffusers-euler", "diffusers-heun", "diffusers-edm")


def cmd_schedule_sigmas(args: argparse.Namespace) -> int:
    from . import interop
    from .schedules.grids import GRID_MIX, from_schedule

    if args.steps <= 0:
        raise UserError("--steps must be positive")
    mix = GRID_MIX if args.mix is None else args.mix
    if not 0 <= mix <= 1 or not args.rho > 0:
        raise UserError(f"--mix must be in [0, 1] and --rho positive, got {mix}, {args.rho}")
    sigmas = from_schedule(args.file, args.steps, mix, args.rho)
    if args.format == "k-diffusion":
        print(json.dumps([float(f"{s:.6g}") for s in sigmas.tolist()]))
        return 0
    if args.format == "diffusers-edm":
        if not 0 < args.edm_sigma_min < args.edm_sigma_max or not args.edm_rho > 0:
            raise UserError("--edm-sigma-min/--edm-sigma-max/--edm-rho need 0 < min < max and rho > 0")
        # full float64 digits: the scheduler maps the ramp back to the same float32 σ's
        print(json.dumps(interop.for_diffusers_edm(sigmas, args.edm_sigma_min, args.edm_sigma_max, args.edm_rho)))
        return 0
    convert = interop.for_diffusers_euler if args.format == "diffusers-euler" else interop.for_diffusers_heun
    print(json.dumps([float(f"{s:.9g}") for s in convert(sigmas)]))  # 9 digits: float32 σ's exactly
    return 0


if __name__ == "__main__":
    sys.exit(main())

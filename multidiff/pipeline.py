"""One pipeline for ``train``, ``compare``, ``eval`` and ``sample``: prepare → fit → evaluate → report.

- :func:`prepare` turns a resolved recipe into a :class:`Setup` (data, σ_data, schedule, model and
  the domain's sample metric), validating everything a run needs before anything is written;
- :func:`train_run` makes one run directory: lock, write the recipe and the domain's artifacts,
  fit (``train/``, Lightning), then :func:`evaluate_run` from the saved EMA weights;
- :func:`run_comparison` trains several schedules × seeds and writes one report.

A run directory: ``recipe.yaml`` (resolved), ``checkpoints/``, ``metrics.csv``, ``schedule.json``,
``schedule_history/``, ``plots/``, ``samples/``, ``eval.json``, ``timing.json``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from . import __version__, faults
from .diffusion.sampling import sigma_grid
from .diffusion.weighting import get_weighting
from .domains.base import Domain, DomainData
from .domains.registry import get_domain
from .errors import UserError
from .evaluation import NelboSettings, QualityResult, bits, sample_quality, validation_nelbo
from .files import RunLock, atomic_write_text, clear_directory, has_content, user_path_error
from .metrics.features import cache_root
from .plans import RunPlan, finished, plan_runs, reuse_problem
from .recipe import (
    RESUMABLE_KEYS,
    Sections,
    differences,
    dump,
    flatten,
    load_recipe_file,
    read_text,
    resolve,
    schedule_specs,
    sections,
    select_schedule,
)
from .runfiles import read_step_rows, snapshot_step
from .schedules.base import Schedule, ScheduleContext
from .schedules.io import load_schedule_file
from .schedules.registry import REGISTRY, build_schedule, is_schedule_file, make_params
from .textdata import parse_json

CHECKPOINT = "last.ckpt"


# ---- prepare ---------------------------------------------------------------------------------------


@dataclass
class Setup:
    """Everything a run is made of, built from a resolved recipe."""

    recipe: dict[str, Any]  # fully resolved: what recipe.yaml records
    cfg: Sections
    domain: Domain
    data: DomainData
    sigma_data: float
    weight: Callable[[Tensor], Tensor]
    schedule: Schedule
    model: Any  # DiffusionModel

    def meta(self, key: str = "") -> dict[str, Any]:
        """What a schedule file records about where it was learned (``key``: a joint model's modality)."""
        sigma_data = self.sigma_data[key] if isinstance(self.sigma_data, dict) else self.sigma_data
        return {"domain": self.domain.modality_domain(key), "dataset": self.data.dataset, "sigma_data": sigma_data,
                "weighting": self.cfg.diffusion.weighting}  # fmt: skip

    @property
    def nelbo(self) -> NelboSettings:
        return NelboSettings.of(self.cfg)

    def nelbo_units(self) -> dict[str, float]:
        """The domain's NELBO units → units per example on the fixed validation subset (primary first)."""
        n = min(self.cfg.eval.nelbo_examples, self.data.val.shape[0])
        units = self.domain.nelbo_units(self.data, n)
        primary = self.domain.nelbo_unit
        return {primary: units.get(primary, float(self.domain.nelbo_count(self.data))), **units}

    def example_shape(self) -> tuple[int, ...]:
        return self.domain.example_shape(self.data)


def schedule_label(recipe: dict[str, Any]) -> str:
    """A run's schedule in a word: its name (a file's stem); a joint model's members' common name,
    or ``modality=name`` pairs when they differ."""
    labels = {key: _name_label(spec["name"]) for key, spec in schedule_specs(recipe).items()}
    if len(set(labels.values())) == 1:
        return next(iter(labels.values()))
    return ",".join(f"{k}={v}" for k, v in labels.items())


def _name_label(name: str) -> str:
    return Path(name).stem if is_schedule_file(name) and name not in REGISTRY else name


def default_precision(accelerator: str) -> str:
    """``train.precision: auto``: bf16 autocast where a GPU supports it, float32 elsewhere (on CPUs
    without bf16 matrix units bf16 is far slower than float32)."""
    wants_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if wants_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"


def resolve_full(recipe: dict[str, Any]) -> tuple[dict[str, Any], Domain]:
    """The recipe with every default filled in that does not need the data (domain settings,
    schedule parameters, the NELBO's decoding σ, the precision), and the domain adapter."""
    domain = get_domain(recipe["domain"])(recipe, cache_root())
    resolved = {**recipe, **domain.resolved_config()}
    specs = schedule_specs(recipe)
    modalities = domain.modalities()
    if list(specs) != (modalities or [""]):
        want = "schedule.name" if not modalities else ", ".join(f"schedule.{m}.name" for m in modalities)
        raise UserError(f"recipe: domain '{domain.name}' needs {want}; got schedules for {', '.join(k or 'one model' for k in specs)}")
    full = {}
    for key, spec in specs.items():
        name = spec["name"]
        if name in REGISTRY:
            params = make_params(name, {k: v for k, v in spec.items() if k != "name"})
            spec = {"name": name, **dataclasses.asdict(params)}
        full[key] = spec
    resolved["schedule"] = full[""] if "" in full else full
    d, ev = recipe["diffusion"], recipe["eval"]
    lo = ev["nelbo_sigma_min"] or domain.nelbo_sigma_min or d["sigma_min"]
    if not d["sigma_min"] <= lo < d["sigma_max"]:
        raise UserError(f"eval.nelbo_sigma_min must lie in [diffusion.sigma_min, diffusion.sigma_max), got {lo}")
    resolved["eval"] = {**ev, "nelbo_sigma_min": float(lo)}
    if recipe["sample"]["guidance"] != 1 and not domain.conditional_sampling:
        raise UserError(f"sample.guidance applies to conditional samples of a joint model; domain '{domain.name}' generates whole examples (leave it at 1)")
    train = recipe["train"]
    if train["precision"] == "auto":
        resolved["train"] = {**train, "precision": default_precision(str(train["accelerator"]))}
    return resolved, domain


def known_defaults(domain: Domain, recipe: dict[str, Any]) -> dict[str, Any]:
    """Dotted key → default for the domain's data/model settings and the schedule's parameters."""
    from .recipe import flatten
    from .schedules.registry import param_defaults

    sched = {key: param_defaults(spec["name"]) for key, spec in schedule_specs(recipe).items() if spec["name"] in REGISTRY}
    out = {"data": domain.data_defaults, "model": domain.model_defaults}
    if sched:
        out["schedule"] = sched[""] if "" in sched else sched
    return flatten(out)


def prepare(recipe: dict[str, Any], run_dir: Optional[Path] = None, *, metrics: bool = True) -> Setup:
    """Load data, measure σ_data, build schedule, model and the sample metric; ``Setup.recipe`` is the
    fully resolved recipe. ``run_dir``: an existing run whose saved artifacts (tokenizer,
    statistics, its frozen schedule file) are reused. Nothing is written."""
    resolved, domain = resolve_full(recipe)
    data = domain.load(run_dir)
    d = resolved["diffusion"]
    sigma_data = d["sigma_data"] or domain.measure_sigma_data(data)  # a number, or one per modality
    sigma_data = {k: float(v) for k, v in sigma_data.items()} if isinstance(sigma_data, dict) else float(sigma_data)
    resolved["diffusion"] = {**d, "sigma_data": sigma_data}
    schedule, weight = _build_schedules(resolved, sigma_data, run_dir)
    torch.manual_seed(int(resolved["seed"]))  # the same initial weights for every schedule
    model = domain.build_model(data, sigma_data)
    setup = Setup(resolved, sections(resolved), domain, data, sigma_data, weight, schedule, model)
    sampling_grid(setup, setup.cfg.sample.sigmas, setup.cfg.sample.steps)  # a bad sample.sigmas fails now
    if metrics:
        domain.prepare_metrics(data)
    return setup


def _build_schedules(resolved: dict[str, Any], sigma_data: Any, run_dir: Optional[Path]) -> tuple[Schedule, Any]:
    """The run's schedule (a group of one per modality for a joint domain) and its loss weight(s)."""
    from .schedules.group import ScheduleGroup

    d = resolved["diffusion"]
    built, weights = {}, {}
    for key, spec in schedule_specs(resolved).items():
        sd = sigma_data[key] if isinstance(sigma_data, dict) else sigma_data
        weights[key] = get_weighting(d["weighting"], sd)
        ctx = ScheduleContext(float(d["sigma_min"]), float(d["sigma_max"]), sd, weights[key], d["weighting"])
        spec = dict(spec)
        name = spec.pop("name")
        if run_dir is not None and is_schedule_file(name) and name not in REGISTRY and not Path(name).is_file():
            name = str(Path(run_dir) / schedule_file_name(key))  # a frozen file run keeps its own exported copy
        built[key] = build_schedule(name, spec, ctx)
    if "" in built:
        return built[""], weights[""]
    try:
        return ScheduleGroup(built), weights
    except ValueError as exc:
        raise UserError(f"schedule: {exc}") from None


def schedule_file_name(key: str) -> str:
    """schedule.json for a single schedule, schedule.<modality>.json for a joint model's members."""
    return f"schedule.{key}.json" if key else "schedule.json"


def schedule_files(run_dir: Path) -> dict[str, Path]:
    """A run's exported schedule files by member ("" for a single schedule)."""
    run_dir = Path(run_dir)
    if (run_dir / "schedule.json").is_file():
        return {"": run_dir / "schedule.json"}
    return {p.name[len("schedule."):-len(".json")]: p for p in sorted(run_dir.glob("schedule.*.json"))}


def sampling_grid(setup: Setup, kind: str, steps: int) -> Tensor:
    """The sampling σ's (σ, then a final 0): karras | loguniform | learned | a schedule file."""
    d, s = setup.cfg.diffusion, setup.cfg.sample
    if kind == "learned" and len(setup.schedule.tables()) > 1:
        raise UserError("sample.sigmas learned: a joint model samples every modality on one grid; choose karras or loguniform")
    if kind in ("karras", "loguniform", "learned"):
        return sigma_grid(kind, steps, d.sigma_min, d.sigma_max, s.rho, schedule=setup.schedule, mix=s.grid_mix)
    if not is_schedule_file(kind):
        raise UserError(f"--sigmas {kind!r}: choose karras, loguniform, learned or a schedule file (.json)")
    table = load_schedule_file(kind).table
    if not (math.isclose(table.sigma_min, d.sigma_min, rel_tol=1e-6) and math.isclose(table.sigma_max, d.sigma_max, rel_tol=1e-6)):
        raise UserError(f"schedule file {kind} covers σ in [{table.sigma_min:g}, {table.sigma_max:g}] but the run samples "
                        f"[{d.sigma_min:g}, {d.sigma_max:g}]; use a file learned on the same σ range")  # fmt: skip
    return sigma_grid("learned", steps, d.sigma_min, d.sigma_max, s.rho, schedule=table, mix=s.grid_mix)


def device_for_inference() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def quality(setup: Setup, model: Any, device: torch.device, seed: Optional[int] = None, count: Optional[int] = None) -> QualityResult:
    """The domain's sample metric on ``count`` (default ``eval.quality_samples``) samples of the
    recipe's fixed sampler (and the metrics that need the model itself, e.g. a joint model's
    conditional accuracy, on as many)."""
    s = setup.cfg.sample
    sigmas = sampling_grid(setup, s.sigmas, s.steps)
    n = count or setup.cfg.eval.quality_samples
    result = sample_quality(model, setup.cfg, setup.example_shape(), sigmas, lambda x: setup.domain.sample_metrics(x, setup.data),
                            seed=seed, count=n, device=device)  # fmt: skip

    def sample(count: int, condition: Any) -> Tensor:
        return _decoded_samples(setup, model, count, device, seed=s.seed if seed is None else seed, condition=condition)

    was_training = model.training
    model.eval()
    try:
        result.metrics.update(setup.domain.model_metrics(model, sample, setup.data, n, guidance=s.guidance))
    finally:
        model.train(was_training)
    return result


def tracked_values(setup: Setup, metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics the domain tracks during training, as plain floats."""
    return {k: float(metrics[k]) for k in setup.domain.quality_metrics if k in metrics}


# ---- evaluating a run -------------------------------------------------------------------------------


def read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path.parent.parent} has no checkpoint {path.name} yet (train it first, or --resume)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
            raise ValueError("not a multidiff checkpoint")
    except Exception as exc:  # truncated, corrupt or foreign file
        others = sorted(p.name for p in path.parent.glob("step*.ckpt"))
        hint = f"; copy an earlier one over it (e.g. {others[-1]})" if others else ""
        raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}){hint}") from None
    return ckpt


def load_weights(setup: Setup, path: Path) -> int:
    """Load a checkpoint's EMA weights (Lightning's weight averaging stores them as ``state_dict``)
    and the schedule's state into ``setup``; returns its step. A checkpoint trained under another
    recipe (an edited recipe.yaml) is refused rather than evaluated under the wrong schedule."""
    ckpt = read_checkpoint(path)
    check_checkpoint_recipe(setup, ckpt, path)
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        setup.model.load_state_dict(state)
        if "multidiff" in ckpt:
            setup.schedule.load_state_dict(ckpt["multidiff"]["schedule"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"checkpoint {path} does not fit the run's recipe ({str(exc).splitlines()[0][:160]})") from None
    return int(ckpt["global_step"])


#: what may differ between a checkpoint's recipe and the recipe that evaluates or samples it: what a
#: resume may change, and the evaluation and sampler settings (they do not touch the weights)
REEVALUABLE_KEYS = RESUMABLE_KEYS | {"eval", "sample"}


def check_checkpoint_recipe(setup: Setup, ckpt: dict[str, Any], path: Path, allowed: frozenset[str] = REEVALUABLE_KEYS) -> None:
    """Refuse a checkpoint whose recorded recipe (or, in checkpoints that predate the record, whose
    schedule state) does not match ``setup``'s."""
    saved = ckpt.get("multidiff") or {}
    recorded = saved.get("recipe")
    where = Path(path).parent.parent / "recipe.yaml"
    if isinstance(recorded, dict):
        diff = differences(recorded, setup.recipe, allowed, known_defaults(setup.domain, setup.recipe))
        if diff:
            key = next((k for k in diff if k.rsplit(".", 1)[-1] == "name"), diff[0])  # a changed name explains the rest
            was, now = flatten(recorded).get(key), flatten(setup.recipe).get(key)
            raise UserError(f"{where} differs from the recipe checkpoint {path} was trained with at '{key}' (checkpoint: "
                            f"{was!r}, recipe.yaml: {now!r}); put the run's recipe back, or train a new run")  # fmt: skip
    elif "schedule" in saved and _state_shape(saved["schedule"]) != _state_shape(setup.schedule.state_dict()):
        raise UserError(f"checkpoint {path} holds the state of another schedule than {where} names "
                        f"({schedule_label(setup.recipe)}); put the run's recipe back, or train a new run")  # fmt: skip


def _state_shape(state: Any) -> Any:
    """The keys of a (nested) schedule state: two schedules of one kind have the same shape."""
    return {k: _state_shape(v) for k, v in state.items()} if isinstance(state, dict) else None


def read_run_recipe(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "recipe.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a multidiff run directory (no recipe.yaml)")
    return resolve(load_recipe_file(path, what="run recipe"), str(path))


def load_run(run_dir: Path) -> tuple[Setup, int]:
    """A run's setup with its EMA weights and schedule state from ``checkpoints/last.ckpt``; its step."""
    run_dir = Path(run_dir)
    setup = prepare(read_run_recipe(run_dir), run_dir)
    return setup, load_weights(setup, run_dir / "checkpoints" / CHECKPOINT)


def evaluate_run(setup: Setup, run_dir: Path) -> dict[str, Any]:
    """Evaluate the run's saved EMA weights (exactly what ``multidiff eval`` does): the validation
    NELBO, the sample metric at ``sample.seed`` (the last point of the quality curve) and at
    ``eval.quality_seeds − 1`` more seeds (the metric's own noise), the final samples; eval.json."""
    run_dir = Path(run_dir)
    started = time.perf_counter()
    step = load_weights(setup, run_dir / "checkpoints" / CHECKPOINT)
    cfg, device = setup.cfg, device_for_inference()
    model = setup.model.to(device).eval()
    nats = validation_nelbo(model, setup.data.val, setup.nelbo, device)
    extra_bounds = setup.domain.extra_nelbo(model, setup.data, setup.nelbo, device)
    units = setup.nelbo_units()
    primary = setup.domain.nelbo_unit
    n_final = cfg.eval.final_quality_samples or cfg.eval.quality_samples
    main = quality(setup, model, device, count=n_final)
    seeds = [cfg.sample.seed + k for k in range(cfg.eval.quality_seeds)]
    values = [tracked_values(setup, main.metrics)] + [tracked_values(setup, quality(setup, model, device, seed=s, count=n_final).metrics)
                                                      for s in seeds[1:]]  # fmt: skip
    curve_point = values[0]
    if n_final > cfg.eval.quality_samples:  # the curve stays at one sample count: score the first quality_samples
        prefix = setup.domain.sample_metrics(main.decoded[: cfg.eval.quality_samples], setup.data)
        curve_point = {**curve_point, **tracked_values(setup, prefix)}
    noise = {k: {"seeds": seeds, "values": [v[k] for v in values],
                 "sd": float(torch.tensor([v[k] for v in values], dtype=torch.float64).std()) if len(values) > 1 else None}
             for k in values[0]}  # fmt: skip
    n = cfg.sample.n
    shown = main.decoded[:n] if n <= main.decoded.shape[0] else _decoded_samples(setup, model, n, device)
    files = setup.domain.write_samples(shown, run_dir / "samples", "final")
    from .diffusion.likelihood import unit_key

    result = {
        "step": step,
        "schedule": schedule_label(setup.recipe),
        "domain": setup.domain.name,
        "dataset": setup.data.dataset,
        "nelbo": bits(nats, units[primary]),
        "nelbo_unit": primary,
        **{f"nelbo_{unit_key(u)}": bits(nats, c) for u, c in units.items() if u != primary},
        "nelbo_units_per_example": units,
        **extra_bounds,
        **main.metrics,
        "quality": tracked_values(setup, main.metrics),
        "quality_directions": dict(setup.domain.quality_metrics),
        "metric_labels": dict(setup.domain.headline_metrics),
        "quality_noise": noise,
        "quality_samples": cfg.eval.quality_samples,
        "final_quality_samples": n_final,
        "quality_curve": curve_point,  # the quality curve's last point (quality_samples samples)
        "sampler": {k: getattr(cfg.sample, k) for k in ("sampler", "steps", "sigmas", "rho", "grid_mix", "churn", "seed", "guidance")},
        "samples": [str(p.relative_to(run_dir)) for p in files],
        "created_by": f"multidiff {__version__}",
    }
    result["headline"] = {label: result[key] for key, label in setup.domain.headline_metrics.items() if key in result}
    timing = _read_json(run_dir / "timing.json")
    if "peak_device_memory_mb" in timing:  # a GPU run: what training needed at most
        result["resources"] = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                               "peak_device_memory_mb": timing["peak_device_memory_mb"]}  # fmt: skip
    faults.point("eval", step)
    atomic_write_text(run_dir / "eval.json", json.dumps(result, indent=1))
    _record_timing(run_dir, final_eval_s=time.perf_counter() - started)
    return result


@torch.no_grad()
def _decoded_samples(setup: Setup, model: Any, n: int, device: torch.device, **sampler: Any) -> Tensor:
    from .evaluation import generate

    s = setup.cfg.sample
    opts = {"sampler": s.sampler, "seed": s.seed, "batch": s.batch, "churn": s.churn, "condition": None, **sampler}
    kind, steps = opts.pop("sigmas", s.sigmas), opts.pop("steps", s.steps)
    x = generate(model, setup.example_shape(), n, sampling_grid(setup, kind, steps), device=device, **opts)
    return model.decode(x.to(device)).cpu()


def _read_json(path: Path) -> dict[str, Any]:
    """A run's JSON file ({} when absent); a damaged one is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        return {}
    data = parse_json(read_text(path, "run file"), f"run file {path}")
    if not isinstance(data, dict):
        raise UserError(f"run file {path} is damaged (not a JSON object); delete it and run `multidiff eval` to write it again")
    return data


def _record_timing(run_dir: Path, **values: float) -> None:
    path = Path(run_dir) / "timing.json"
    old = _read_json(path)
    old.update({k: round(float(v), 3) for k, v in values.items()})
    spent = [old.get(k, 0.0) for k in ("nelbo_eval_s", "quality_eval_s", "final_eval_s")]
    if "fit_s" in old:
        total = old["fit_s"] + old.get("final_eval_s", 0.0)
        old["eval_share"] = round(sum(spent) / total, 4) if total > 0 else None
    atomic_write_text(path, json.dumps(old, indent=1))


def sample_run(run_dir: Path, n: Optional[int], steps: Optional[int], sigmas: Optional[str], sampler: Optional[str],
               seed: Optional[int], given: Optional[list[str]] = None, only: Optional[str] = None,
               guidance: Optional[float] = None) -> list[Path]:  # fmt: skip
    """Samples of a run's EMA weights, written to samples/ (the name records grid, sampler, steps, seed).
    ``given`` (["MOD=heldout|FILE", ...]) and ``only`` (a modality) sample a joint model conditionally
    or marginally; ``guidance`` (default: the recipe's ``sample.guidance``) scales conditional samples'
    classifier-free guidance."""
    for flag, value in (("--n", n), ("--steps", steps)):
        if value is not None and value <= 0:
            raise UserError(f"{flag} must be positive, got {value}")
    if given and only:
        raise UserError(f"--only {only} samples one modality alone (the others at σ_max) and --given conditions on "
                        "given modalities: use one of them")  # fmt: skip
    if guidance is not None and (guidance < 0 or not given):
        raise UserError(f"--guidance {guidance:g}: " + ("must be >= 0" if guidance < 0 else "guides conditional samples; add --given MODALITY=heldout|FILE"))
    with RunLock(run_dir):  # one writer per run directory: not beside a training of it
        return _sample_locked(run_dir, n, steps, sigmas, sampler, seed, given, only, guidance)


def _sample_locked(run_dir: Path, n: Optional[int], steps: Optional[int], sigmas: Optional[str], sampler: Optional[str],
                   seed: Optional[int], given: Optional[list[str]], only: Optional[str], guidance: Optional[float]) -> list[Path]:  # fmt: skip
    setup, _ = load_run(run_dir)
    s = setup.cfg.sample
    n, steps = n or s.n, steps or s.steps
    kind, sampler, seed = sigmas or s.sigmas, sampler or s.sampler, s.seed if seed is None else seed
    sampling_grid(setup, kind, steps)  # validate before sampling
    device = device_for_inference()
    model = setup.model.to(device).eval()
    condition, how = None, ""
    if given or only:
        pairs = {}
        for item in given or []:
            if "=" not in item:
                raise UserError(f"--given {item!r}: expected MODALITY=heldout or MODALITY=FILE")
            key, src = item.split("=", 1)
            pairs[key.strip()] = src.strip()
        w = s.guidance if guidance is None else guidance
        condition = setup.domain.condition(model, pairs, only, n, setup.data, guidance=w)
        how = f"-only-{only}" if only else "-given-" + "-".join(pairs) + (f"-guidance{w:g}" if w != 1 else "")
    decoded = _decoded_samples(setup, model, n, device, sigmas=kind, steps=steps, sampler=sampler, seed=seed, condition=condition)
    tag = f"{Path(kind).stem if kind.endswith('.json') else kind}-{sampler}{steps}-seed{seed}{how}"
    return setup.domain.write_samples(decoded, Path(run_dir) / "samples", tag)


def evaluate_existing(run_dir: Path) -> dict[str, Any]:
    """``multidiff eval``: recompute eval.json from the run's last checkpoint."""
    recipe = read_run_recipe(Path(run_dir))
    with RunLock(run_dir):  # one writer per run directory: not beside a training of it
        setup = prepare(recipe, Path(run_dir))
        return evaluate_run(setup, Path(run_dir))


# ---- training a run directory ----------------------------------------------------------------------


def is_launched_worker() -> bool:
    """True in the extra processes of a multi-process run (Lightning's DDP launcher re-runs this
    command with LOCAL_RANK set; torchrun/SLURM set RANK/SLURM_PROCID). Only the primary process
    checks, replaces or creates the run directory."""
    return any(os.environ.get(k, "0") not in ("", "0") for k in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


def check_device_settings(recipe: dict[str, Any]) -> None:
    from .train.fit import check_device_settings as check

    check(recipe)


def train_run(plan: RunPlan, mode: str = "new", setup: Optional[Setup] = None) -> Optional[dict[str, Any]]:
    """Train one run directory and evaluate it; ``mode``: new | resume | overwrite | continue (resume
    if there is anything to resume, else start: what ``compare`` does). Returns eval.json's content
    (None in the extra processes of a multi-process run)."""
    run_dir, primary = Path(plan.run_dir), not is_launched_worker()
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file, not a run directory")
    exists = has_content(run_dir)
    stored_recipe = run_dir / "recipe.yaml"
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
    ckpt = run_dir / "checkpoints" / CHECKPOINT
    if resuming and not ckpt.is_file():
        _refuse_lost_checkpoint(ckpt)
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
        validate_run_files(run_dir)
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
                _truncate_history(run_dir, start_step)
        from .train.fit import fit

        timing = fit(setup, run_dir, resume=resuming and ckpt.is_file(), quality_fn=_quality_fn(setup))
        if not primary or timing is None:
            return None
        _record_timing(run_dir, **timing)
        result = evaluate_run(setup, run_dir)
        _run_plots(setup, run_dir)
        _print_summary(setup, run_dir, result)
        return result
    finally:
        if lock is not None:
            lock.release()


def _refuse_lost_checkpoint(ckpt: Path) -> None:
    """``--resume`` without last.ckpt: from scratch only when nothing was ever checkpointed (a run
    stopped before its first checkpoint); otherwise say which checkpoint to resume from."""
    steps = sorted(ckpt.parent.glob("step*.ckpt"))
    if steps:
        raise UserError(f"--resume: {ckpt} is missing but {steps[-1].name} is there; nothing was changed. Copy it to "
                        f"{ckpt.name} to resume from its step, or pass --overwrite to start again")  # fmt: skip


def validate_run_files(run_dir: Path) -> None:
    """Read every run file a resume reads or rewrites, so a damaged one is named before anything
    changes (never mid-way through training)."""
    for name in ("metrics.csv", "schedule_history/refreshes.csv"):
        path = run_dir / name
        if path.is_file():
            read_step_rows(path)
    for name in ("timing.json", "eval.json"):
        _read_json(run_dir / name)
    for path in schedule_files(run_dir).values():
        load_schedule_file(path)


def _write_run_files(setup: Setup, run_dir: Path, fresh: bool) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "recipe.yaml", dump(setup.recipe))
        if fresh:
            setup.domain.save_artifacts(setup.data, run_dir)
    except OSError as exc:
        raise user_path_error(exc, "write") from None


def _truncate_history(run_dir: Path, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: drop what they already wrote (files in
    schedule_history/ that are not the run's own snapshots stay untouched)."""
    import csv
    import io

    history = run_dir / "schedule_history"
    path = history / "refreshes.csv"
    if path.is_file():
        fields, rows = read_step_rows(path)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(row for row_step, row in rows if row_step <= step)
        atomic_write_text(path, buf.getvalue())
    for snap in history.glob("step*.json"):
        at = snapshot_step(snap.name)
        if at is not None and at > step:
            snap.unlink()
    if step == 0:
        (run_dir / "metrics.csv").unlink(missing_ok=True)


def _quality_fn(setup: Setup) -> Callable[[Any], dict[str, float]]:
    def measure(model: Any) -> dict[str, float]:
        device = next(model.parameters()).device
        return tracked_values(setup, quality(setup, model, device).metrics)

    return measure


def _run_plots(setup: Setup, run_dir: Path) -> None:
    from .report.curves import metric_curves
    from .report.plots import plot_run_curves, plot_schedule

    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    for key, path in schedule_files(run_dir).items():
        name = f"schedule.{key}.png" if key else "schedule.png"
        plot_schedule(load_schedule_file(path).table, plots / name, title=f"{run_dir.name}: training density{f' ({key})' if key else ''}")
    plot_run_curves(metric_curves(run_dir), plots / "curves.png", title=run_dir.name)


def _print_summary(setup: Setup, run_dir: Path, result: dict[str, Any]) -> None:
    from .report.plots import density_peak

    files = schedule_files(run_dir)
    peaks = " · ".join(f"{k + ' ' if k else ''}density peaks at σ={density_peak(load_schedule_file(p).table):.3g}" for k, p in files.items())
    extra = "".join(f" · {label} {value:.4g}" for label, value in result.get("headline", {}).items() if isinstance(value, (int, float)))
    print(f"\nrun {run_dir}: step {result['step']} · NELBO {result['nelbo']:.4f} {result['nelbo_unit']}{extra} · {peaks}")
    print(f"  samples {run_dir / result['samples'][0]} · schedule {', '.join(str(p) for p in files.values())} · plots {run_dir / 'plots'}/")


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
          compare_to: Optional[str] = None) -> None:  # fmt: skip
    """``multidiff train``: one run, or with ``compare_to`` a two-schedule comparison (one seed)."""
    raw = load_recipe_file(recipe_path)
    if schedule:
        raw = select_schedule(raw, schedule)
    recipe = resolve(raw, recipe_path, overrides)
    label = schedule_label(recipe)
    if compare_to and ":" in compare_to:
        raise UserError(f"--compare-to {compare_to}: give a schedule name or file; variants with :KEY=VALUE go to `multidiff compare --schedules`")
    if compare_to:
        base = schedule_label(resolve(select_schedule(raw, compare_to), recipe_path, [o for o in overrides if not o.strip().startswith("schedule.")]))
        if base == label:
            raise UserError(f"--compare-to {compare_to}: the recipe already trains {label}; pick another schedule")
        names = {spec["name"] for spec in schedule_specs(recipe).values()}
        if len(names) > 1:
            raise UserError("--compare-to: the recipe's modalities use different schedules; compare them with `multidiff compare --schedules`")
        # like `compare`, a comparison reuses its finished runs and resumes unfinished ones
        run_comparison(raw, recipe_path, [names.pop(), compare_to], seeds=[recipe["seed"]], overrides=overrides,
                       out=out or f"runs/{recipe['name']}-{label}-vs-{base}", baseline=base, overwrite=mode == "overwrite")  # fmt: skip
        return
    plan = RunPlan(label, recipe["seed"], recipe, Path(out or f"runs/{recipe['name']}-{label}"))
    train_run(plan, mode)


def run_comparison(raw: dict[str, Any], source: str, schedules: list[str], *, seeds: list[int], overrides: list[str],
                   out: str, baseline: Optional[str] = None, overwrite: bool = False, runs: Optional[str] = None) -> Optional[Path]:  # fmt: skip
    """Train every schedule × seed under the same model, data order, budget and evaluation into
    ``RUNS/LABEL/seedS`` (RUNS defaults to OUT; finished runs reused, interrupted ones resumed) and
    write OUT/report.md."""
    from .report.compare_report import write_report

    out_dir = Path(out)
    if (out_dir / "recipe.yaml").is_file():
        raise UserError(f"--out {out_dir} is a training run directory; pick another directory for the comparison")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a directory")
    runs_dir = Path(runs) if runs else out_dir
    if (runs_dir / "recipe.yaml").is_file():
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
                    print(f"{tag}: reusing {plan.run_dir} (finished at step {plan.recipe['train']['max_steps']})")
                continue
            resume = (plan.run_dir / "recipe.yaml").is_file()
            if primary:
                print(f"{tag}: {'resuming' if resume else 'training'} → {plan.run_dir}", flush=True)
            train_run(plan, "continue", setup=first if plan is todo[0] and not resume else None)
        if not primary:
            return None
        groups = {label: [p.run_dir for p in plans if p.label == label] for label in labels}
        name = plans[0].recipe["name"]
        md = write_report(groups, baseline, out_dir, title=f"{name}: {', '.join(labels)}", seeds=seeds)
        print(f"\nreport: {md}  (plots: {out_dir}/curves.png, densities.png, profiles.png)")
        return md
    finally:
        if lock is not None:
            lock.release()

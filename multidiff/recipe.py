"""Recipes: one YAML file per domain and dataset, resolved against defaults and ``--set`` overrides.

A recipe has the sections below. ``data`` is validated by the domain adapter, ``model`` by the
backbone, ``schedule`` by the schedule registry; ``diffusion``, ``train``, ``eval`` and ``sample``
have fixed keys whose defaults and checks are the typed sections here (:class:`DiffusionConfig`
and friends). Every problem is a :class:`UserError` that names the file and the key.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .errors import UserError
from .schedules.grids import GRID_MIX
from .textdata import parse_yaml  # the bounded loader every recipe and --set value goes through

# ---- the typed sections ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DiffusionConfig:
    """The noise process. σ values are σ (not ln σ)."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: Union[float, dict, None] = None  # RMS of the encoded data (one per modality of a joint domain); measured when null
    weighting: str = "edm"  # fixed loss weight w(σ): edm | snr | uniform


@dataclass(frozen=True)
class TrainConfig:
    """The optimization. Steps are optimizer steps."""

    max_steps: int = 2000
    batch_size: int = 64  # examples per micro-batch and process; an optimizer step sees batch_size × accumulate_grad_batches × processes
    accumulate_grad_batches: int = 1  # micro-batches whose gradients are summed into one optimizer step
    lr: float = 2e-3
    lr_warmup: int = 100  # steps of linear learning-rate warm-up
    lr_decay: str = "constant"  # after the warm-up: constant | cosine | linear, down to lr × lr_final at max_steps
    lr_final: float = 0.0  # the decayed rate at max_steps, as a fraction of lr (cosine, linear)
    weight_decay: float = 0.0
    grad_clip: Optional[float] = 1.0
    ema_decay: float = 0.999  # EMA of weights, used for validation, sampling and evaluation
    precision: Union[str, int] = "auto"  # auto: bf16-mixed on GPUs that support it, else 32-true
    accelerator: str = "auto"
    devices: Union[int, str, list] = 1
    strategy: str = "auto"  # Lightning strategy for several devices: auto (DDP) | ddp | fsdp
    compile: bool = False  # torch.compile the backbone (GPU recipes; slow to start on a CPU)
    logger: Union[str, list] = "csv"  # csv (always) plus any of tensorboard, wandb, mlflow
    # per logger, what its Lightning logger takes, e.g. {wandb: {entity: me, group: ablation}, mlflow: {tracking_uri: ...}};
    # unset, W&B and MLflow read their usual environment (WANDB_PROJECT, MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME)
    logger_options: Optional[dict] = None
    log_every: int = 25
    eval_every: int = 250  # steps between validation NELBO evaluations
    checkpoint_every: int = 500
    progress_bar: bool = True


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation: NELBO quadrature and sample quality, identical for every schedule."""

    nelbo_examples: int = 256  # fixed validation subset for the NELBO
    nelbo_nodes: int = 32  # midpoint-rule nodes over ln σ (schedule-independent)
    nelbo_sigma_min: Optional[float] = None  # σ where the bound decodes; null: the domain's choice
    nelbo_seed: int = 1234
    nelbo_batch: int = 128
    quality_every: Optional[int] = None  # steps between sample-quality evaluations; null: train.eval_every; 0: final only
    quality_samples: int = 256  # samples scored by the domain's sample metric (fixed noise, sampler and grid)
    quality_seeds: int = 2  # sample seeds at the final evaluation; their spread is the metric's own noise
    # samples per seed at the final evaluation (null: quality_samples): the final values and their noise
    # use them all, the quality curve's last point their first quality_samples (one sample count per curve)
    final_quality_samples: Optional[int] = None


@dataclass(frozen=True)
class SampleConfig:
    """The fixed sampler used for samples and for sample quality."""

    n: int = 64
    steps: int = 32
    sampler: str = "heun"  # heun | euler
    sigmas: str = "karras"  # karras | loguniform | learned | PATH.json
    rho: float = 7.0
    grid_mix: float = GRID_MIX  # learned grids: share of EDM's ρ-spacing mixed into the learned density (0: the learned density alone)
    churn: float = 0.0
    seed: int = 0
    batch: int = 256
    guidance: float = 1.0  # conditional samples of a joint model: classifier-free guidance against its marginal (1: none)


@dataclass(frozen=True)
class Sections:
    """The typed view of a resolved recipe (the dict stays the record written to recipe.yaml)."""

    name: str
    domain: str
    seed: int
    diffusion: DiffusionConfig
    train: TrainConfig
    eval: EvalConfig
    sample: SampleConfig
    schedule: dict[str, Any] = field(default_factory=dict)

    @property
    def quality_every(self) -> int:
        """Steps between sample-quality evaluations (0: only the final evaluation)."""
        q = self.eval.quality_every
        return self.train.eval_every if q is None else q


SECTION_TYPES = {"diffusion": DiffusionConfig, "train": TrainConfig, "eval": EvalConfig, "sample": SampleConfig}
SECTION_DEFAULTS: dict[str, dict[str, Any]] = {
    name: {f.name: f.default for f in dataclasses.fields(cls)} for name, cls in SECTION_TYPES.items()
}
TOP_LEVEL = {"name", "domain", "seed", "data", "model", "diffusion", "schedule", "train", "eval", "sample", "description"}
#: renamed keys still read from older recipes and run directories: old → new
RENAMED = {("eval", "fd_samples"): "quality_samples"}
#: keys a resumed run (or a reused run in a comparison) may change
RESUMABLE_KEYS = frozenset({
    "train.max_steps", "train.accelerator", "train.devices", "train.precision", "train.strategy", "train.progress_bar",
    "train.logger", "train.logger_options", "train.compile", "train.lr",
})  # fmt: skip

#: seeds (the recipe's, the NELBO's, the sampler's) stay below this, so every seed derived from them
#: (seed + k for k seeds, sample seeds, per-step generators) fits what numpy and scikit-learn accept
MAX_SEED = 2**30
_COUNT = 10**9  # steps and step intervals
_BATCH = 2**16  # examples in one batch
_SAMPLES = 10**6  # examples evaluated or generated in one run
_SIGMA = (1e-6, 1e6)  # σ's outside it underflow or overflow σ² in float32


def _between(lo: float, hi: float) -> tuple[Any, str]:
    return (lambda v: lo <= v <= hi, f"between {lo:g} and {hi:g}")


def _is_sigma(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and _SIGMA[0] <= v <= _SIGMA[1]  # NaN fails too


# value checks beyond the type: (predicate, what the value must be); every number is bounded by what
# it feeds downstream, so a value that passes never overflows or fails to allocate later
_CHECKS: dict[tuple[str, str], tuple[Any, str]] = {
    ("diffusion", "sigma_min"): _between(*_SIGMA), ("diffusion", "sigma_max"): _between(*_SIGMA),
    ("train", "max_steps"): _between(1, _COUNT), ("train", "eval_every"): _between(1, _COUNT),
    ("train", "checkpoint_every"): _between(1, _COUNT), ("train", "log_every"): _between(1, _COUNT),
    ("train", "lr_warmup"): _between(0, _COUNT), ("train", "batch_size"): _between(1, _BATCH),
    ("train", "accumulate_grad_batches"): _between(1, 1024),
    ("train", "lr"): (lambda v: v > 0, "> 0"),  # too large diverges, which training reports in one line
    ("eval", "nelbo_examples"): _between(1, _SAMPLES), ("eval", "nelbo_nodes"): _between(1, 4096),
    ("eval", "nelbo_batch"): _between(1, _BATCH), ("eval", "nelbo_seed"): _between(0, MAX_SEED),
    ("eval", "quality_samples"): (lambda v: 2 <= v <= _SAMPLES, f"between 2 (a distance between sample sets needs two) and {_SAMPLES:g}"),
    ("eval", "quality_seeds"): _between(1, 100),
    ("eval", "final_quality_samples"): (lambda v: v is None or 2 <= v <= _SAMPLES, f"between 2 and {_SAMPLES:g}, or null"),
    ("sample", "n"): _between(1, _SAMPLES), ("sample", "steps"): _between(1, 10_000), ("sample", "batch"): _between(1, _BATCH),
    ("sample", "rho"): (lambda v: 0 < v <= 1000, "> 0 and at most 1000"), ("sample", "seed"): _between(0, MAX_SEED),
    ("diffusion", "sigma_data"): (lambda v: v is None or (all(_is_sigma(x) for x in v.values()) if isinstance(v, dict) else _is_sigma(v)),
                                  f"between {_SIGMA[0]:g} and {_SIGMA[1]:g}, one such number per modality, or null"),
    ("diffusion", "weighting"): (lambda v: v in ("edm", "snr", "uniform"), "edm, snr or uniform"),
    ("train", "weight_decay"): (lambda v: v >= 0, ">= 0"),
    ("train", "grad_clip"): (lambda v: v is None or v > 0, "> 0 or null"),
    ("train", "ema_decay"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("train", "strategy"): (lambda v: v in ("auto", "ddp", "fsdp"), "auto, ddp or fsdp"),
    ("train", "lr_decay"): (lambda v: v in ("constant", "cosine", "linear"), "constant, cosine or linear"),
    ("train", "lr_final"): (lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("eval", "quality_every"): (lambda v: v is None or 0 <= v <= _COUNT, f">= 0 and at most {_COUNT:g}, or null"),
    ("eval", "nelbo_sigma_min"): (lambda v: v is None or _is_sigma(v), f"between {_SIGMA[0]:g} and {_SIGMA[1]:g}, or null"),
    ("sample", "sampler"): (lambda v: v in ("heun", "euler"), "heun or euler"),
    ("sample", "churn"): (lambda v: 0 <= v <= 1000, "between 0 and 1000"),
    ("sample", "guidance"): (lambda v: 0 <= v <= 1000, "between 0 and 1000"),
    ("sample", "grid_mix"): (lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("sample", "sigmas"): (lambda v: v in ("karras", "loguniform", "learned") or v.endswith(".json"),
                           "karras, loguniform, learned or a schedule file (.json)"),
}


def _allowed_types(hint: Any) -> tuple[type, ...]:
    args = typing.get_args(hint)
    types = args if args else (hint,)
    out: list[type] = []
    for t in types:
        out += [int, float] if t is float else [typing.get_origin(t) or t]
    return tuple(out)


def _check_section(section: str, values: dict[str, Any], source: str) -> None:
    hints = typing.get_type_hints(SECTION_TYPES[section])
    for key, value in values.items():
        allowed = _allowed_types(hints[key])
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        if ok and isinstance(value, float) and not math.isfinite(value):
            ok = False
        if not ok:
            raise UserError(f"recipe {source}: '{section}.{key}' has invalid value {value!r}")
        check = _CHECKS.get((section, key))
        if check and not check[0](value):
            raise UserError(f"recipe {source}: '{section}.{key}' must be {check[1]}, got {value!r}")


def sections(recipe: dict[str, Any]) -> Sections:
    """The typed sections of a recipe that :func:`resolve` has checked."""
    typed = {name: cls(**recipe[name]) for name, cls in SECTION_TYPES.items()}
    return Sections(name=recipe["name"], domain=recipe["domain"], seed=int(recipe["seed"]), schedule=dict(recipe["schedule"]), **typed)


# ---- reading and resolving -------------------------------------------------------------------------


def read_text(path: Path, what: str) -> str:
    """A text file's content, or a one-line error naming it (missing, unreadable, not UTF-8)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def load_recipe_file(path: str | Path, what: str = "recipe") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} not found")
    try:
        raw = parse_yaml(read_text(path, what), f"{what} {path}")
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise UserError(f"{what} {path} is not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{what} {path}: top level must be a mapping of sections")
    return raw


def resolve(raw: dict[str, Any], source: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Fill defaults, apply ``key=value`` overrides (dotted keys) and check the generic sections."""
    recipe = copy.deepcopy(raw)
    unknown = sorted(set(recipe) - TOP_LEVEL)
    if unknown:
        raise UserError(f"recipe {source}: unknown section {unknown[0]!r}; sections are {', '.join(sorted(TOP_LEVEL))}")
    recipe.setdefault("seed", 0)
    for section in ("data", "model"):
        if recipe.get(section) is None:
            recipe[section] = {}
    schedule = recipe.setdefault("schedule", {"name": "edm"})
    if isinstance(schedule, str):
        recipe["schedule"] = {"name": schedule}
    for section, defaults in SECTION_DEFAULTS.items():
        given = recipe.get(section) or {}
        if not isinstance(given, dict):
            raise UserError(f"recipe {source}: section '{section}' must be a mapping")
        given = {RENAMED.get((section, k), k): v for k, v in given.items()}
        bad = sorted(set(given) - set(defaults))
        if bad:
            raise UserError(f"recipe {source}: unknown key '{section}.{bad[0]}'; valid keys: {', '.join(sorted(defaults))}")
        recipe[section] = {**defaults, **given}
    for item in overrides or []:
        apply_override(recipe, item)
    for key in ("name", "domain"):
        if not isinstance(recipe.get(key), str) or not recipe[key]:
            raise UserError(f"recipe {source}: '{key}' must be a non-empty string")
    for section in ("data", "model", "schedule"):
        if not isinstance(recipe[section], dict):
            raise UserError(f"recipe {source}: section '{section}' must be a mapping")
    for section in SECTION_TYPES:
        _check_section(section, recipe[section], source)
    d = recipe["diffusion"]
    if not d["sigma_min"] < d["sigma_max"]:
        raise UserError(f"recipe {source}: diffusion.sigma_min must be below diffusion.sigma_max")
    q, every = recipe["eval"]["quality_every"], recipe["train"]["eval_every"]
    if q and q % every:
        raise UserError(f"recipe {source}: eval.quality_every ({q}) must be a multiple of train.eval_every ({every}): quality is measured at validation points")
    final, n = recipe["eval"]["final_quality_samples"], recipe["eval"]["quality_samples"]
    if final is not None and final < n:
        raise UserError(f"recipe {source}: eval.final_quality_samples ({final}) must be at least eval.quality_samples ({n}): "
                        "the quality curve's last point is scored on the first quality_samples of them")  # fmt: skip
    seed = recipe["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"recipe {source}: 'seed' must be an integer between 0 and {MAX_SEED}, got {seed!r}")
    for key, spec in schedule_specs(recipe).items():
        where = f"schedule.{key}." if key else "schedule."
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise UserError(f"recipe {source}: {where}name must be a schedule name or a .json file")
    return recipe


def schedule_specs(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe's schedule specs by modality: {"": spec} for one schedule (``schedule.name``), or
    one per modality of a joint domain (``schedule.<modality>.name``)."""
    sched = recipe.get("schedule") or {}
    if not isinstance(sched, dict) or "name" in sched or not sched:
        return {"": sched}
    return dict(sched)


def apply_override(recipe: dict[str, Any], item: str) -> None:
    """Apply one ``--set section.key=value``; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected key=value, e.g. train.max_steps=500")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    try:
        value = parse_yaml(text, f"--set {key}") if text.strip() else None
    except yaml.YAMLError:
        value = text
    if len(parts) == 1:
        if parts[0] not in ("name", "seed", "domain"):
            raise UserError(f"--set {key}: unknown key; use section.key (sections: {', '.join(sorted(TOP_LEVEL))})")
        recipe[parts[0]] = value
        return
    section = parts[0]
    if section not in TOP_LEVEL or section in ("name", "seed", "domain", "description"):
        raise UserError(f"--set {key}: unknown section {section!r}; sections are data, model, diffusion, schedule, train, eval, sample")
    if section in SECTION_DEFAULTS:
        parts[1] = RENAMED.get((section, parts[1]), parts[1])
        if parts[1] not in SECTION_DEFAULTS[section] or len(parts) > 2:
            raise UserError(f"--set {key}: unknown key; valid keys in '{section}': {', '.join(sorted(SECTION_DEFAULTS[section]))}")
    node = recipe.setdefault(section, {})
    if not isinstance(node, dict):
        raise UserError(f"--set {key}: section '{section}' is not a mapping")
    for p in parts[1:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: {p!r} is not a mapping")
    node[parts[-1]] = value


def select_schedule(recipe: dict[str, Any], name: str) -> dict[str, Any]:
    """The recipe with its schedule switched to ``name`` (the one flag that makes a baseline).

    Parameters in the recipe belong to the recipe's own schedule; a different schedule starts
    from its defaults (later ``--set schedule.KEY=V`` still apply).
    """
    out = copy.deepcopy(recipe)
    current = out.get("schedule") or {}
    if isinstance(current, str):
        current = {"name": current}
    specs = schedule_specs({"schedule": current})
    switched = {key: spec if isinstance(spec, dict) and spec.get("name") == name else {"name": name} for key, spec in specs.items()}
    out["schedule"] = switched[""] if "" in switched else switched  # a joint domain: every modality switches
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} → {'a.b': 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def differences(stored: dict[str, Any], new: dict[str, Any], allowed: frozenset[str] = RESUMABLE_KEYS,
                defaults: Optional[dict[str, Any]] = None) -> list[str]:  # fmt: skip
    """Keys (dotted) whose values differ between two resolved recipes, except ``allowed`` ones.

    A key the stored recipe lacks (written by an older version) counts as equal when the new value
    is that key's default (``defaults``: dotted key → default), so upgrading never strands a run.
    """
    a, b = flatten(stored), flatten(new)
    defaults = {**flatten(SECTION_DEFAULTS), **(defaults or {})}
    skip = {"description"}

    def same(k: str) -> bool:
        if k not in a and k in defaults:
            return b.get(k) == defaults[k]
        return a.get(k) == b.get(k)

    def exempt(k: str) -> bool:  # an allowed key covers what it holds (a joint run's σ_data per modality)
        return k in skip or any(k == x or k.startswith(x + ".") for x in allowed)

    return sorted(k for k in set(a) | set(b) if not exempt(k) and not same(k))


def dump(recipe: dict[str, Any]) -> str:
    return yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)

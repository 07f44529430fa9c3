"""Recipes: one YAML file per domain and dataset, resolved against defaults and ``--set`` overrides.

A recipe has the sections below. ``data`` is validated by the domain adapter, ``model`` by the
backbone, ``schedule`` by the schedule registry; ``diffusion``, ``train``, ``eval`` and ``sample``
have fixed keys whose defaults and checks are the typed sections here (:class:`DiffusionConfig`
and friends). Every problem is a :class:`UserError` that names the file and the key.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .errors import UserError
from .schedules.grids import GRID_MIX
from .settings import SIGMA_RANGE, because, check_settings, choice, field_rules, integer, number, setting, sigma, text
from .textdata import parse_yaml  # the bounded loader every recipe and --set value goes through

#: seeds (the recipe's, the NELBO's, the sampler's) stay below this, so every seed derived from them
#: (seed + k for k seeds, sample seeds, per-step generators) fits what numpy and scikit-learn accept
MAX_SEED = 2**30
# every number is bounded by what it feeds downstream, so a value that passes never overflows or fails to allocate later
_COUNT = 10**9  # steps and step intervals
_BATCH = 2**16  # examples in one batch
_SAMPLES = 10**6  # examples evaluated or generated in one run


def _sigma_data(v: Any) -> Optional[str]:
    one = sigma()
    ok = v is None or (all(one(x) is None for x in v.values()) if isinstance(v, dict) else one(v) is None)
    return None if ok else f"between {SIGMA_RANGE[0]:g} and {SIGMA_RANGE[1]:g}, one such number per modality, or null"


def _sample_sigmas(v: Any) -> Optional[str]:
    ok = isinstance(v, str) and (v in ("karras", "loguniform", "learned") or v.endswith(".json"))
    return None if ok else "karras, loguniform, learned or a schedule file (.json)"


# ---- the typed sections ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DiffusionConfig:
    """The noise process. σ values are σ (not ln σ)."""

    sigma_min: float = setting(0.002, sigma())
    sigma_max: float = setting(80.0, sigma())
    sigma_data: Union[float, dict, None] = setting(None, _sigma_data)  # RMS of the encoded data (one per modality of a joint domain); measured when null
    weighting: str = setting("edm", choice(("edm", "snr", "uniform")))  # fixed loss weight w(σ): edm | snr | uniform


@dataclass(frozen=True)
class TrainConfig:
    """The optimization. Steps are optimizer steps."""

    max_steps: int = setting(2000, integer(1, _COUNT))
    batch_size: int = setting(64, integer(1, _BATCH))  # examples per micro-batch and process; an optimizer step sees batch_size × accumulate_grad_batches × processes
    accumulate_grad_batches: int = setting(1, integer(1, 1024))  # micro-batches whose gradients are summed into one optimizer step
    lr: float = setting(2e-3, number(0, open_lo=True))  # too large diverges, which training reports in one line
    lr_warmup: int = setting(100, integer(0, _COUNT))  # steps of linear learning-rate warm-up
    lr_decay: str = setting("constant", choice(("constant", "cosine", "linear")))  # after the warm-up: constant | cosine | linear, down to lr × lr_final at max_steps
    lr_final: float = setting(0.0, number(0, 1))  # the decayed rate at max_steps, as a fraction of lr (cosine, linear)
    weight_decay: float = setting(0.0, number(0))
    grad_clip: Optional[float] = setting(1.0, number(0, open_lo=True, optional=True))
    ema_decay: float = setting(0.999, number(0, 1, open_hi=True))  # EMA of weights, used for validation, sampling and evaluation
    precision: Union[str, int] = "auto"  # auto: bf16-mixed on GPUs that support it, else 32-true
    accelerator: str = "auto"
    devices: Union[int, str, list] = 1
    strategy: str = setting("auto", choice(("auto", "ddp", "fsdp")))  # Lightning strategy for several devices: auto (DDP) | ddp | fsdp
    compile: bool = False  # torch.compile the backbone (GPU recipes; slow to start on a CPU)
    logger: Union[str, list] = "csv"  # csv (always) plus any of tensorboard, wandb, mlflow
    # per logger, what its Lightning logger takes, e.g. {wandb: {entity: me, group: ablation}, mlflow: {tracking_uri: ...}};
    # unset, W&B and MLflow read their usual environment (WANDB_PROJECT, MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME)
    logger_options: Optional[dict] = None
    log_every: int = setting(25, integer(1, _COUNT))
    eval_every: int = setting(250, integer(1, _COUNT))  # steps between validation NELBO evaluations
    checkpoint_every: int = setting(500, integer(1, _COUNT))
    progress_bar: bool = True


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation: NELBO quadrature and sample quality, identical for every schedule."""

    nelbo_examples: int = setting(256, integer(1, _SAMPLES))  # fixed validation subset for the NELBO
    nelbo_nodes: int = setting(32, integer(1, 4096))  # midpoint-rule nodes over ln σ (schedule-independent)
    nelbo_sigma_min: Optional[float] = setting(None, sigma(optional=True))  # σ where the bound decodes; null: the domain's choice
    nelbo_seed: int = setting(1234, integer(0, MAX_SEED))
    nelbo_batch: int = setting(128, integer(1, _BATCH))
    quality_every: Optional[int] = setting(None, integer(0, _COUNT, optional=True))  # steps between sample-quality evaluations; null: train.eval_every; 0: final only
    quality_samples: int = setting(256, because(integer(2, _SAMPLES), "a distance between sample sets needs two"))  # samples scored by the domain's sample metric (fixed noise, sampler and grid)
    quality_seeds: int = setting(2, integer(1, 100))  # sample seeds at the final evaluation; their spread is the metric's own noise
    # samples per seed at the final evaluation (null: quality_samples): the final values and their noise
    # use them all, the quality curve's last point their first quality_samples (one sample count per curve)
    final_quality_samples: Optional[int] = setting(None, integer(2, _SAMPLES, optional=True))


@dataclass(frozen=True)
class SampleConfig:
    """The fixed sampler used for samples and for sample quality."""

    n: int = setting(64, integer(1, _SAMPLES))
    steps: int = setting(32, integer(1, 10_000))
    sampler: str = setting("heun", choice(("heun", "euler")))  # heun | euler
    sigmas: str = setting("karras", _sample_sigmas)  # karras | loguniform | learned | PATH.json
    rho: float = setting(7.0, number(0, 1000, open_lo=True))
    grid_mix: float = setting(GRID_MIX, number(0, 1))  # learned grids: share of EDM's ρ-spacing mixed into the learned density (0: the learned density alone)
    churn: float = setting(0.0, number(0, 1000))
    seed: int = setting(0, integer(0, MAX_SEED))
    batch: int = setting(256, integer(1, _BATCH))
    guidance: float = setting(1.0, number(0, 1000))  # conditional samples of a joint model: classifier-free guidance against its marginal (1: none)


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
    def schedules(self) -> dict[str, Any]:
        """The schedule specs by modality (see :func:`schedule_specs`)."""
        return schedule_specs({"domain": self.domain, "schedule": self.schedule})

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

def _check_section(section: str, values: dict[str, Any], source: str) -> None:
    check_settings(section, values, field_rules(SECTION_TYPES[section]), where=f"recipe {source}: ")


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
    top = {key: recipe.get(key) for key in ("name", "domain")}
    check_settings("", top, {"name": text(), "domain": text()}, where=f"recipe {source}: ")
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
    check_settings("", {"seed": recipe["seed"]}, {"seed": integer(0, MAX_SEED)}, where=f"recipe {source}: ")
    specs = schedule_specs(recipe)
    for key, spec in specs.items():
        where = "schedule." if _one_schedule(recipe.get("schedule")) else f"schedule.{key}."
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise UserError(f"recipe {source}: {where}name must be a schedule name or a .json file")
    return recipe


def schedule_specs(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe's schedule specs by modality. Every run is a group of modalities: a flat section
    (``schedule.name``) is the single modality of a one-domain run, keyed by its domain's name; a
    joint domain names one per modality (``schedule.<modality>.name``)."""
    sched = recipe.get("schedule") or {}
    if _one_schedule(sched):
        return {str(recipe.get("domain")): sched}
    return dict(sched)


def _one_schedule(section: Any) -> bool:
    return not isinstance(section, dict) or "name" in section or not section


def per_modality(value: Any, keys: list[str]) -> dict[str, Any]:
    """A per-modality recipe value (``diffusion.sigma_data``): one number for every modality, or a
    mapping by modality; None stays None for each."""
    if isinstance(value, dict):
        return {k: value.get(k) for k in keys}
    return {k: value for k in keys}


def recorded(values: dict[str, Any]) -> Any:
    """How a recipe records a per-modality value (σ_data, the schedule section): a group of one as
    the plain value (``schedule.name``, one number), several as the mapping by modality."""
    return next(iter(values.values())) if len(values) == 1 else dict(values)


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
    specs = schedule_specs({**out, "schedule": current})
    switched = {key: spec if isinstance(spec, dict) and spec.get("name") == name else {"name": name} for key, spec in specs.items()}
    out["schedule"] = recorded(switched)  # a joint domain: every modality switches
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

"""Setting a run up: a recipe → a :class:`Setup` (data, σ_data, schedule, model, the domain's sample
metric), validating everything a run needs before anything is written; the sampling grid a recipe names."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..domains.base import Domain, DomainData
from ..domains.group import ModalityGroup, modality_group
from ..domains.registry import get_domain
from ..errors import UserError
from ..evaluation import NelboSettings
from ..metrics.features import cache_root
from ..recipe import Sections, flatten, per_modality, recorded, schedule_specs, sections
from ..rundir import RunDir
from ..schedules.api import schedule_context
from ..schedules.grids import sigma_grid
from ..schedules.group import ScheduleGroup
from ..schedules.io import load_schedule_file
from ..schedules.registry import REGISTRY, build_schedule, is_schedule_file, make_params


@dataclass
class Setup:
    """Everything a run is made of, built from a resolved recipe."""

    recipe: dict[str, Any]  # fully resolved: what recipe.yaml records
    cfg: Sections
    domain: Domain
    group: ModalityGroup  # the run's modalities (a one-domain run: a group of one)
    data: DomainData
    sigma_data: dict[str, float]  # σ_data by modality
    weight: dict[str, Callable[[Tensor], Tensor]]  # the loss weight w(σ) by modality
    schedule: ScheduleGroup  # one member per modality
    model: Any  # DiffusionModel

    def meta(self, key: str) -> dict[str, Any]:
        """What modality ``key``'s schedule file records about where it was learned."""
        return {"domain": self.group.modality_domain(key), "dataset": self.data.dataset, "sigma_data": self.sigma_data[key],
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
    cfg = sections(recipe)
    domain = get_domain(cfg.domain)(recipe, cache_root())
    resolved = {**recipe, **domain.resolved_config()}
    specs = schedule_specs(recipe)
    group = modality_group(domain)
    modalities = group.modalities()
    if list(specs) != modalities:
        want = "schedule.name" if len(modalities) == 1 else ", ".join(f"schedule.{m}.name" for m in modalities)
        got = "schedule.name" if len(specs) == 1 else ", ".join(f"schedule.{k}" for k in specs)
        raise UserError(f"recipe: domain '{domain.name}' needs {want}; got {got}")
    full = {}
    for key, spec in specs.items():
        name = spec["name"]
        if name in REGISTRY:
            params = make_params(name, {k: v for k, v in spec.items() if k != "name"})
            spec = {"name": name, **dataclasses.asdict(params)}
        full[key] = spec
    resolved["schedule"] = recorded(full)
    d = cfg.diffusion
    lo = cfg.eval.nelbo_sigma_min or domain.nelbo_sigma_min or d.sigma_min
    if not d.sigma_min <= lo < d.sigma_max:
        raise UserError(f"eval.nelbo_sigma_min must lie in [diffusion.sigma_min, diffusion.sigma_max), got {lo}")
    resolved["eval"] = {**recipe["eval"], "nelbo_sigma_min": float(lo)}  # the record, completed
    if cfg.sample.guidance != 1 and not group.conditional_sampling:
        raise UserError(f"sample.guidance applies to conditional samples of a joint model; domain '{domain.name}' generates whole examples (leave it at 1)")
    if cfg.train.precision == "auto":
        resolved["train"] = {**recipe["train"], "precision": default_precision(str(cfg.train.accelerator))}
    return resolved, domain


def known_defaults(domain: Domain, recipe: dict[str, Any]) -> dict[str, Any]:
    """Dotted key → default for the domain's data/model settings and the schedule's parameters."""
    from ..schedules.registry import param_defaults

    specs = schedule_specs(recipe)
    sched = {key: param_defaults(spec["name"]) for key, spec in specs.items() if spec["name"] in REGISTRY}
    out = {"data": domain.data_defaults, "model": domain.model_defaults}
    if sched:
        out["schedule"] = recorded(sched) if len(specs) == 1 else sched
    return flatten(out)


def prepare(recipe: dict[str, Any], run_dir: Optional[Path] = None, *, metrics: bool = True) -> Setup:
    """Load data, measure σ_data, build schedule, model and the sample metric; ``Setup.recipe`` is the
    fully resolved recipe. ``run_dir``: an existing run whose saved artifacts (tokenizer,
    statistics, its frozen schedule file) are reused. Nothing is written."""
    resolved, domain = resolve_full(recipe)
    group = modality_group(domain)
    data = domain.load(run_dir)
    given = per_modality(sections(resolved).diffusion.sigma_data, group.modalities())
    measured = group.modality_sigma_data(data) if None in given.values() else {}
    sigma_data = {k: float(v if v is not None else measured[k]) for k, v in given.items()}
    resolved["diffusion"] = {**resolved["diffusion"], "sigma_data": recorded(sigma_data)}  # the record, completed
    cfg = sections(resolved)
    schedule, weight = _build_schedules(cfg, sigma_data, run_dir)
    torch.manual_seed(cfg.seed)  # the same initial weights for every schedule
    model = group.modality_model(data, sigma_data)
    setup = Setup(resolved, cfg, domain, group, data, sigma_data, weight, schedule, model)
    sampling_grid(setup, setup.cfg.sample.sigmas, setup.cfg.sample.steps)  # a bad sample.sigmas fails now
    if metrics:
        domain.prepare_metrics(data)
    return setup


def _build_schedules(cfg: Sections, sigma_data: dict[str, float], run_dir: Optional[Path]) -> tuple[ScheduleGroup, Any]:
    """The run's schedule group (one member per modality) and each modality's loss weight."""
    d = cfg.diffusion
    specs = cfg.schedules
    frozen = RunDir(run_dir).schedule_paths(list(specs)) if run_dir is not None else {}
    built, weights = {}, {}
    for key, spec in specs.items():
        ctx = schedule_context(d.sigma_min, d.sigma_max, sigma_data[key], d.weighting)
        weights[key] = ctx.weight
        spec = dict(spec)
        name = spec.pop("name")
        if frozen and is_schedule_file(name) and name not in REGISTRY and not Path(name).is_file():
            name = str(frozen[key])  # a frozen file run keeps its own exported copy
        built[key] = build_schedule(name, spec, ctx)
    try:
        return ScheduleGroup(built), weights
    except ValueError as exc:
        raise UserError(f"schedule: {exc}") from None


def sampling_grid(setup: Setup, kind: str, steps: int) -> Tensor:
    """The sampling σ's (σ, then a final 0): karras | loguniform | learned | a schedule file."""
    d, s = setup.cfg.diffusion, setup.cfg.sample
    if kind in ("karras", "loguniform", "learned"):
        schedule = None
        if kind == "learned":
            try:
                schedule = setup.schedule.sole("sample.sigmas learned")
            except ValueError as exc:
                raise UserError(f"{exc}; every modality samples on one grid: choose karras or loguniform") from None
        return sigma_grid(kind, steps, d.sigma_min, d.sigma_max, s.rho, schedule=schedule, mix=s.grid_mix)
    if not is_schedule_file(kind):
        raise UserError(f"--sigmas {kind!r}: choose karras, loguniform, learned or a schedule file (.json)")
    table = load_schedule_file(kind).table
    if not (math.isclose(table.sigma_min, d.sigma_min, rel_tol=1e-6) and math.isclose(table.sigma_max, d.sigma_max, rel_tol=1e-6)):
        raise UserError(f"schedule file {kind} covers σ in [{table.sigma_min:g}, {table.sigma_max:g}] but the run samples "
                        f"[{d.sigma_min:g}, {d.sigma_max:g}]; use a file learned on the same σ range")  # fmt: skip
    return sigma_grid("learned", steps, d.sigma_min, d.sigma_max, s.rho, schedule=table, mix=s.grid_mix)

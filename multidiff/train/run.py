"""Building, training, loading and evaluating a run directory (DESIGN §7).

runs/NAME/{recipe.yaml (resolved), checkpoints/, metrics.csv, schedule.json, schedule_history/,
plots/, samples/, eval.json}. Everything is validated (recipe, data, schedule) before anything
is written, so bad input never leaves a half-made run behind.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .. import __version__
from ..diffusion.likelihood import fixed_noise, nelbo_nats, unit_key
from ..diffusion.model import DiffusionModel
from ..diffusion.sampling import SAMPLERS, sigma_grid
from ..diffusion.weighting import get_weighting
from ..domains.base import Domain, DomainData
from ..domains.registry import get_domain
from ..errors import UserError
from ..metrics.features import cache_root
from ..recipe import dump, parse_yaml
from ..schedules.base import Schedule, ScheduleContext
from ..schedules.registry import REGISTRY, build_schedule, is_schedule_file

for _pattern in (
    ".*does not have many workers.*",
    ".*Experiment logs directory.*exists and is not empty.*",
    ".*Checkpoint directory.*exists and is not empty.*",
    ".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
    ".*You called `self.log\\(.*` in .* but the value needs to be floating.*",
    ".*Found current_model_state in the checkpoint.*",
):
    warnings.filterwarnings("ignore", message=_pattern)


@dataclass
class Setup:
    """Everything a run is made of, built from a resolved recipe."""

    recipe: dict[str, Any]
    domain: Domain
    data: DomainData
    sigma_data: float
    weight: Callable[[Tensor], Tensor]
    schedule: Schedule
    model: DiffusionModel

    def meta(self) -> dict[str, Any]:
        """What a schedule file records about where it was learned."""
        return {
            "domain": self.domain.name,
            "dataset": self.data.dataset,
            "sigma_data": self.sigma_data,
            "weighting": self.recipe["diffusion"]["weighting"],
        }


def schedule_label(recipe: dict[str, Any]) -> str:
    name = recipe["schedule"]["name"]
    return Path(name).stem if is_schedule_file(name) and name not in REGISTRY else name


def build(recipe: dict[str, Any], run_dir: Optional[Path] = None) -> Setup:
    """Load data, measure σ_data, build schedule and model; ``Setup.recipe`` is the fully resolved recipe.

    ``run_dir``: an existing run whose saved artifacts (tokenizer, statistics) the domain reuses.
    """
    domain = get_domain(recipe["domain"])(recipe, cache_root())
    data = domain.load(run_dir)
    diff = recipe["diffusion"]
    sigma_data = float(diff["sigma_data"] or domain.measure_sigma_data(data))
    weight = get_weighting(diff["weighting"], sigma_data)
    ctx = ScheduleContext(float(diff["sigma_min"]), float(diff["sigma_max"]), sigma_data, weight)
    spec = dict(recipe["schedule"])
    name = spec.pop("name")
    if run_dir is not None and is_schedule_file(name) and name not in REGISTRY and not Path(name).is_file():
        name = str(run_dir / "schedule.json")  # a frozen file run keeps its own exported copy
    schedule = build_schedule(name, spec, ctx)
    torch.manual_seed(int(recipe["seed"]))  # the same initial weights for every schedule
    model = domain.build_model(data, sigma_data)
    resolved = {**recipe, **domain.resolved_config()}
    resolved["diffusion"] = {**diff, "sigma_data": sigma_data}
    lo = recipe["eval"]["nelbo_sigma_min"] or domain.nelbo_sigma_min or diff["sigma_min"]
    if not diff["sigma_min"] <= lo < diff["sigma_max"]:
        raise UserError(f"eval.nelbo_sigma_min must lie in [diffusion.sigma_min, diffusion.sigma_max), got {lo}")
    resolved["eval"] = {**recipe["eval"], "nelbo_sigma_min": float(lo)}
    if name in REGISTRY:
        resolved["schedule"] = {"name": name, **dataclasses.asdict(schedule.params)}
    return Setup(resolved, domain, data, sigma_data, weight, schedule, model)


def nelbo_units(setup: Setup) -> dict[str, float]:
    """The domain's NELBO units → units per example on the fixed validation subset (primary first)."""
    n = min(int(setup.recipe["eval"]["nelbo_examples"]), setup.data.val.shape[0])
    units = setup.domain.nelbo_units(setup.data, n)
    primary = setup.domain.nelbo_unit
    return {primary: units.get(primary, float(setup.domain.nelbo_count(setup.data))), **units}


def make_module(setup: Setup):
    from .module import DiffusionModule

    r = setup.recipe
    extra = {u: c for u, c in nelbo_units(setup).items() if u != setup.domain.nelbo_unit}
    return DiffusionModule(
        setup.model, setup.schedule, setup.weight,
        seed=int(r["seed"]), lr=float(r["train"]["lr"]), lr_warmup=int(r["train"]["lr_warmup"]),
        weight_decay=float(r["train"]["weight_decay"]),
        nelbo_sigma_min=float(r["eval"]["nelbo_sigma_min"]), nelbo_sigma_max=float(r["diffusion"]["sigma_max"]),
        nelbo_nodes=int(r["eval"]["nelbo_nodes"]), nelbo_seed=int(r["eval"]["nelbo_seed"]),
        nelbo_count=setup.domain.nelbo_count(setup.data), nelbo_extra_units=extra,
    )  # fmt: skip


def _device_settings(train: dict[str, Any]) -> dict[str, Any]:
    return {"accelerator": str(train["accelerator"]), "devices": train["devices"], "precision": train["precision"]}


def check_device_settings(recipe: dict[str, Any]) -> None:
    """Refuse an unusable accelerator/devices/precision before a run directory is made."""
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    settings = _device_settings(recipe["train"])
    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # the real Trainer reports the devices; this probe stays silent
    try:
        L.Trainer(**settings, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    except (MisconfigurationException, ValueError, TypeError, ImportError) as exc:
        described = ", ".join(f"{k}={v}" for k, v in settings.items())
        raise UserError(f"cannot train with {described}: {str(exc).splitlines()[0]}") from None
    finally:
        quiet.setLevel(level)


def fit(setup: Setup, run_dir: Path, resume: bool = False) -> Any:
    """Train with Lightning into run_dir; returns the module (EMA weights loaded after training)."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from .callbacks import EMA, ScheduleCallback, StepCheckpoint
    from .data import DomainDataModule

    r, t = setup.recipe, setup.recipe["train"]
    ckpt_dir = run_dir / "checkpoints"
    ckpt_path = ckpt_dir / "last.ckpt" if resume else None
    module = make_module(setup)
    datamodule = DomainDataModule(
        setup.data, int(t["batch_size"]), int(r["seed"]), int(r["eval"]["nelbo_examples"]), int(r["eval"]["nelbo_batch"])
    )
    logger = CSVLogger(save_dir=str(run_dir), name="", version="")
    if resume:
        _prepare_metrics_for_resume(run_dir / "metrics.csv", _checkpoint_step(ckpt_path), logger)
    trainer = L.Trainer(
        max_steps=int(t["max_steps"]),
        **_device_settings(t),
        logger=logger,
        callbacks=[
            EMA(float(t["ema_decay"])),
            ScheduleCallback(run_dir, setup.meta(), check_every=int(t["log_every"])),
            StepCheckpoint(ckpt_dir, int(t["checkpoint_every"])),
        ],
        val_check_interval=int(t["eval_every"]),
        check_val_every_n_epoch=None,
        log_every_n_steps=int(t["log_every"]),
        gradient_clip_val=t["grad_clip"],
        enable_progress_bar=bool(t["progress_bar"]),
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        default_root_dir=str(run_dir),
        enable_model_summary=bool(t["progress_bar"]),
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    return module, trainer


def _checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def _prepare_metrics_for_resume(path: Path, step: int, logger: Any) -> None:
    """Keep the rows logged before the checkpoint (later ones will be logged again).

    Lightning's CSV writer deletes an existing metrics.csv when it is created, so the kept rows are
    read first, written back after the writer exists, and its header seeded so it appends.
    """
    if not path.is_file():
        return
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = list(reader.fieldnames or []), [row for row in reader if int(float(row["step"])) < step]
    logger.experiment  # noqa: B018 - creates the writer (and removes the file)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    logger.experiment.metrics_keys = sorted(fields)


# ---- loading, sampling and evaluating a finished (or checkpointed) run ---------------------------


@dataclass
class LoadedRun:
    run_dir: Path
    setup: Setup
    module: Any
    step: int


def load_run(run_dir: Path, checkpoint: str = "last.ckpt") -> LoadedRun:
    run_dir = Path(run_dir)
    recipe_path = run_dir / "recipe.yaml"
    ckpt_path = run_dir / "checkpoints" / checkpoint
    if not recipe_path.is_file():
        raise UserError(f"{run_dir} is not a multidiff run directory (no recipe.yaml)")
    if not ckpt_path.is_file():
        raise UserError(f"{run_dir} has no checkpoint {ckpt_path.name} yet (train it first, or --resume)")
    recipe = parse_yaml(recipe_path.read_text())
    setup = build(recipe, run_dir)
    module = make_module(setup)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    module.load_state_dict(ckpt["state_dict"])  # the EMA weights (Lightning's weight averaging stores them here)
    module.on_load_checkpoint(ckpt)
    return LoadedRun(run_dir, setup, module.eval(), int(ckpt["global_step"]))


def device_for_inference() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def generate(
    model: DiffusionModel,
    shape: tuple[int, ...],
    n: int,
    sigmas: Tensor,
    *,
    sampler: str = "heun",
    seed: int = 0,
    batch: int = 256,
    churn: float = 0.0,
    device: Optional[torch.device] = None,
) -> Tensor:
    """n samples in the diffusion space (deterministic given seed and batch size)."""
    device = device or next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(int(seed))
    out = []
    for i in range(0, n, batch):
        b = min(batch, n - i)
        x = float(sigmas[0]) * torch.randn((b, *shape), generator=g, device=device)
        out.append(SAMPLERS[sampler](model.denoise, x, sigmas.to(device), churn=churn, generator=g).cpu())
    return torch.cat(out)


def sampling_sigmas(run: LoadedRun, kind: str, steps: int) -> Tensor:
    d, s = run.setup.recipe["diffusion"], run.setup.recipe["sample"]
    if kind not in ("karras", "loguniform", "learned") and not is_schedule_file(kind):
        raise UserError(f"--sigmas {kind!r}: choose karras, loguniform, learned or a schedule file (.json)")
    return sigma_grid(kind, steps, float(d["sigma_min"]), float(d["sigma_max"]), float(s["rho"]), schedule=run.setup.schedule)


@torch.no_grad()
def validation_nelbo(run: LoadedRun, device: torch.device) -> float:
    """The validation NELBO (same subset, nodes and noise as during training), per domain unit."""
    return validation_nelbo_nats(run, device) / (math.log(2) * run.setup.domain.nelbo_count(run.setup.data))


@torch.no_grad()
def validation_nelbo_nats(run: LoadedRun, device: torch.device) -> float:
    """The validation NELBO in nats per example (same subset, nodes and noise as during training)."""
    r, model = run.setup.recipe, run.module.model.to(device)
    n = min(int(r["eval"]["nelbo_examples"]), run.setup.data.val.shape[0])
    total, count = 0.0, 0
    for i in range(0, n, int(r["eval"]["nelbo_batch"])):
        raw = run.setup.data.val[i : min(i + int(r["eval"]["nelbo_batch"]), n)].to(device)
        ids = torch.arange(i, i + raw.shape[0])
        x = model.encode(raw)
        noise = fixed_noise(ids, tuple(x.shape[1:]), int(r["eval"]["nelbo_nodes"]) + 1, int(r["eval"]["nelbo_seed"])).to(x)
        parts = nelbo_nats(
            model.denoise, x, noise, sigma_min=float(r["eval"]["nelbo_sigma_min"]),
            sigma_max=float(r["diffusion"]["sigma_max"]), recon_nll=model.recon_nll,
        )  # fmt: skip
        total += float(parts["total"].sum())
        count += x.shape[0]
    return total / count


def evaluate(run: LoadedRun) -> dict[str, Any]:
    """NELBO + the domain's sample metrics with the recipe's fixed sampler; writes eval.json and samples."""
    r, s = run.setup.recipe, run.setup.recipe["sample"]
    device = device_for_inference()
    model = run.module.model.to(device).eval()
    nats = validation_nelbo_nats(run, device)
    units = nelbo_units(run.setup)
    nelbo = nats / (math.log(2) * units[run.setup.domain.nelbo_unit])
    sigmas = sampling_sigmas(run, str(s["sigmas"]), int(s["steps"]))
    n = max(int(r["eval"]["fd_samples"]), int(s["n"]))
    x = generate(model, run.setup.domain.example_shape(run.setup.data), n, sigmas, sampler=str(s["sampler"]),
                 seed=int(s["seed"]), batch=int(s["batch"]), churn=float(s["churn"]), device=device)  # fmt: skip
    decoded = model.decode(x.to(device)).cpu()
    files = run.setup.domain.write_samples(decoded[: int(s["n"])], run.run_dir / "samples", "final")
    result = {
        "step": run.step,
        "schedule": schedule_label(r),
        "domain": run.setup.domain.name,
        "dataset": run.setup.data.dataset,
        "nelbo": nelbo,
        "nelbo_unit": run.setup.domain.nelbo_unit,
        **{f"nelbo_{unit_key(u)}": nats / (math.log(2) * c) for u, c in units.items() if u != run.setup.domain.nelbo_unit},
        "nelbo_units_per_example": units,
        **run.setup.domain.sample_metrics(decoded[: int(r["eval"]["fd_samples"])], run.setup.data),
        "sampler": {k: s[k] for k in ("sampler", "steps", "sigmas", "rho", "churn", "seed")},
        "samples": [str(p.relative_to(run.run_dir)) for p in files],
        "created_by": f"multidiff {__version__}",
    }
    result["headline"] = {label: result[key] for key, label in run.setup.domain.headline_metrics.items() if key in result}
    write_json(run.run_dir / "eval.json", result)
    return result


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def write_recipe(run_dir: Path, recipe: dict[str, Any]) -> None:
    (run_dir / "recipe.yaml").write_text(dump(recipe))

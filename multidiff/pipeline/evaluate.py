"""Evaluating and sampling a run: its checkpoint loaded under the recipe it was trained with, the
validation NELBO and the sample metric (eval.json), samples on any grid, sampler and condition."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from .. import __version__, faults
from ..errors import UserError
from ..evaluation import QualityResult, bits, sample_quality, validation_nelbo
from ..files import RunLock
from ..recipe import RESUMABLE_KEYS, differences, flatten, load_recipe_file, resolve
from ..rundir import RunDir
from .prepare import Setup, known_defaults, prepare, sampling_grid, schedule_label


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
        return decoded_samples(setup, model, count, device, seed=s.seed if seed is None else seed, condition=condition)

    was_training = model.training
    model.eval()
    try:
        result.metrics.update(setup.group.model_metrics(model, sample, setup.data, n, guidance=s.guidance))
    finally:
        model.train(was_training)
    return result


def tracked_values(setup: Setup, metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics the domain tracks during training, as plain floats."""
    return {k: float(metrics[k]) for k in setup.domain.quality_metrics if k in metrics}


def read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path.parent.parent} has no checkpoint {path.name} yet (train it first, or --resume)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
            raise ValueError("not a multidiff checkpoint")
    except Exception as exc:  # truncated, corrupt or foreign file
        others = RunDir(path.parent.parent).step_checkpoints()
        hint = f"; copy an earlier one over it (e.g. {others[-1].name})" if others else ""
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
    where = RunDir(Path(path).parent.parent).recipe
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
    path = RunDir(run_dir).recipe
    if not path.is_file():
        raise UserError(f"{run_dir} is not a multidiff run directory (no recipe.yaml)")
    return resolve(load_recipe_file(path, what="run recipe"), str(path))


def load_run(run_dir: Path) -> tuple[Setup, int]:
    """A run's setup with its EMA weights and schedule state from ``checkpoints/last.ckpt``; its step."""
    run = RunDir(run_dir)
    setup = prepare(read_run_recipe(run.path), run.path)
    return setup, load_weights(setup, run.last_checkpoint)


def evaluate_run(setup: Setup, run_dir: Path) -> dict[str, Any]:
    """Evaluate the run's saved EMA weights (exactly what ``multidiff eval`` does): the validation
    NELBO, the sample metric at ``sample.seed`` (the last point of the quality curve) and at
    ``eval.quality_seeds − 1`` more seeds (the metric's own noise), the final samples; eval.json."""
    run = RunDir(run_dir)
    started = time.perf_counter()
    step = load_weights(setup, run.last_checkpoint)
    cfg, device = setup.cfg, device_for_inference()
    model = setup.model.to(device).eval()
    nats = validation_nelbo(model, setup.data.val, setup.nelbo, device)
    extra_bounds = setup.group.extra_nelbo(model, setup.data, setup.nelbo, device)
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
    shown = main.decoded[:n] if n <= main.decoded.shape[0] else decoded_samples(setup, model, n, device)
    files = setup.domain.write_samples(shown, run.samples, "final")
    from ..diffusion.likelihood import unit_key

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
        "samples": [str(p.relative_to(run.path)) for p in files],
        "created_by": f"multidiff {__version__}",
    }
    result["headline"] = {label: result[key] for key, label in setup.domain.headline_metrics.items() if key in result}
    timing = run.read_timing()
    if "peak_device_memory_mb" in timing:  # a GPU run: what training needed at most
        result["resources"] = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                               "peak_device_memory_mb": timing["peak_device_memory_mb"]}  # fmt: skip
    faults.point("eval", step)
    run.write_eval(result)
    run.record_timing(final_eval_s=time.perf_counter() - started)
    return result


@torch.no_grad()
def decoded_samples(setup: Setup, model: Any, n: int, device: torch.device, **sampler: Any) -> Tensor:
    """``n`` samples of ``model`` decoded to the domain's data space (on the CPU), under the recipe's
    sampler with any of its settings (``sigmas``, ``steps``, ``sampler``, ``seed``, ``churn``,
    ``condition``) replaced by keyword."""
    from ..evaluation import generate

    s = setup.cfg.sample
    opts = {"sampler": s.sampler, "seed": s.seed, "batch": s.batch, "churn": s.churn, "condition": None, **sampler}
    kind, steps = opts.pop("sigmas", s.sigmas), opts.pop("steps", s.steps)
    x = generate(model, setup.example_shape(), n, sampling_grid(setup, kind, steps), device=device, **opts)
    return model.decode(x.to(device)).cpu()


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
        condition = setup.group.condition(model, pairs, only, n, setup.data, guidance=w)
        how = f"-only-{only}" if only else "-given-" + "-".join(pairs) + (f"-guidance{w:g}" if w != 1 else "")
    decoded = decoded_samples(setup, model, n, device, sigmas=kind, steps=steps, sampler=sampler, seed=seed, condition=condition)
    tag = f"{Path(kind).stem if kind.endswith('.json') else kind}-{sampler}{steps}-seed{seed}{how}"
    return setup.domain.write_samples(decoded, RunDir(run_dir).samples, tag)


def evaluate_existing(run_dir: Path) -> dict[str, Any]:
    """``multidiff eval``: recompute eval.json from the run's last checkpoint."""
    recipe = read_run_recipe(Path(run_dir))
    with RunLock(run_dir):  # one writer per run directory: not beside a training of it
        setup = prepare(recipe, Path(run_dir))
        return evaluate_run(setup, Path(run_dir))

"""Recipes: one YAML file per domain and dataset, resolved against defaults and ``--set`` overrides.

A recipe has the sections below. ``data`` is validated by the domain adapter, ``model`` by the
backbone, ``schedule`` by the schedule registry; the others have fixed keys with the defaults
listed here. Every problem is a :class:`UserError` that names the file and the key.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


class _Loader(yaml.SafeLoader):
    """YAML that also reads 1e-3 as a float (YAML 1.1 wants 1.0e-3; users write 1e-3)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)

SECTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "diffusion": {
        "sigma_min": 0.002,  # σ range (σ, not ln σ)
        "sigma_max": 80.0,
        "sigma_data": None,  # RMS of the encoded data; measured on the training split when null
        "weighting": "edm",  # fixed loss weight w(σ): edm | snr | uniform
    },
    "train": {
        "max_steps": 2000,
        "batch_size": 64,
        "lr": 2e-3,
        "lr_warmup": 100,  # steps of linear learning-rate warm-up
        "weight_decay": 0.0,
        "grad_clip": 1.0,
        "ema_decay": 0.999,  # EMA of weights, used for validation, sampling and evaluation
        "precision": "32-true",
        "accelerator": "auto",
        "devices": 1,
        "log_every": 25,
        "eval_every": 250,  # steps between validation NELBO evaluations
        "checkpoint_every": 500,
        "progress_bar": True,
    },
    "eval": {
        "nelbo_examples": 256,  # fixed validation subset for the NELBO
        "nelbo_nodes": 32,  # midpoint-rule nodes over ln σ (schedule-independent)
        "nelbo_sigma_min": None,  # σ where the bound decodes; null: the domain's choice, else diffusion.sigma_min
        "nelbo_seed": 1234,
        "nelbo_batch": 128,
        "fd_samples": 512,  # generated samples for the Fréchet distance
    },
    "sample": {
        "n": 64,
        "steps": 32,
        "sampler": "heun",  # heun | euler
        "sigmas": "karras",  # karras | loguniform | learned | PATH.json
        "rho": 7.0,
        "churn": 0.0,
        "seed": 0,
        "batch": 256,
    },
}
TOP_LEVEL = {"name", "domain", "seed", "data", "model", "diffusion", "schedule", "train", "eval", "sample", "description"}


def load_recipe_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe {path} not found")
    try:
        raw = parse_yaml(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise UserError(f"recipe {path} is not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise UserError(f"recipe {path}: top level must be a mapping of sections")
    return raw


def resolve(raw: dict[str, Any], source: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Fill defaults, apply ``key=value`` overrides (dotted keys) and check the generic sections."""
    recipe = copy.deepcopy(raw)
    unknown = sorted(set(recipe) - TOP_LEVEL)
    if unknown:
        raise UserError(f"recipe {source}: unknown section {unknown[0]!r}; sections are {', '.join(sorted(TOP_LEVEL))}")
    for key in ("name", "domain"):
        if not isinstance(recipe.get(key), str) or not recipe[key]:
            raise UserError(f"recipe {source}: '{key}' must be a non-empty string")
    recipe.setdefault("seed", 0)
    for section in ("data", "model"):
        recipe.setdefault(section, {})
    schedule = recipe.setdefault("schedule", {"name": "edm"})
    if isinstance(schedule, str):
        recipe["schedule"] = {"name": schedule}
    for section, defaults in SECTION_DEFAULTS.items():
        given = recipe.get(section) or {}
        if not isinstance(given, dict):
            raise UserError(f"recipe {source}: section '{section}' must be a mapping")
        bad = sorted(set(given) - set(defaults))
        if bad:
            raise UserError(
                f"recipe {source}: unknown key '{section}.{bad[0]}'; valid keys: {', '.join(sorted(defaults))}"
            )
        recipe[section] = {**defaults, **given}
    for section in ("data", "model", "schedule"):
        if not isinstance(recipe[section], dict):
            raise UserError(f"recipe {source}: section '{section}' must be a mapping")
    for item in overrides or []:
        apply_override(recipe, item)
    _check_types(recipe, source)
    return recipe


def apply_override(recipe: dict[str, Any], item: str) -> None:
    """Apply one ``--set section.key=value``; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected key=value, e.g. train.max_steps=500")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    try:
        value = parse_yaml(text) if text.strip() else None
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
    if section in SECTION_DEFAULTS and parts[1] not in SECTION_DEFAULTS[section]:
        raise UserError(f"--set {key}: unknown key; valid keys in '{section}': {', '.join(sorted(SECTION_DEFAULTS[section]))}")
    node = recipe.setdefault(section, {})
    for p in parts[1:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: {p!r} is not a mapping")
    node[parts[-1]] = value


_NUMBER = (int, float)
_TYPES = {
    "diffusion": {"sigma_min": _NUMBER, "sigma_max": _NUMBER, "sigma_data": (*_NUMBER, type(None)), "weighting": str},
    "train": {
        "max_steps": int, "batch_size": int, "lr": _NUMBER, "lr_warmup": int, "weight_decay": _NUMBER,
        "grad_clip": (*_NUMBER, type(None)), "ema_decay": _NUMBER, "precision": (str, int),
        "accelerator": str, "devices": (int, str, list), "log_every": int, "eval_every": int,
        "checkpoint_every": int, "progress_bar": bool,
    },
    "eval": {
        "nelbo_examples": int, "nelbo_nodes": int, "nelbo_sigma_min": (*_NUMBER, type(None)), "nelbo_seed": int,
        "nelbo_batch": int, "fd_samples": int,
    },
    "sample": {
        "n": int, "steps": int, "sampler": str, "sigmas": str, "rho": _NUMBER, "churn": _NUMBER, "seed": int,
        "batch": int,
    },
}  # fmt: skip
_POSITIVE = {
    ("diffusion", "sigma_min"), ("diffusion", "sigma_max"), ("train", "max_steps"), ("train", "batch_size"),
    ("train", "lr"), ("train", "eval_every"), ("train", "checkpoint_every"), ("train", "log_every"),
    ("eval", "nelbo_examples"), ("eval", "nelbo_nodes"), ("eval", "nelbo_batch"), ("sample", "n"),
    ("sample", "steps"), ("sample", "batch"),
}  # fmt: skip


def _check_types(recipe: dict[str, Any], source: str) -> None:
    for section, types in _TYPES.items():
        for key, expected in types.items():
            value = recipe[section][key]
            if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
                raise UserError(f"recipe {source}: '{section}.{key}' has invalid value {value!r}")
            if (section, key) in _POSITIVE and not value > 0:
                raise UserError(f"recipe {source}: '{section}.{key}' must be > 0, got {value!r}")
    d = recipe["diffusion"]
    if not d["sigma_min"] < d["sigma_max"]:
        raise UserError(f"recipe {source}: diffusion.sigma_min must be below diffusion.sigma_max")
    if d["sigma_data"] is not None and not d["sigma_data"] > 0:
        raise UserError(f"recipe {source}: diffusion.sigma_data must be > 0 or null")
    if not isinstance(recipe["seed"], int) or isinstance(recipe["seed"], bool):
        raise UserError(f"recipe {source}: 'seed' must be an integer")
    if recipe["sample"]["sampler"] not in ("heun", "euler"):
        raise UserError(f"recipe {source}: sample.sampler must be heun or euler")
    if not isinstance(recipe["schedule"].get("name"), str):
        raise UserError(f"recipe {source}: schedule.name must be a schedule name or a .json file")


def select_schedule(recipe: dict[str, Any], name: str) -> dict[str, Any]:
    """The recipe with its schedule switched to ``name`` (the one flag that makes a baseline).

    Parameters in the recipe belong to the recipe's own schedule; a different schedule starts
    from its defaults (later ``--set schedule.KEY=V`` still apply).
    """
    out = copy.deepcopy(recipe)
    current = out.get("schedule") or {}
    current_name = current if isinstance(current, str) else current.get("name")
    if current_name != name:
        out["schedule"] = {"name": name}
    return out


def dump(recipe: dict[str, Any]) -> str:
    return yaml.safe_dump(recipe, sort_keys=False)

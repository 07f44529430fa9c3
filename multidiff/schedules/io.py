"""The schedule file: versioned, self-describing JSON, validated field by field."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import UserError
from ..files import atomic_write_text
from ..textdata import parse_json
from .table import ScheduleTable

FORMAT = "multidiff.schedule"
VERSION = 1
_REQUIRED = ("method", "sigma_min", "sigma_max", "u", "pdf", "cdf")


@dataclass
class ScheduleFile:
    """A loaded schedule file: the table plus where it came from (domain, dataset, σ_data, ...)."""

    table: ScheduleTable
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""


def table_to_json(table: ScheduleTable, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    meta = meta or {}
    return {
        "format": FORMAT,
        "version": VERSION,
        "method": table.method,
        "domain": meta.get("domain"),
        "dataset": meta.get("dataset"),
        "sigma_data": meta.get("sigma_data"),
        "sigma_min": table.sigma_min,
        "sigma_max": table.sigma_max,
        "weighting": meta.get("weighting"),
        "u": list(table.u),
        "pdf": list(table.pdf),
        "cdf": list(table.cdf),
        "profile": table.profile,
        "gate": table.gate,
        "params": table.params,
        "sampling": table.sampling,
        "notes": list(table.notes),
        "step": int(table.step),
        "info": meta.get("info") or {},
        "created_by": f"multidiff {__version__}",
    }


def save_schedule_file(path: str | os.PathLike, table: ScheduleTable, meta: dict[str, Any] | None = None) -> Path:
    """Write atomically (temp file + rename), so a crash never leaves a half-written schedule."""
    return atomic_write_text(path, json.dumps(table_to_json(table, meta), indent=1, allow_nan=False))


def load_schedule_file(path: str | os.PathLike) -> ScheduleFile:
    """Read and validate a schedule file; every problem is a UserError naming the file and field."""
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise UserError(f"schedule file {name} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"schedule file {name} is not UTF-8 text ({exc.reason})") from None
    data = parse_json(text, f"schedule file {name}")  # bounded; NaN/Infinity literals and duplicate keys refused
    if not isinstance(data, dict):
        raise UserError(f"schedule file {name}: top level must be a JSON object")
    if data.get("format") != FORMAT:
        raise UserError(f"schedule file {name}: field 'format' must be '{FORMAT}', got {data.get('format')!r}")
    if data.get("version") != VERSION:
        raise UserError(
            f"schedule file {name}: field 'version' is {data.get('version')!r}; this multidiff reads version {VERSION}"
        )
    for key in _REQUIRED:
        if key not in data:
            raise UserError(f"schedule file {name}: missing field '{key}'")
    smin, smax = _positive(name, data, "sigma_min"), _positive(name, data, "sigma_max")
    if not smin < smax:
        raise UserError(f"schedule file {name}: 'sigma_min' ({smin}) must be below 'sigma_max' ({smax})")
    u = _numbers(name, data, "u")
    pdf = _numbers(name, data, "pdf")
    cdf = _numbers(name, data, "cdf")
    if len(u) < 2:
        raise UserError(f"schedule file {name}: field 'u' needs at least 2 points")
    for key, arr in (("pdf", pdf), ("cdf", cdf)):
        if len(arr) != len(u):
            raise UserError(f"schedule file {name}: field '{key}' has {len(arr)} values but 'u' has {len(u)}")
    if not (np.diff(u) > 0).all():
        raise UserError(f"schedule file {name}: field 'u' must be strictly increasing")
    if abs(u[0] - math.log(smin)) > 1e-6 or abs(u[-1] - math.log(smax)) > 1e-6:
        raise UserError(
            f"schedule file {name}: field 'u' must span [ln sigma_min, ln sigma_max] = "
            f"[{math.log(smin):.6g}, {math.log(smax):.6g}], got [{u[0]:.6g}, {u[-1]:.6g}]"
        )
    if (pdf < 0).any():
        raise UserError(f"schedule file {name}: field 'pdf' has negative values")
    if (np.diff(cdf) < -1e-12).any():
        raise UserError(f"schedule file {name}: field 'cdf' is not monotone non-decreasing")
    if abs(cdf[0]) > 1e-6 or abs(cdf[-1] - 1) > 1e-6:
        raise UserError(f"schedule file {name}: field 'cdf' must run from 0 to 1, got {cdf[0]:.6g} to {cdf[-1]:.6g}")
    trapezoid = np.concatenate([[0.0], np.cumsum(0.5 * np.diff(u) * (pdf[:-1] + pdf[1:]))])
    if np.abs(trapezoid - cdf).max() > 1e-3:
        raise UserError(
            f"schedule file {name}: fields 'pdf' and 'cdf' are inconsistent "
            f"(integral of pdf differs from cdf by {np.abs(trapezoid - cdf).max():.3g})"
        )
    method = data.get("method")
    if not isinstance(method, str) or not method:
        raise UserError(f"schedule file {name}: field 'method' must be a non-empty string, got {method!r}")
    step = data.get("step", 0)
    if step is None:
        step = 0
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise UserError(f"schedule file {name}: field 'step' must be a non-negative integer, got {step!r}")
    profile = data.get("profile") or {}
    if not isinstance(profile, dict):
        raise UserError(f"schedule file {name}: field 'profile' must be an object")
    lists = {key: _numbers(name, profile, key, prefix="profile.") for key in profile}
    if "u" in lists:
        pu = lists["u"]
        if pu.size and (not (np.diff(pu) > 0).all() or pu[0] < u[0] - 1e-6 or pu[-1] > u[-1] + 1e-6):
            raise UserError(f"schedule file {name}: field 'profile.u' must increase strictly within [ln sigma_min, ln sigma_max]")
    for key, values in lists.items():
        expected = len(lists["u"]) if "u" in lists else len(u)
        if len(values) != expected:
            against = "'profile.u'" if "u" in lists else "'u'"
            raise UserError(f"schedule file {name}: field 'profile.{key}' has {len(values)} values but {against} has {expected}")
    gate = data.get("gate") or {}
    if not isinstance(gate, dict):
        raise UserError(f"schedule file {name}: field 'gate' must be an object")
    for key in ("c", "n"):
        if key in gate:
            _positive(name, gate, key, prefix="gate.")
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise UserError(f"schedule file {name}: field 'params' must be an object")
    sampling = data.get("sampling") or {}
    if not isinstance(sampling, dict) or (sampling and set(sampling) != {"u", "density"}):
        raise UserError(f"schedule file {name}: field 'sampling' must be an object with lists 'u' and 'density'")
    if sampling:
        su, sd = _numbers(name, sampling, "u", prefix="sampling."), _numbers(name, sampling, "density", prefix="sampling.")
        if len(su) != len(sd) or len(su) < 2 or not (np.diff(su) > 0).all() or (sd < 0).any() or not sd.sum() > 0:
            raise UserError(f"schedule file {name}: field 'sampling' needs increasing 'u' and non-negative 'density' of equal length")
    elif gate.get("c") and profile.get("u") and profile.get("rate"):
        sampling = _gated_rate(profile, gate, smin, smax)  # files written before 'sampling' existed
    notes = data.get("notes") or []
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise UserError(f"schedule file {name}: field 'notes' must be a list of strings")
    table = ScheduleTable(
        method=method,
        sigma_min=smin,
        sigma_max=smax,
        u=u.tolist(),
        pdf=pdf.tolist(),
        cdf=cdf.tolist(),
        profile={k: [float(x) for x in v] for k, v in profile.items()},
        gate=gate,
        params=params,
        step=step,
        sampling={k: [float(x) for x in v] for k, v in sampling.items()},
        notes=list(notes),
    )
    info = data.get("info") or {}
    if not isinstance(info, dict):
        raise UserError(f"schedule file {name}: field 'info' must be an object")
    meta = {k: data.get(k) for k in ("domain", "dataset", "sigma_data", "weighting", "created_by")}
    meta["info"] = info
    return ScheduleFile(table=table, meta=meta, path=name)


def _gated_rate(profile: dict[str, Any], gate: dict[str, Any], smin: float, smax: float) -> dict[str, list[float]]:
    """The sampling density of a file from before the 'sampling' field: the gated rate r·g of its
    profile, g(σ) = σⁿ/(σⁿ + cⁿ) as the file's 'gate' records it (flat to the range's ends)."""
    u, rate = np.asarray(profile["u"], dtype=float), np.asarray(profile["rate"], dtype=float)
    info = rate / (1 + (float(gate["c"]) / np.exp(u)) ** float(gate.get("n", 3.0)))
    lo, hi = math.log(smin), math.log(smax)
    if u[0] > lo:
        u, info = np.r_[lo, u], np.r_[info[0], info]
    if u[-1] < hi:
        u, info = np.r_[u, hi], np.r_[info, info[-1]]
    return {"u": u.tolist(), "density": info.tolist()}


def _positive(name: str, data: dict, key: str, prefix: str = "") -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UserError(f"schedule file {name}: field '{prefix}{key}' must be a positive finite number, got {value!r}")
    return float(value)


def _numbers(name: str, data: dict, key: str, prefix: str = "") -> np.ndarray:
    values = data.get(key)
    if not isinstance(values, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
        raise UserError(f"schedule file {name}: field '{prefix}{key}' must be a list of numbers")
    arr = np.asarray(values, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise UserError(f"schedule file {name}: field '{prefix}{key}' has non-finite values")
    return arr

"""The yardsticks of a comparison: steps to reach a target (interpolated), speedups, and intervals
across seeds that say when a difference is real.

- :func:`steps_to_reach`: the step from which a metric curve stays at or beyond a target value,
  linearly interpolated between evaluations (a noisy sample metric that dips below the target once
  and climbs back has not reached it).
- :func:`speedup`: the baseline's steps / the steps another run needs to reach the baseline's final
  value (below 1 when the baseline gets there first: then the baseline's steps to the other's final
  value / the other's steps).
- :func:`summarize_ratios`: the geometric mean of per-seed speedups with a Student-t 95 % interval
  of the mean log speedup (log space, so 2× and ½× average to 1×), and a verdict in words.
- :func:`paired_difference`: the mean per-seed difference to the baseline (same seed: same initial
  weights and data order) with a Student-t 95 % interval.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
from scipy import stats

Curve = tuple[Sequence[int], Sequence[float]]


def _better(value: float, target: float, lower: bool) -> bool:
    return value <= target if lower else value >= target


def steps_to_reach(steps: Sequence[int], values: Sequence[float], target: float, lower: bool = True) -> Optional[float]:
    """The step from which the curve stays at or beyond ``target`` until its end (linear
    interpolation into the last crossing); None if its last value has not reached it. ``lower``:
    smaller values are better. For a monotone curve this is its first crossing."""
    if not len(values) or not _better(values[-1], target, lower):
        return None
    misses = [i for i, v in enumerate(values) if not _better(v, target, lower)]
    if not misses:
        return float(steps[0])
    i = misses[-1]
    s0, v0, s1, v1 = steps[i], values[i], steps[i + 1], values[i + 1]
    return s0 + (s1 - s0) * (v0 - target) / (v0 - v1) if v0 != v1 else float(s1)


def speedup(baseline: Curve, other: Curve, lower: bool = True) -> dict[str, Any]:
    """How much sooner ``other`` reaches the baseline's final value: {reached, steps, ratio, target,
    at_least}. ``at_least``: the curve was already there at its first evaluation, so when it got
    there is unknown and the ratio is a lower bound. A curve of one evaluation gives no ratio."""
    if not len(baseline[0]) or not len(other[0]):
        return {"reached": False, "steps": None, "ratio": None, "target": None, "at_least": False, "at_most": False}
    target, base_steps = float(baseline[1][-1]), float(baseline[0][-1])
    reach = steps_to_reach(other[0], other[1], target, lower)
    if len(baseline[0]) < 2 or len(other[0]) < 2:  # final values only: no steps to compare
        return {"reached": reach is not None, "steps": None, "ratio": None, "target": target, "at_least": False, "at_most": False}
    if reach is not None:
        return {"reached": True, "steps": reach, "ratio": base_steps / max(reach, 1.0), "target": target,
                "at_least": reach <= float(other[0][0]), "at_most": False}  # fmt: skip
    back = steps_to_reach(baseline[0], baseline[1], float(other[1][-1]), lower)  # the baseline gets there first
    ratio = back / float(other[0][-1]) if back else None
    # a baseline already there at its first evaluation got there at that step or sooner: an upper bound
    return {"reached": False, "steps": None, "ratio": ratio, "target": target, "at_least": False,
            "at_most": back is not None and back <= float(baseline[0][0])}  # fmt: skip


def bound_mark(summary: dict[str, Any]) -> str:
    """"≥ " before a summarized speedup that is a lower bound, "≤ " before an upper bound (see
    :func:`speedup`), else ""."""
    return "≥ " if summary.get("at_least") else "≤ " if summary.get("at_most") else ""


#: how a speedup's interval is made, in the words reports print beside it
INTERVAL_METHOD = "95 % t-interval of the mean log speedup over seeds"


def summarize_ratios(ratios: Sequence[Optional[float]], level: float = 0.95, at_least: Sequence[bool] = (),
                     at_most: Sequence[bool] = ()) -> dict[str, Any]:  # fmt: skip
    """Per-seed speedups → geometric mean, a Student-t interval of the mean log speedup (back on the
    ratio scale) and a verdict. ``at_least`` marks per-seed ratios that are lower bounds, ``at_most``
    upper bounds; if any is, so are the mean and the interval (bounds that agree with each other:
    a lower bound wins a mix, since it is the one that can turn a verdict).

    Why a t-interval: with 2–5 seeds a percentile bootstrap of the seeds is their range (three
    seeds: each end is one seed, since all three resamples equal to it has probability 1/27), far
    narrower than a 95 % interval. Log speedups of independent seeds are close to normal, and the
    t-interval then covers the true geometric mean in 95 % of seed sets at any n ≥ 2 (tested)."""
    valid = [r for r in ratios if r is not None and r > 0 and math.isfinite(r)]
    if not valid:
        return {"mean": None, "interval": None, "verdict": "not measurable", "seeds": len(ratios), "at_least": False,
                "at_most": False, "method": INTERVAL_METHOD}  # fmt: skip
    logs = np.log(valid)
    mean = float(np.exp(logs.mean()))
    ci = t_interval(logs, level)
    interval = (float(np.exp(ci[0])), float(np.exp(ci[1]))) if ci else None
    bound = any(at_least)
    upper = not bound and any(at_most)
    words = verdict(interval, len(valid), reference=1.0) + ("; a lower bound (reached by its first evaluation)" if bound else "")
    words += "; an upper bound (the baseline was there by its first evaluation)" if upper else ""
    return {"mean": mean, "interval": interval, "verdict": words, "seeds": len(valid), "at_least": bound, "at_most": upper,
            "method": INTERVAL_METHOD}  # fmt: skip


def verdict(interval: Optional[tuple[float, float]], n: int, reference: float, higher_is_better: bool = True) -> str:
    """'faster'/'better', 'slower'/'worse' when the interval excludes ``reference``, else 'within noise'."""
    if interval is None:
        return "one seed: no interval" if n <= 1 else "no interval"
    lo, hi = interval
    if lo <= reference <= hi:
        return "within noise"
    above = lo > reference
    return "faster" if above == higher_is_better else "slower"


def t_interval(values: Sequence[float], level: float = 0.95) -> Optional[tuple[float, float]]:
    """Student-t interval of the mean; None with fewer than two values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size < 2:
        return None
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return float(v.mean() - half), float(v.mean() + half)


def format_spread(mean: Optional[float], sd: Optional[float]) -> str:
    """"mean ± sd" as reports and tables print it (4 and 2 significant digits; "–" for no mean)."""
    return "–" if mean is None else f"{mean:.4g}" + (f" ± {sd:.2g}" if sd is not None else "")


def mean_sd(values: Sequence[Optional[float]]) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (None when undefined)."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None, None
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)


def paired_difference(values: Sequence[Optional[float]], baseline: Sequence[Optional[float]], lower: Optional[bool]) -> dict[str, Any]:
    """Per-seed difference to the baseline (same seed); its mean, t-interval and a verdict in words."""
    diffs = [a - b for a, b in zip(values, baseline) if a is not None and b is not None]
    if not diffs:
        return {"mean": None, "interval": None, "verdict": "–", "diffs": []}
    interval = t_interval(diffs)
    if interval is None:
        word = "one seed: no interval"
    elif interval[0] <= 0 <= interval[1]:
        word = "within noise"
    elif lower is None:
        word = "higher" if interval[0] > 0 else "lower"
    else:
        word = "better" if (interval[1] < 0) == lower else "worse"
    return {"mean": float(np.mean(diffs)), "interval": interval, "verdict": word, "diffs": diffs}

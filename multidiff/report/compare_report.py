"""The report of a comparison (``multidiff compare`` and ``train --baseline``): several schedules,
each trained under the same seeds, budget, model and evaluation. Domain-agnostic: it reads only
run directories (metrics.csv, eval.json, schedule.json, schedule_history/refreshes.csv).

For every headline metric (the NELBO and the domain's sample-quality metrics) it gives the final
value (mean and seed-to-seed spread), the difference to the baseline paired by seed with a 95 %
interval, the steps each run needs to reach the baseline's final value and the speedup with a
95 % t-interval of the mean log speedup across seeds; an interval that covers no change is reported as
"within noise". The sample metrics' own evaluation noise (same weights, other sample seeds) is
stated beside them.

Writes ``report.md``, ``summary.json`` (every per-seed value) and three PNGs: ``curves.png``
(every metric against step, mean over seeds with the min–max band), ``densities.png`` (every
schedule's final training density over ln σ) and ``profiles.png`` (what the learned schedules
estimated).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..rundir import RunDir  # noqa: E402
from ..schedules.base import ScheduleTable  # noqa: E402
from ..schedules.io import load_schedule_file  # noqa: E402
from ..schedules.registry import is_fixed_method  # noqa: E402
from .curves import NELBO, final_values, metric_curves  # noqa: E402
from .plots import density_peak, plot_density_axes, plot_learned_profile_axes  # noqa: E402
from .stats import bound_mark, format_spread, mean_sd, paired_difference, speedup, summarize_ratios  # noqa: E402


def refresh_cost(run_dir: Path, steps: int) -> Optional[dict[str, float]]:
    """Mean cost of a refresh in training steps, and all refreshes' share of the training time."""
    rows = [r for r in RunDir(run_dir).read_refreshes() if r.get("cost_steps")]
    if not rows or steps <= 0:
        return None
    cost = [float(r["cost_steps"]) for r in rows]
    step_s = float(np.median([float(r["step_s"]) for r in rows]))
    spent = sum(float(r["refresh_s"]) for r in rows)
    probe = [float(r["probe_examples"]) for r in rows if r.get("probe_examples")]
    return {
        "steps_per_refresh": float(np.mean(cost)),
        "share": spent / (spent + steps * step_s),
        "probe_examples_per_refresh": float(np.mean(probe)) if probe else 0.0,
    }


_CURVES: dict[Path, dict[str, Any]] = {}


def _curves(run_dir: Path) -> dict[str, Any]:
    key = Path(run_dir)
    if key not in _CURVES:
        _CURVES[key] = metric_curves(key)
    return _CURVES[key]


def _fmt(value: Optional[float], nd: int = 4) -> str:
    return "–" if value is None else f"{value:.{nd}g}"


def _fmt_interval(interval: Optional[tuple[float, float]], nd: int = 3) -> str:
    return f"[{interval[0]:.{nd}g}, {interval[1]:.{nd}g}]" if interval else ""


def metric_specs(evals: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The metrics compared: the NELBO (lower is better) and every tracked sample-quality metric,
    with its label and direction (None: a diagnostic, shown but not raced to)."""
    unit = next((e["nelbo_unit"] for e in evals if e.get("nelbo_unit")), "bits/dim")
    specs: dict[str, dict[str, Any]] = {NELBO: {"label": f"NELBO ({unit})", "lower": True}}
    for ev in evals:
        labels = dict(ev.get("metric_labels") or {})
        for key, direction in (ev.get("quality_directions") or {}).items():
            specs.setdefault(key, {"label": labels.get(key, key), "lower": None if direction is None else direction == "lower"})
    return specs


def _series(curve: dict[str, Any], key: str) -> tuple[list[int], list[float]]:
    return curve.get(key, ([], []))


def race(runs: list[dict[str, Any]], reference: list[dict[str, Any]], key: str, lower: Optional[bool],
         eval_sd: Optional[float]) -> dict[str, Any]:
    """One schedule's runs against a reference's, paired by seed, on metric ``key`` (each run as
    {"curves", "finals"}): the difference of final values with its interval, and (for a metric with
    a direction) the steps each seed's curve needs to reach the reference curve's last value and the
    speedup."""
    finals = [r["finals"].get(key) for r in runs]
    ref_finals = [r["finals"].get(key) for r in reference]
    m: dict[str, Any] = {"difference": paired_difference(finals, ref_finals, lower)}
    if lower is None:
        return m
    per_seed = [speedup(_series(r["curves"], key), _series(c["curves"], key), lower) for r, c in zip(reference, runs)]
    m["steps_to_baseline"] = [p["steps"] for p in per_seed]
    m["reached"] = [p["reached"] for p in per_seed]
    m["speedup_per_seed"] = [p["ratio"] for p in per_seed]
    m["speedup_at_least"] = [p["at_least"] for p in per_seed]
    m["speedup_at_most"] = [p["at_most"] for p in per_seed]
    m["speedup"] = summarize_ratios(m["speedup_per_seed"], at_least=m["speedup_at_least"], at_most=m["speedup_at_most"])
    if final_within_noise(m["difference"], eval_sd):
        m["speedup"]["verdict"] += "; final values within noise"
    return m


def is_fixed_run(run_dir: Path) -> bool:
    """Whether a run trained under fixed schedules only (closed forms that do not adapt to the data
    or the model), read from the methods its exported schedule files name."""
    methods = [load_schedule_file(path).table.method for path in RunDir(run_dir).schedule_files().values()]
    return bool(methods) and all(is_fixed_method(m) for m in methods)


def strongest_fixed(schedules: dict[str, Any], specs: dict[str, dict[str, Any]], fixed: list[str]) -> dict[str, str]:
    """Per metric with a direction, the fixed schedule with the best mean final value over the seed
    set (the first listed on a tie); metrics no fixed schedule has a value for are left out."""
    out = {}
    for key, spec in specs.items():
        if spec["lower"] is None:
            continue
        scored = [(schedules[label]["metrics"][key]["mean"], label) for label in fixed
                  if schedules[label]["metrics"][key]["mean"] is not None]  # fmt: skip
        if scored:
            sign = 1.0 if spec["lower"] else -1.0
            out[key] = min(scored, key=lambda t: sign * t[0])[1]
    return out


def summarize(groups: dict[str, list[Path]], baseline: str) -> dict[str, Any]:
    """Per schedule and metric: per-seed final values, their mean and spread, the paired difference
    to the baseline, per-seed steps to the baseline's final value and speedups, with intervals; and
    the same against the strongest fixed schedule of each metric (``strongest_fixed``; under
    ``vs_strongest_fixed``)."""
    curves = {label: [_curves(d) for d in runs] for label, runs in groups.items()}
    per_run = {label: [{"curves": c, "finals": final_values(d, c)} for d, c in zip(runs, curves[label])] for label, runs in groups.items()}
    evals = {label: [RunDir(d).read_eval() or {} for d in runs] for label, runs in groups.items()}
    specs = metric_specs([e for es in evals.values() for e in es])
    fixed = [label for label, runs in groups.items() if is_fixed_run(runs[0])]
    out: dict[str, Any] = {"metrics": specs, "schedules": {}, "fixed": fixed}
    for label, runs in groups.items():
        entry: dict[str, Any] = {"runs": [str(d) for d in runs], "metrics": {}}
        for key, spec in specs.items():
            finals = [r["finals"].get(key) for r in per_run[label]]
            m: dict[str, Any] = {"final": finals, "final_steps": [_series(c, key)[0][-1] if _series(c, key)[0] else None for c in curves[label]]}
            m["mean"], m["sd"] = mean_sd(finals)
            noise = [e.get("quality_noise", {}).get(key, {}).get("sd") for e in evals[label]]
            m["eval_noise_sd"] = mean_sd(noise)[0]
            if label != baseline:
                m.update(race(per_run[label], per_run[baseline], key, spec["lower"], m["eval_noise_sd"]))
            entry["metrics"][key] = m
        costs = [refresh_cost(d, (c.get(NELBO, ([0], []))[0] or [0])[-1]) for d, c in zip(runs, curves[label])]
        costs = [c for c in costs if c]
        entry["refresh_cost"] = {k: float(np.mean([c[k] for c in costs])) for k in costs[0]} if costs else None
        entry["headline"] = {k: mean_sd([e.get("headline", {}).get(k) for e in evals[label]])
                             for k in dict.fromkeys(k for e in evals[label] for k in e.get("headline", {}))
                             if all(isinstance(e.get("headline", {}).get(k), (int, float)) for e in evals[label])}  # fmt: skip
        out["schedules"][label] = entry
    out["strongest_fixed"] = strongest_fixed(out["schedules"], specs, fixed)
    for key, ref in out["strongest_fixed"].items():
        for label, entry in out["schedules"].items():
            if label != ref:
                m = entry["metrics"][key]
                entry["metrics"][key]["vs_strongest_fixed"] = {
                    "schedule": ref, **race(per_run[label], per_run[ref], key, specs[key]["lower"], m["eval_noise_sd"])}
    return out


def final_within_noise(difference: dict[str, Any], eval_sd: Optional[float]) -> bool:
    """Whether the final values cannot be told apart: the paired interval covers 0 (several seeds),
    or with one seed the difference is below twice the metric's own evaluation noise."""
    if difference.get("interval"):
        return difference["interval"][0] <= 0 <= difference["interval"][1]
    mean = difference.get("mean")
    return mean is not None and eval_sd is not None and abs(mean) < 2 * eval_sd


def plot_metric_curves(groups: dict[str, list[Path]], specs: dict[str, dict[str, Any]], path: Path) -> Path:
    """One panel per metric: mean over seeds against step, with the min–max band."""
    keys = list(specs)
    fig, axes = plt.subplots(1, len(keys), figsize=(6.2 * len(keys), 4.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, runs in groups.items():
            curves = [dict(zip(*_curves(d).get(key, ([], [])))) for d in runs]
            steps = sorted(set.intersection(*[set(c) for c in curves])) if curves and all(curves) else []
            if not steps:
                continue
            values = np.array([[c[s] for s in steps] for c in curves])
            (line,) = ax.plot(steps, values.mean(0), marker="o", ms=3, label=label)
            if len(runs) > 1:
                ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.15)
        ax.set_xlabel("training step")
        ax.set_ylabel(specs[key]["label"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        ax.set_title(f"{specs[key]['label']} (mean over seeds; band: min–max)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(groups: dict[str, list[Path]], baseline: str, out_dir: Path, title: str, seeds: list[int]) -> Path:
    """``out_dir/report.md`` (+ summary.json and PNGs) for ``groups``: label → run dirs, one per seed."""
    out_dir = Path(out_dir)
    _CURVES.clear()  # read every run's metrics once per report
    summary = summarize(groups, baseline)
    specs = summary["metrics"]
    tables = _tables(groups)
    curves_png = plot_metric_curves(groups, specs, out_dir / "curves.png")
    dens = plot_densities(tables, out_dir / "densities.png") if tables else None
    profiles = plot_profiles(groups, tables, out_dir / "profiles.png")
    (out_dir / "summary.json").write_text(json.dumps({"baseline": baseline, "seeds": seeds, **summary}, indent=1, default=str))

    k = len(seeds)
    lines = [f"# {title}", "",
             f"{len(groups)} schedules × {k} seed(s) ({', '.join(map(str, seeds))}): identical model, initial weights, "
             f"data order, step budget and evaluation; only the training noise distribution differs. "
             f"Baseline: **{baseline}**. Values are the mean over seeds ± the seed-to-seed standard deviation"
             f"{'' if k > 1 else ' (one seed: no spread, and no interval can separate close results)'}.", ""]  # fmt: skip
    extra = [h for h in dict.fromkeys(h for s in summary["schedules"].values() for h in s["headline"])
             if h not in {spec["label"] for spec in specs.values()}]  # fmt: skip
    head = ["schedule", *[spec["label"] for spec in specs.values()], *extra, "density peak σ", "refresh cost"]
    lines += ["## Final values", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, s in summary["schedules"].items():
        cells = [format_spread(s["metrics"][key]["mean"], s["metrics"][key]["sd"]) for key in specs]
        cells += [format_spread(*s["headline"].get(h, (None, None))) for h in extra]
        cost = s["refresh_cost"]
        cost_txt = f"{cost['steps_per_refresh']:.3g} steps/refresh ({100 * cost['share']:.1f}% of training)" if cost else "–"
        peak = _peaks(tables.get(label, {}))
        lines.append("| " + " | ".join([label, *cells, peak, cost_txt]) + " |")
    noise_lines = []
    for key, spec in specs.items():
        if key == NELBO:
            continue
        sds = [s["metrics"][key]["eval_noise_sd"] for s in summary["schedules"].values() if s["metrics"][key]["eval_noise_sd"] is not None]
        if sds:
            noise_lines.append(f"- {spec['label']}: evaluation noise (same weights, other sample seeds) sd ≈ {np.mean(sds):.3g}; "
                               f"differences smaller than that are not resolved by this metric.")  # fmt: skip
    run_evals = [RunDir(d).read_eval() or {} for runs in groups.values() for d in runs]
    larger = sorted({(e["quality_samples"], e["final_quality_samples"]) for e in run_evals
                     if e.get("final_quality_samples", 0) > e.get("quality_samples", 0)})  # fmt: skip
    if larger:
        noise_lines.append("- Sample metrics: final values (and their evaluation noise) on " + ", ".join(f"{f}" for _, f in larger)
                           + " samples per seed; the curves, and so the steps and speedups, on " + ", ".join(f"{n}" for n, _ in larger)
                           + " per point (the final point: the first of those samples).")  # fmt: skip
    lines += ["", "The NELBO uses fixed noise and a fixed quadrature, so for given weights it has no evaluation noise; "
              "its only noise is the seed-to-seed spread above."] + noise_lines  # fmt: skip

    lines += ["", f"## Against {baseline}", "",
              f"Δ = final value − {baseline}'s (per seed, paired: same initial weights and data order), mean and "
              "95 % t-interval. Steps = steps the run needs to reach the baseline's final value (linear interpolation "
              "between evaluations; per seed). Speedup = the baseline's steps / those steps (below 1 when the baseline "
              "gets there first), geometric mean over the n seeds with a 95 % t-interval of the mean log speedup "
              "(n − 1 degrees of freedom; its coverage is tested at n = 2–5); an interval covering 1 reads \"within noise\".", "",
              "| schedule | metric | Δ (mean [95 % CI]) | steps to baseline's final | speedup [95 % t-interval, n seeds] | verdict |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for label, s in summary["schedules"].items():
        if label == baseline:
            continue
        for key, spec in specs.items():
            lines.append(f"| {label} | {spec['label']} | " + " | ".join(_race_cells(s["metrics"][key])) + " |")
    lines += strongest_fixed_section(summary, specs, baseline)

    for key, spec in specs.items():
        all_steps = sorted({st for runs in groups.values() for d in runs for st in _curves(d).get(key, ([], []))[0]})
        if not all_steps:
            continue
        lines += ["", f"{spec['label']} at equal steps (mean over seeds):", "",
                  "| step | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]  # fmt: skip
        for st in all_steps:
            cells = []
            for runs in groups.values():
                vals = [dict(zip(*_curves(d).get(key, ([], [])))).get(st) for d in runs]
                cells.append(_fmt(float(np.mean(vals))) if all(v is not None for v in vals) else "–")
            lines.append(f"| {st} | " + " | ".join(cells) + " |")
    lines += ["", f"![metric curves]({curves_png.name})", ""]
    notes = schedule_notes(tables)
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    evals = {label: RunDir(runs[0]).read_eval() or {} for label, runs in groups.items()}
    domain_notes = evaluation_notes(evals)
    if domain_notes:
        lines += ["Evaluation notes (first seed):", ""] + [f"- {n}" for n in domain_notes] + [""]
    if dens:
        lines += [f"![training densities]({dens.name})", ""]
    if profiles:
        lines += [f"![learned profiles]({profiles.name})", ""]
    lines += samples_section(groups, evals, out_dir)
    lines += ["Runs:", ""] + [f"- {label}: " + ", ".join(f"`{d}`" for d in runs) for label, runs in groups.items()] + [""]
    md = out_dir / "report.md"
    md.write_text("\n".join(lines))
    return md


def _race_cells(m: dict[str, Any]) -> list[str]:
    """The Δ, steps, speedup and verdict cells of one schedule's race against a reference."""
    diff = m.get("difference") or {}
    d_txt = f"{_fmt(diff.get('mean'))} {_fmt_interval(diff.get('interval'))}".strip() if diff.get("mean") is not None else "–"
    if diff.get("interval") and diff.get("verdict") in ("within noise", "better", "worse"):
        d_txt += f" ({diff['verdict']})"
    if "speedup" not in m:
        return [f"{d_txt} ({diff.get('verdict', '–')})", "–", "–", "diagnostic"]
    reached = m["reached"]
    steps = [st for st in m["steps_to_baseline"] if st is not None]
    if not steps and (not reached or all(reached)):  # no seed has a step count to show
        reach = "–"
    elif all(reached):
        reach = _fmt(float(np.mean(steps)), 4)
    else:
        reach = f"not reached ({reached.count(False)}/{len(reached)} seeds)" + (f"; others {_fmt(float(np.mean(steps)), 4)}" if steps else "")
    sp = m["speedup"]
    sp_txt = f"{bound_mark(sp)}{sp['mean']:.2f}× {_fmt_interval(sp['interval'])} (n = {sp['seeds']})" if sp["mean"] is not None else "–"
    return [d_txt, reach, sp_txt, sp["verdict"]]


def strongest_fixed_section(summary: dict[str, Any], specs: dict[str, dict[str, Any]], baseline: str) -> list[str]:
    """The yardstick a learned schedule has to beat: per metric, the best fixed schedule of this
    comparison, and every other schedule raced against it as against the baseline."""
    strongest = summary.get("strongest_fixed") or {}
    if not strongest:
        return ["", "## Against the strongest fixed schedule", "",
                "No fixed schedule (a closed form that does not adapt) is in this comparison: add one "
                "(e.g. the baseline's family or another) to measure the learned schedules against it.", ""]  # fmt: skip
    named = "; ".join(f"{specs[key]['label']}: **{label}**" for key, label in strongest.items())
    lines = ["", "## Against the strongest fixed schedule", "",
             f"Per metric, the fixed schedule (a closed form that does not adapt; here: {', '.join(summary['fixed'])}) "
             f"with the best mean final value over these seeds — {named}. It is picked on the same seeds it is "
             "compared on, which favours it slightly. Columns as above, with that schedule in place of "
             f"{baseline}.", "",
             "| schedule | metric | strongest fixed | Δ (mean [95 % CI]) | steps to its final | speedup [95 % t-interval, n seeds] | verdict |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, s in summary["schedules"].items():
        for key, spec in specs.items():
            m = s["metrics"][key].get("vs_strongest_fixed")
            if m:
                lines.append(f"| {label} | {spec['label']} | {m['schedule']} | " + " | ".join(_race_cells(m)) + " |")
    return lines


def evaluation_notes(evals: dict[str, dict[str, Any]]) -> list[str]:
    """The evaluation's notes: once when every schedule's run says the same, else under its schedule."""
    per = {label: list(dict.fromkeys(str(n) for n in ev.get("notes", []))) for label, ev in evals.items()}
    common = set.intersection(*map(set, per.values())) if per else set()
    shared = [n for n in next(iter(per.values()), []) if n in common]
    return shared + [f"{label}: {n}" for label, notes in per.items() for n in notes if n not in common]


def samples_section(groups: dict[str, list[Path]], evals: dict[str, dict[str, Any]], out_dir: Path) -> list[str]:
    """Links to each schedule's sample files (first seed), and the first samples quoted when eval.json
    has a text preview."""
    lines = ["## Samples (first seed)", ""]
    for label, runs in groups.items():
        ev, d = evals[label], Path(runs[0])
        links = []
        for rel in ev.get("samples", []):
            target = Path(os.path.relpath(d / rel, out_dir))  # report.md's links resolve from its folder
            name = Path(rel).relative_to("samples") if Path(rel).parts[:1] == ("samples",) else Path(rel)
            links.append(f"[{name.as_posix()}]({target.as_posix()})")
        lines += [f"**{label}**: {', '.join(links) or '–'}", ""]
        for i, text in enumerate(ev.get("preview", [])):
            quoted = "\n".join("    " + line for line in str(text).splitlines())
            lines += [f"sample {i}:", "", quoted, ""]
    return lines


def _tables(groups: dict[str, list[Path]]) -> dict[str, dict[str, ScheduleTable]]:
    """Each schedule's final exported tables (first seed), by modality (a group of one: its domain)."""
    return {label: {key: load_schedule_file(path).table for key, path in RunDir(runs[0]).schedule_files().items()}
            for label, runs in groups.items()}


def _members(tables: dict[str, dict[str, ScheduleTable]]) -> list[str]:
    return list(dict.fromkeys(key for by_member in tables.values() for key in by_member))


def plot_densities(tables: dict[str, dict[str, ScheduleTable]], path: Path) -> Path:
    """One panel per modality (one in all for single-modality runs), every schedule on it."""
    members = _members(tables)
    fig, axes = plt.subplots(1, len(members), figsize=(8 * len(members), 4.8), squeeze=False)
    for ax, key in zip(axes[0], members):
        plot_density_axes(ax, {label: by[key] for label, by in tables.items() if key in by})
        ax.set_title(f"{key + ': ' if len(members) > 1 else ''}training densities at the end of training (per unit ln σ)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _peaks(by_member: dict[str, ScheduleTable]) -> str:
    return ", ".join(f"{k + ' ' if len(by_member) > 1 else ''}{_fmt(density_peak(t), 3)}" for k, t in by_member.items()) or "–"


TIMING_KEYS = ("refresh_s", "step_s", "cost_steps", "probe_calls", "probe_examples", "active")


def _record_series(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """The numeric columns of a run's refresh records (schedule_history/refreshes.csv) over steps."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for row in RunDir(run_dir).read_refreshes():
        for key, value in row.items():
            if key in ("step", *TIMING_KEYS) or not value:
                continue
            try:
                out.setdefault(key, ([], []))[0].append(int(float(row["step"])))
                out[key][1].append(float(value))
            except ValueError:
                continue
    return out


def _has_profile(table: ScheduleTable, run_dir: Path) -> bool:
    return bool(table.profile.get("u")) or bool(_record_series(run_dir))


def _profile_panel(ax, label: str, table: ScheduleTable, run_dir: Path) -> None:
    """One schedule's learned estimate, or else how its refresh records moved over training."""
    if not plot_learned_profile_axes(ax, table):
        for key, (steps, values) in _record_series(run_dir).items():
            ax.step([0, *steps], [values[0], *values], where="post", label=key)
        ax.set_xlabel("training step")
        ax.legend(fontsize=8)
    ax.set_title(label, fontsize=10)


def plot_profiles(groups: dict[str, list[Path]], tables: dict[str, dict[str, ScheduleTable]], path: Path) -> Optional[Path]:
    panels = [(f"{lbl}{' (' + key + ')' if len(by) > 1 else ''}", t, groups[lbl][0]) for lbl, by in tables.items()
              for key, t in by.items() if _has_profile(t, groups[lbl][0])]  # fmt: skip
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.9), squeeze=False)
    for ax, (label, table, run_dir) in zip(axes[0], panels):
        _profile_panel(ax, label, table, run_dir)
    fig.suptitle("learned profiles (first seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def schedule_notes(tables: dict[str, Any]) -> list[str]:
    """Each schedule's own remarks on how it ended, labelled: ``tables`` maps a label to a table, or
    to its tables by modality (a modality named only where there are several)."""
    out = []
    for label, by in tables.items():
        by_member = by if isinstance(by, dict) else {label: by}
        out += [f"{label}{' (' + key + ')' if len(by_member) > 1 else ''}: {note}" for key, table in by_member.items() for note in table.notes]
    return out

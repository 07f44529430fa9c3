"""Rerun the README's comparisons and rewrite the result tables it shows.

    python tools/readme_tables.py                 # every preset (hours on a 2-core CPU)
    python tools/readme_tables.py digits text     # some of them
    python tools/readme_tables.py --tables-only   # only rewrite tables from finished runs

Each preset is one ``multidiff compare`` (finished runs are reused, interrupted ones resumed, so the
command can be stopped and restarted). Its runs live under ``runs/readme/runs/RECIPE/`` (shared by
presets on the same recipe; paths are relative to the working directory), its report under
``runs/readme/PRESET/``. The table goes to
``docs/results/PRESET.md`` and replaces the block between ``<!-- results:PRESET -->`` and
``<!-- /results:PRESET -->`` in the README, with the command that made it beside it.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from multidiff.report.stats import bound_mark, format_spread  # noqa: E402

OUT = Path("runs/readme")

PRESETS: dict[str, dict[str, Any]] = {
    # "set": recipe values a comparison pins (its sample-quality curve needs more points than a first run)
    "digits": {"recipe": "recipes/binary_digits.yaml", "schedules": "edm,infonoise,laplace,crs,infonoise:allocation=density", "seeds": 3,
               "set": ["train.eval_every=250", "eval.quality_every=500"]},
    "fashion": {"recipe": "recipes/binary_fashion_cpu.yaml", "schedules": "edm,infonoise,laplace", "seeds": 3},
    "text": {"recipe": "recipes/text_kjv.yaml", "schedules": "edm,infonoise", "seeds": 3},
    "audio": {"recipe": "recipes/audio_digits.yaml", "schedules": "edm,infonoise,infonoise:allocation=density", "seeds": 1,
              "set": ["eval.quality_every=1000"]},
    "latent": {"recipe": "recipes/latent_fashion.yaml", "schedules": "edm,infonoise,infonoise:allocation=density", "seeds": 1,
               "set": ["eval.quality_every=600"]},
    "joint": {"recipe": "recipes/joint_digits_speech.yaml", "schedules": "edm,infonoise", "seeds": 1, "set": ["eval.quality_every=1000"]},
    # candidates for a default that matches the strongest fixed schedule, screened at 3 seeds against the fixed
    # families (edm is in the digits preset, where laplace's means are better on both), final Fréchet distance on 1 024 samples
    "digits-screen": {"recipe": "recipes/binary_digits.yaml", "seeds": 3,
                      "schedules": "laplace,infonoise,cosine,loguniform,infonoise:defensive=0.5,"
                                   "infonoise:allocation=density:defensive=0.5,infonoise:temper=2",
                      "set": ["train.eval_every=250", "eval.quality_every=1000", "eval.final_quality_samples=1024"]},
    # the full protocol on digits (5 seeds): the default against EDM and the strongest fixed family at 3 seeds
    # (laplace; cosine ties it, log-uniform is worse beyond noise: digits-screen)
    "digits-protocol": {"recipe": "recipes/binary_digits.yaml", "seeds": 5, "schedules": "edm,laplace,infonoise",
                        "set": ["train.eval_every=250", "eval.quality_every=1000", "eval.final_quality_samples=1024"]},
    # the best digits candidate on a continuous domain, one seed (a first look; the protocol wants 3)
    "audio-screen": {"recipe": "recipes/audio_digits.yaml", "schedules": "edm,infonoise:allocation=density:defensive=0.5", "seeds": 1},
    "digits-onset": {"recipe": "recipes/binary_digits.yaml", "schedules": "edm,infonoise:gate_c=null:onset=peak,infonoise:gate_c=null:onset=tail", "seeds": 1,
                     "set": ["train.eval_every=250", "eval.quality_every=500"]},
}


def command(name: str) -> list[str]:
    p = PRESETS[name]
    runs = OUT / "runs" / Path(p["recipe"]).stem
    sets = [arg for item in p.get("set", []) for arg in ("--set", item)]
    return ["multidiff", "compare", p["recipe"], "--schedules", p["schedules"], "--seeds", str(p["seeds"]), *sets,
            "--out", str(OUT / name), "--runs", str(runs)]  # fmt: skip


def _speedup(m: dict[str, Any]) -> str:
    sp = m.get("speedup")
    if not sp or sp.get("mean") is None:
        return "–"
    ci = sp.get("interval")
    ci_txt = f" [{ci[0]:.2f}, {ci[1]:.2f}], n = {sp.get('seeds')}" if ci else ""
    return f"{bound_mark(sp)}{sp['mean']:.2f}×{ci_txt} ({sp['verdict']})"


def table(name: str) -> str:
    """The markdown table of a preset's finished comparison (from its summary.json)."""
    out = OUT / name
    summary = json.loads((out / "summary.json").read_text())
    specs, seeds = summary["metrics"], summary["seeds"]
    raced = [k for k, spec in specs.items() if spec["lower"] is not None]
    strongest = summary.get("strongest_fixed") or {}
    yard = [k for k in raced if k in strongest]
    head = ["schedule", *[specs[k]["label"] for k in specs], *[f"speedup on {specs[k]['label']}" for k in raced],
            *[f"{specs[k]['label']} against the strongest fixed ({strongest[k]})" for k in yard]]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, s in summary["schedules"].items():
        cells = [format_spread(s["metrics"][k]["mean"], s["metrics"][k]["sd"]) for k in specs]
        cells += ["baseline" if label == summary["baseline"] else _speedup(s["metrics"][k]) for k in raced]
        cells += ["itself" if label == strongest[k] else _against(s["metrics"][k]["vs_strongest_fixed"]) for k in yard]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    noise = [f"{specs[k]['label']} {m:.3g}" for k in specs if k != "nelbo"
             for m in [_mean([s["metrics"][k].get("eval_noise_sd") for s in summary["schedules"].values()])] if m is not None]  # fmt: skip
    seeds_txt = f"{len(seeds)} seeds ({', '.join(map(str, seeds))}): mean ± seed-to-seed sd" if len(seeds) > 1 else \
        "one seed (no interval: a single seed cannot separate close results)"  # fmt: skip
    lines += ["", f"{seeds_txt}; speedup = steps to reach the baseline's final value, geometric mean over seeds "
              f"with a 95 % t-interval of the mean log speedup (n seeds, n − 1 degrees of freedom)." + (f" Evaluation noise (same weights, other sample seed): {', '.join(noise)}." if noise else "")]  # fmt: skip
    return "\n".join(lines)


def _against(race: dict[str, Any]) -> str:
    """Final difference to the strongest fixed schedule (paired, with its verdict) and the speedup to its final value."""
    diff = race.get("difference") or {}
    if diff.get("mean") is None:
        return "–"
    ci = diff.get("interval")
    d_txt = f"Δ {diff['mean']:+.3g}" + (f" [{ci[0]:+.3g}, {ci[1]:+.3g}]" if ci else "") + f" ({diff.get('verdict', '–')})"
    return f"{d_txt}; {_speedup(race)}"


def _mean(values: list[Optional[float]]) -> Optional[float]:
    v = [x for x in values if x is not None]
    return sum(v) / len(v) if v else None


def write(name: str) -> None:
    cmd = " ".join(command(name))
    block = f"```bash\n{cmd}\n```\n\n{table(name)}\n"
    docs = ROOT / "docs" / "results" / f"{name}.md"
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(f"# {name}\n\nMade by `python tools/readme_tables.py {name}`, which runs:\n\n{block}\nFull report: `{OUT / name}/report.md`.\n")
    readme = ROOT / "README.md"
    text = readme.read_text()
    pattern = re.compile(rf"(<!-- results:{re.escape(name)} -->\n).*?(<!-- /results:{re.escape(name)} -->)", re.S)
    if pattern.search(text):
        readme.write_text(pattern.sub(lambda m: m.group(1) + block + m.group(2), text))
    print(f"{name}: {docs}")


def main() -> int:
    global OUT
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("presets", nargs="*", help=f"presets to run (default all): {', '.join(PRESETS)}")
    p.add_argument("--tables-only", action="store_true", help="do not train; rewrite tables from finished runs")
    p.add_argument("--root", default="runs/readme", help="where runs and reports go (default runs/readme)")
    args = p.parse_args()
    OUT = Path(args.root)
    names = args.presets or list(PRESETS)
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        p.error(f"unknown preset {unknown[0]!r}; presets: {', '.join(PRESETS)}")
    for name in names:
        if not args.tables_only:
            cmd = [sys.executable, "-m", "multidiff", *command(name)[1:]]
            cmd[4] = str(ROOT / cmd[4])  # the recipe of this checkout, whatever the working directory
            if subprocess.run(cmd).returncode != 0:
                return 1
        write(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

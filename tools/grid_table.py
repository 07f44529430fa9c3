"""Sample quality of trained runs at 8, 16 and 32 sampling steps on EDM's ρ-grid (karras) and on the
learned grid (the schedule's sampling density mixed with EDM's ρ-spacing), and on the learned
density alone for reference: the table that says whether learned grids help.

    python tools/grid_table.py RUN_DIR [RUN_DIR ...] [--steps 8 16 32] [--seeds 2]

Each cell is the domain's headline sample metric (Fréchet distance, or the sample n-gram NLL for
text) over ``eval.quality_samples`` samples, averaged over ``--seeds`` sample seeds, ± their
standard deviation (the metric's own noise at that grid). Prints a markdown table per run.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GRIDS = {"karras": ("karras", None), "learned": ("learned", None), "learned alone": ("learned", 0.0)}


def grid_rows(run_dir: Path, steps: list[int], seeds: int) -> tuple[str, list[str]]:
    from multidiff.pipeline import device_for_inference, load_run, quality, tracked_values

    setup, step = load_run(run_dir)
    key = next(k for k, d in setup.domain.quality_metrics.items() if d is not None)
    device = device_for_inference()
    model = setup.model.to(device).eval()
    base = setup.cfg
    lines = ["| grid | " + " | ".join(f"{n} steps" for n in steps) + " |", "|---|" + "---|" * len(steps)]
    spreads = []
    for label, (kind, mix) in GRIDS.items():
        cells = []
        for n in steps:
            sample = dataclasses.replace(base.sample, steps=n, sigmas=kind, grid_mix=base.sample.grid_mix if mix is None else mix)
            setup.cfg = dataclasses.replace(base, sample=sample)
            values = [tracked_values(setup, quality(setup, model, device, seed=base.sample.seed + s).metrics)[key] for s in range(seeds)]
            spread = statistics.stdev(values) if len(values) > 1 else None
            if spread is not None:
                spreads.append(spread)
            cells.append(f"{statistics.mean(values):.4g}" + (f" ± {spread:.2g}" if spread is not None else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    setup.cfg = base
    label = setup.domain.headline_metrics.get(key, key)
    note = f"{label} ({base.eval.quality_samples} samples, {base.sample.sampler}; mean of {seeds} sample seeds"
    note += f" ± their sd; median sd {statistics.median(spreads):.2g})" if spreads else ")"
    return f"`{run_dir}` (step {step}): {note}", lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--steps", nargs="+", type=int, default=[8, 16, 32])
    p.add_argument("--seeds", type=int, default=2)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    for run in args.runs:
        title, lines = grid_rows(Path(run), args.steps, args.seeds)
        print(title, "", *lines, "", sep="\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

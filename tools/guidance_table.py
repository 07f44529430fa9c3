"""Conditional samples of trained joint runs under classifier-free guidance: for each guidance scale,
each direction's accuracy (the generated modality's classifier recognises the given example's class)
and the Fréchet distance of those samples (what the guidance costs in sample quality).

    python tools/guidance_table.py RUN_DIR [RUN_DIR ...] [--scales 1 2 3] [--seeds 2]

Each cell is over ``eval.quality_samples`` held-out pairs with the run's sampler and grid, averaged
over ``--seeds`` sample seeds, ± their standard deviation (the metric's own noise). Scale 1 is the
plain conditional, 0 the model's marginal. Prints a markdown table per run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _cell(values: list[float], percent: bool) -> str:
    scale = 100.0 if percent else 1.0
    mean = statistics.mean(values) * scale
    out = f"{mean:.1f} %" if percent else f"{mean:.3g}"
    if len(values) > 1:
        out += f" ± {statistics.stdev(values) * scale:.2g}"
    return out


def guidance_rows(run_dir: Path, scales: list[float], seeds: int) -> tuple[str, list[str]]:
    from multidiff.errors import UserError
    from multidiff.pipeline import decoded_samples, device_for_inference, load_run

    setup, step = load_run(run_dir)
    if not setup.group.conditional_sampling:
        raise UserError(f"{run_dir}: domain '{setup.domain.name}' has no conditional samples to guide")
    device = device_for_inference()
    model = setup.model.to(device).eval()
    n, seed0 = setup.cfg.eval.quality_samples, setup.cfg.sample.seed
    keys = setup.group.modalities()
    pairs = [(a, b) for a in keys for b in keys if a != b]
    head = ["guidance"] + [f"{a}→{b} accuracy" for a, b in pairs] + [f"{b} Fréchet distance given {a}" for a, b in pairs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w in scales:
        runs: list[dict[str, Any]] = []
        for s in range(seeds):
            def sample(count: int, condition: Any, seed: int = seed0 + s) -> Any:
                return decoded_samples(setup, model, count, device, seed=seed, condition=condition)

            runs.append(setup.group.model_metrics(model, sample, setup.data, n, guidance=w))
        cells = [_cell([r[f"cond_{a}_to_{b}"] for r in runs], True) for a, b in pairs]
        cells += [_cell([r[f"fd_{b}_given_{a}"] for r in runs], False) for a, b in pairs]
        lines.append(f"| {w:g} | " + " | ".join(cells) + " |")
    c = setup.cfg.sample
    note = f"{n} held-out pairs per direction, {c.sampler} {c.steps} steps on the {c.sigmas} grid; mean of {seeds} sample seeds"
    return f"`{run_dir}` (step {step}): {note}" + (" ± their sd" if seeds > 1 else ""), lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--scales", nargs="+", type=float, default=[1.0, 2.0, 3.0])
    p.add_argument("--seeds", type=int, default=2)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    from multidiff.errors import UserError

    if any(w < 0 for w in args.scales) or args.seeds < 1:
        print("error: --scales must be >= 0 and --seeds >= 1", file=sys.stderr)
        return 2
    try:
        for run in args.runs:
            title, lines = guidance_rows(Path(run), args.scales, args.seeds)
            print(title, *lines, "", sep="\n", flush=True)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

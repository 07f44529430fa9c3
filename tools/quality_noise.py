"""How a run's sample metric's evaluation noise shrinks with the number of samples, and what each
count costs: the figures that size ``eval.quality_samples`` and ``eval.final_quality_samples``.

    python tools/quality_noise.py RUN_DIR [RUN_DIR ...] [--counts 256 512 1024] [--seeds 3]

For each count, the domain's sample metrics on that many samples of the recipe's sampler at
``--seeds`` sample seeds (same weights): mean ± their standard deviation (the evaluation noise a
difference must clear), and the seconds one evaluation takes on this machine. Prints a markdown
table per run. A Fréchet distance is biased by the count (its mean falls as the count grows), so
compare noise across counts, and values only at one count.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def noise_rows(run_dir: Path, counts: list[int], seeds: int) -> tuple[str, list[str]]:
    from multidiff.pipeline import device_for_inference, load_run, quality, tracked_values
    from multidiff.report.stats import format_spread, mean_sd

    setup, step = load_run(run_dir)
    device = device_for_inference()
    model = setup.model.to(device).eval()
    keys = [k for k, d in setup.domain.quality_metrics.items() if d is not None]
    labels = [setup.domain.headline_metrics.get(k, k) for k in keys]
    lines = ["| samples | " + " | ".join(f"{label} (mean ± sd)" for label in labels) + " | seconds per evaluation |",
             "|---|" + "---|" * (len(keys) + 1)]  # fmt: skip
    for n in counts:
        values, spent = [], []
        for s in range(seeds):
            started = time.perf_counter()
            values.append(tracked_values(setup, quality(setup, model, device, seed=setup.cfg.sample.seed + s, count=n).metrics))
            spent.append(time.perf_counter() - started)
        cells = [format_spread(*mean_sd([v[key] for v in values])) for key in keys]
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {statistics.mean(spent):.1f} |")
    return f"`{run_dir}` (step {step}; {seeds} sample seeds from {setup.cfg.sample.seed})", lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--counts", nargs="+", type=int, default=[256, 512, 1024])
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    if args.seeds < 2 or min(args.counts) < 2:
        p.error("--seeds and every --counts value must be at least 2 (a spread needs two values)")
    warnings.filterwarnings("ignore")
    for run in args.runs:
        title, lines = noise_rows(Path(run), args.counts, args.seeds)
        print(title, "", *lines, "", sep="\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

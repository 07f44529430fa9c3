"""Step-time overhead of InfoNoise against EDM on the same model, batch and optimizer.

Runs the trainer's own training step (sample σ, noise, loss, observe, backward, Adam) for both
schedules, interleaving blocks of steps so drift in machine speed hits both alike, and reports the
median time per step. InfoNoise refreshes every R steps inside the timed blocks, so its periodic
cost is amortized as in training.

    python tools/bench_overhead.py [RECIPE] [--device cpu|cuda] [--blocks 15] [--steps 20]

The last line reads ``infonoise/edm step-time ratio: R`` (goal: R ≤ 1.03).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from multidiff.pipeline import prepare as build  # noqa: E402
from multidiff.recipe import load_recipe_file, resolve, select_schedule  # noqa: E402
from multidiff.train.fit import make_module  # noqa: E402


def make(recipe_path: str, schedule: str, device: torch.device, refresh: int):
    raw = select_schedule(load_recipe_file(recipe_path), schedule)
    sets = [f"schedule.refresh={refresh}", "schedule.warmup=0"] if schedule == "infonoise" else []
    setup = build(resolve(raw, recipe_path, sets))
    module = make_module(setup).to(device)
    module.schedule.to(device)
    module.first_bad_step = module.first_bad_step.to(device)
    opt = torch.optim.Adam(module.model.parameters(), lr=1e-4)
    return setup, module, opt


def run_block(module, opt, batch, steps: int, start: int, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for i in range(steps):
        loss = module.training_step(batch, start + i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step = start + i + 1
        if module.schedule.refresh_every and step % module.schedule.refresh_every == 0:
            module.schedule.refresh(step)
    sync()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe", nargs="?", default=str(ROOT / "recipes" / "binary_digits.yaml"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--blocks", type=int, default=15, help="interleaved repetitions per schedule")
    p.add_argument("--steps", type=int, default=20, help="steps per timed block")
    p.add_argument("--refresh", type=int, default=10, help="InfoNoise refresh interval R inside the benchmark")
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*self.log.*")
    device = torch.device(args.device)
    arms = {name: make(args.recipe, name, device, args.refresh) for name in ("edm", "infonoise")}
    for _, module, _ in arms.values():  # identical weights in both arms
        module.model.load_state_dict(arms["edm"][1].model.state_dict())
    setup = arms["edm"][0]
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, setup.data.train.shape[0], (int(setup.recipe["train"]["batch_size"]),), generator=g)
    batch = setup.data.train[idx].to(device)
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _, module, opt in arms.values():  # warm-up (allocator, kernels, first refresh)
        run_block(module, opt, batch, args.steps, 0, device)
    for b in range(args.blocks):
        order = list(arms) if b % 2 == 0 else list(reversed(arms))
        for name in order:
            _, module, opt = arms[name]
            times[name].append(run_block(module, opt, batch, args.steps, (b + 1) * args.steps, device))
    params = sum(p.numel() for p in arms["edm"][1].model.parameters())
    print(f"recipe {args.recipe} · device {device} · batch {batch.shape[0]} · {params / 1e6:.2f} M parameters · "
          f"{args.blocks} blocks × {args.steps} steps, InfoNoise refresh every {args.refresh}")  # fmt: skip
    for name, ts in times.items():
        print(f"{name:10s} median {statistics.median(ts) * 1e3:8.3f} ms/step   (min {min(ts) * 1e3:.3f}, max {max(ts) * 1e3:.3f})")
    ratio = statistics.median(times["infonoise"]) / statistics.median(times["edm"])
    print(f"infonoise/edm step-time ratio: {ratio:.3f}")


if __name__ == "__main__":
    main()

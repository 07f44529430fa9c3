"""Rectified-flow (velocity) training with t drawn by InfoNoise, then a schedule file.

What it shows: a flow-matching loop, x_t = (1 − t)·x0 + t·ε with the network predicting the
velocity ε − x0, on scikit-learn's 8×8 digits in [-1, 1] with a small MLP. ``multidiff.FlowMatching``
maps InfoNoise's σ to t = σ/(1 + σ) for ``sample`` and each example's velocity MSE to the x0 error
for ``observe`` (exactly: x0 error = t²·velocity error). It writes OUT/schedule.json and prints where
the learned density of t peaks.

Run (CPU, a minute or two):  python examples/rectified_flow_infonoise.py --steps 3000 --out runs/flow-infonoise
In seconds (what the tests run):  python examples/rectified_flow_infonoise.py --tiny --out /tmp/flow
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

import multidiff


def load_digits() -> torch.Tensor:
    """scikit-learn's 1 797 digits (bundled, offline) as [N, 64] in [-1, 1]."""
    from sklearn.datasets import load_digits as sk_digits

    return torch.from_numpy(sk_digits().data).float().div(8).sub(1)


class VelocityMLP(nn.Module):
    """v(x_t, t): an MLP on the pixels and Fourier features of t."""

    def __init__(self, dim: int = 64, width: int = 256, n_freq: int = 8) -> None:
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n_freq))
        self.net = nn.Sequential(nn.Linear(dim + 2 * n_freq, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, dim))  # fmt: skip

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        angles = t[:, None] * self.freqs
        return self.net(torch.cat([x, angles.sin(), angles.cos()], dim=1))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, help="optimizer steps (default 3000; --tiny: 12)")
    p.add_argument("--out", default="runs/flow-infonoise", help="output folder (schedule.json)")
    p.add_argument("--tiny", action="store_true", help="width 64, batch 16, InfoNoise warm-up 4 and refresh 4: seconds on a CPU")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.steps = args.steps or (12 if args.tiny else 3000)
    args.batch_size = args.batch_size or (16 if args.tiny else 128)
    return args


def train(args: argparse.Namespace, data: torch.Tensor, noise: multidiff.LoopSchedule) -> None:
    net = VelocityMLP(width=64 if args.tiny else 256)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    for step in range(1, args.steps + 1):
        x0 = data[torch.randint(len(data), (args.batch_size,), generator=g)]
        t = noise.sample(args.batch_size, generator=g).float()  # t ∈ (0, 1), drawn by InfoNoise
        eps = torch.randn(x0.shape, generator=g)
        x_t = (1 - t[:, None]) * x0 + t[:, None] * eps
        per_example = (net(x_t, t) - (eps - x0)).square().mean(1)  # each example's velocity MSE
        opt.zero_grad()
        per_example.mean().backward()
        opt.step()
        noise.observe(t, per_example.detach())
        if noise.refresh_due(step):
            noise.refresh(step)
        if step % max(1, args.steps // 10) == 0:
            print(f"step {step}: velocity MSE {per_example.mean().item():.4f}")


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    data = load_digits()
    flow = multidiff.FlowMatching(sigma_data=float(data.square().mean().sqrt()))  # σ_data: the data's RMS
    opts = dict(warmup=4, refresh=4, bins=24, min_count=2) if args.tiny else dict(warmup=args.steps // 4, refresh=100)
    noise = flow.make_schedule("infonoise", target="velocity", **opts)  # weighting: the velocity MSE's own
    train(args, data, noise)
    path = noise.save(Path(args.out) / "schedule.json", dataset="sklearn-digits", loop="rectified-flow")
    table = noise.schedule.to_table()
    sigma = math.exp(table.u[int(np.argmax(table.pdf))])  # the table is a density over u = ln σ
    print(f"wrote {path}")
    print(f"learned density (per unit ln σ) peaks at sigma = {sigma:.4g} (flow t = {float(flow.from_sigma(torch.tensor(sigma))):.4f})")


if __name__ == "__main__":
    main()

"""DDPM training in plain PyTorch with timesteps drawn by InfoNoise, then a schedule file.

What it shows: an ordinary diffusers loop (``UNet2DModel`` predicting ε, ``DDPMScheduler.add_noise``)
on scikit-learn's 8×8 digits scaled to [-1, 1]. The only change from uniform timesteps is where k
comes from: ``multidiff.DDPM(scheduler.alphas_cumprod, sigma_data)`` turns an InfoNoise schedule
into integer timesteps and turns each example's ε-MSE back into the x0 error InfoNoise learns from.
At the end it writes OUT/schedule.json (for ``multidiff train --schedule``, ``multidiff schedule
sigmas`` and diffusers' samplers, see sample_with_exported_schedule.py) and prints where the learned
density (and the information rate sampling grids follow) peaks, in σ and in DDPM timesteps.

Run (CPU, a few minutes):  python examples/ddpm_infonoise.py --steps 2000 --out runs/ddpm-infonoise
In seconds (what the tests run):  python examples/ddpm_infonoise.py --tiny --out /tmp/ddpm
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

import multidiff


def load_digits() -> torch.Tensor:
    """scikit-learn's 1 797 digits (bundled, offline) as [N, 1, 8, 8] in [-1, 1]."""
    from sklearn.datasets import load_digits as sk_digits

    return torch.from_numpy(sk_digits().images).float().div(8).sub(1).unsqueeze(1)


def tiny_unet() -> torch.nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
                       norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))  # fmt: skip


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, help="optimizer steps (default 2000; --tiny: 12)")
    p.add_argument("--out", default="runs/ddpm-infonoise", help="output folder (schedule.json)")
    p.add_argument("--tiny", action="store_true", help="batch 16, InfoNoise warm-up 4 and refresh 4: seconds on a CPU")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.steps = args.steps or (12 if args.tiny else 2000)
    args.batch_size = args.batch_size or (16 if args.tiny else 64)
    return args


def train(args: argparse.Namespace, data: torch.Tensor, scheduler: Any, noise: multidiff.LoopSchedule) -> None:
    """ε-prediction with diffusers' forward process; InfoNoise chooses k and learns from the ε-MSE."""
    unet = tiny_unet()
    opt = torch.optim.Adam(unet.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    for step in range(1, args.steps + 1):
        x0 = data[torch.randint(len(data), (args.batch_size,), generator=g)]
        k = noise.sample(args.batch_size, generator=g)  # int64 timesteps, drawn by InfoNoise
        eps = torch.randn(x0.shape, generator=g)
        pred = unet(scheduler.add_noise(x0, eps, k), k).sample
        per_example = (pred - eps).square().flatten(1).mean(1)  # each example's ε-MSE
        opt.zero_grad()
        per_example.mean().backward()
        opt.step()
        noise.observe(k, per_example.detach())
        if noise.refresh_due(step):
            noise.refresh(step)
        if step % max(1, args.steps // 10) == 0:
            print(f"step {step}: ε-MSE {per_example.mean().item():.4f}")


def peak_sigma(u: list[float], density: list[float]) -> float:
    """σ where a density tabulated on u = ln σ is largest."""
    return math.exp(u[int(np.argmax(density))])


def report_peaks(noise: multidiff.LoopSchedule, ddpm: multidiff.DDPM) -> None:
    table = noise.schedule.to_table()
    peaks = {"learned density": (table.u, table.pdf)}
    if table.sampling:  # InfoNoise's information rate r·g: where sampling grids put their steps
        peaks["information rate"] = (table.sampling["u"], table.sampling["density"])
    for what, (u, density) in peaks.items():
        sigma = peak_sigma(u, density)
        print(f"{what} peaks at sigma = {sigma:.4g} (DDPM timestep {int(ddpm.from_sigma(torch.tensor([sigma]))[0])})")


def main() -> None:
    args = parse_args()
    from diffusers import DDPMScheduler

    torch.manual_seed(args.seed)
    data = load_digits()
    sigma_data = float(data.square().mean().sqrt())  # the data's RMS (multidiff's σ_data)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    ddpm = multidiff.DDPM(scheduler.alphas_cumprod, sigma_data=sigma_data)
    # tiny runs learn from a few hundred examples: fewer bins, fewer examples per bin
    opts = dict(warmup=4, refresh=4, bins=24, min_count=2) if args.tiny else dict(warmup=args.steps // 4, refresh=100)
    noise = ddpm.make_schedule("infonoise", target="eps", **opts)  # weighting: the ε-MSE's own (1/σ²)
    train(args, data, scheduler, noise)
    path = noise.save(Path(args.out) / "schedule.json", dataset="sklearn-digits", loop="ddpm-eps")
    lo, hi = noise.schedule.ctx.sigma_min, noise.schedule.ctx.sigma_max
    print(f"wrote {path} (σ range [{lo!r}, {hi!r}]: pass it to `multidiff train --set diffusion.sigma_min=... sigma_max=...`)")
    report_peaks(noise, ddpm)


if __name__ == "__main__":
    main()

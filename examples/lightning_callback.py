"""Someone else's LightningModule gets a learned noise schedule from one callback.

What it shows: ``EpsDenoiser`` below is an ordinary LightningModule (VE / EDM-style noise x + σε,
ε-prediction, an MLP on scikit-learn's 8×8 digits in [-1, 1]) that knows nothing of multidiff
except two lines of its training_step: it draws σ from ``self.noise_schedule`` and returns
``{"loss", "t", "per_example_loss"}``. ``multidiff.train.external.NoiseScheduleCallback`` attaches
the schedule, feeds it, refreshes it, keeps it in checkpoints and writes OUT/schedule.json at the end.
The fit ends with OUT/last.ckpt; ``--resume OUT/last.ckpt --steps N`` continues it to step N with
the schedule's statistics restored.

Run (CPU, a minute or two):  python examples/lightning_callback.py --steps 2000 --out runs/lightning-infonoise
In seconds (what the tests run):  python examples/lightning_callback.py --tiny --out /tmp/lit
"""
from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from torch import nn

import multidiff
from multidiff.train.external import NoiseScheduleCallback


class EpsDenoiser(L.LightningModule):
    """ε-prediction for x + σε (σ_data = the data's RMS), inputs scaled by 1/√(σ² + σ_data²)."""

    def __init__(self, sigma_data: float, width: int = 256, lr: float = 1e-3) -> None:
        super().__init__()
        self.sigma_data, self.lr = sigma_data, lr
        self.net = nn.Sequential(nn.Linear(65, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 64))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c_in = (sigma**2 + self.sigma_data**2).rsqrt()[:, None]
        return self.net(torch.cat([x * c_in, sigma.log()[:, None] / 4], dim=1))

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        (x0,) = batch
        sigma = self.noise_schedule.sample(len(x0), device=self.device).float()  # set by the callback
        eps = torch.randn_like(x0)
        per_example = (self(x0 + sigma[:, None] * eps, sigma) - eps).square().mean(1)
        return {"loss": per_example.mean(), "t": sigma, "per_example_loss": per_example}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def load_digits() -> torch.Tensor:
    """scikit-learn's 1 797 digits (bundled, offline) as [N, 64] in [-1, 1]."""
    from sklearn.datasets import load_digits as sk_digits

    return torch.from_numpy(sk_digits().data).float().div(8).sub(1)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, help="optimizer steps in all (default 2000; --tiny: 12)")
    p.add_argument("--out", default="runs/lightning-infonoise", help="output folder (schedule.json, last.ckpt)")
    p.add_argument("--tiny", action="store_true", help="width 64, batch 16, InfoNoise warm-up 4 and refresh 4: seconds on a CPU")
    p.add_argument("--resume", help="a checkpoint of this script to continue from")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.steps = args.steps or (12 if args.tiny else 2000)
    return args


def fit(args: argparse.Namespace, callback: NoiseScheduleCallback, sigma_data: float, data: torch.Tensor,
        resume: Optional[str]) -> L.Trainer:  # fmt: skip
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=16 if args.tiny else 128, shuffle=True)
    module = EpsDenoiser(sigma_data, width=64 if args.tiny else 256)
    trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, callbacks=[callback], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=args.out)  # fmt: skip
    trainer.fit(module, loader, ckpt_path=resume)
    return trainer


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # a tiny in-memory data set
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    L.seed_everything(args.seed, verbose=False)
    data = load_digits()
    ve = multidiff.VE(sigma_data=float(data.square().mean().sqrt()), sigma_min=0.002, sigma_max=80.0)
    opts = dict(warmup=4, refresh=4, bins=24, min_count=2) if args.tiny else dict(warmup=args.steps // 4, refresh=100)
    noise = ve.make_schedule("infonoise", target="eps", **opts)  # weighting: the ε-MSE's own (1/σ²)
    out = Path(args.out)
    callback = NoiseScheduleCallback(noise, export_path=out / "schedule.json", dataset="sklearn-digits", loop="lightning-eps")
    trainer = fit(args, callback, ve.sigma_data, data, args.resume)
    trainer.save_checkpoint(out / "last.ckpt")  # holds the schedule's state (on_save_checkpoint)
    table = noise.schedule.to_table()
    print(f"step {trainer.global_step}: wrote {out / 'schedule.json'} and {out / 'last.ckpt'}")
    print(f"schedule refreshed at step {table.step}; {table.notes[0] if table.notes else ''}")


if __name__ == "__main__":
    main()

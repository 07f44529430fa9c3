"""Trainer overhead: multidiff's training step inside Lightning against a plain PyTorch loop.

For each domain recipe (its model, batch and schedule) one Lightning fit runs with the run's own
callbacks (EMA, schedule refreshes, checkpoint checks, loggers); every ``--block`` steps a callback
pauses it and times the same number of steps of a plain loop over an identical copy of the model,
batch stream, Adam, σ sampling, schedule observation and EMA update. Blocks interleave, so drift in
machine load hits both alike; the medians of the per-step times are compared. Evaluation is off in
both (it is measured separately: timing.json of a run).

    python tools/bench_throughput.py                       # every domain, CPU-sized recipes
    python tools/bench_throughput.py --domains binary_image text --blocks 8 --block 20
    python tools/bench_throughput.py --device cuda --flops  # adds model FLOPs utilisation on a GPU

Each domain prints its ms/step both ways, the range of the per-block ratios (each Lightning block
against the raw block before it: the ratio's own noise on this machine), steps/s, peak memory and
MFU with ``--flops``; the last line reads ``trainer/raw step-time ratio: R`` (the geometric mean over domains; goal ≤ 1.05).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPES = {
    "binary_image": "recipes/binary_digits.yaml",
    "text": "recipes/text_kjv.yaml",
    "spectrogram": "recipes/audio_digits.yaml",
    "latent_image": "recipes/latent_fashion.yaml",
    "joint": "recipes/joint_digits_speech.yaml",
}
#: per-domain recipe overrides for each scale: ``cpu`` = the CPU recipes as they are, ``real`` = the
#: sizes their headers give for a GPU (batch raised to fill one), ``tiny`` = a seconds-long dry run
SCALES: dict[str, dict[str, list[str]]] = {
    "cpu": {d: [] for d in RECIPES},
    "real": {
        "binary_image": ["data.source=fashion_mnist", "model.channels=64", "model.channel_mult=[1,2,2]", "model.num_blocks=2",
                         "model.attention=[2]", "train.batch_size=256"],
        "text": ["model.width=512", "model.layers=8", "model.heads=8", "data.seq_len=128", "train.batch_size=128"],
        "spectrogram": ["model.channels=64", "train.batch_size=128"],
        "latent_image": ["model.channels=128", "model.num_blocks=2", "model.attention=[1]", "train.batch_size=256"],
        "joint": ["model.width=256", "model.layers=6", "model.heads=8", "train.batch_size=256"],
    },
    "tiny": {
        "binary_image": ["model.channels=8", "model.channel_mult=[1]", "train.batch_size=4"],
        "text": ["data.source=pydoc", "data.max_chars=60000", "data.vocab_size=300", "data.seq_len=16", "model.width=16",
                 "model.layers=1", "model.heads=2", "model.embed_dim=8", "train.batch_size=4"],
        "spectrogram": ["data.clips=40", "data.n_mels=16", "data.frames=16", "model.channels=8", "model.channel_mult=[1]", "train.batch_size=4"],
        "latent_image": ["data.source=digits", "data.autoencoder.steps=20", "data.autoencoder.channels=8", "data.autoencoder.latent_channels=2",
                         "model.channels=8", "model.channel_mult=[1]", "train.batch_size=4"],
        "joint": ["data.modalities.audio.data.clips=300", "data.modalities.audio.data.n_mels=16", "data.modalities.audio.data.frames=16",
                  "model.width=16", "model.layers=1", "model.heads=2", "model.patch.audio=4", "train.batch_size=4"],
    },
}  # fmt: skip

#: peak dense bf16 tensor throughput (FLOP/s) of GPUs the suite may meet, for the utilisation figure
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def _sets(raw: dict[str, Any], extra: list[str]) -> list[str]:
    """No evaluation or checkpoints inside the timed run; learned schedules past their warm-up, so
    their per-step observation and refreshes are timed too."""
    from multidiff.recipe import schedule_specs
    from multidiff.schedules.registry import REGISTRY, param_defaults

    sets = ["train.progress_bar=false", "train.eval_every=1000000", "eval.quality_every=0", "train.checkpoint_every=1000000"]
    specs = schedule_specs(raw)
    for key, spec in specs.items():
        if spec.get("name") in REGISTRY and "warmup" in param_defaults(spec["name"]):
            sets.append(f"schedule.{key + '.' if len(specs) > 1 else ''}warmup=0")
    return sets + extra


class RawLoop:
    """A plain PyTorch loop over a copy of the run's model, data, optimizer, schedule and EMA."""

    def __init__(self, setup: Any, module: Any, device: torch.device) -> None:
        self.model = copy.deepcopy(module.model).to(device)
        self.schedule = copy.deepcopy(module.schedule).to(device)
        self.ema = [p.detach().clone() for p in self.model.parameters()]
        t = setup.cfg.train
        fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
        self.opt = torch.optim.Adam(self.model.parameters(), lr=t.lr, betas=(0.9, 0.99), weight_decay=t.weight_decay, **fused)
        self.weight, self.device, self.clip = setup.weight, device, t.grad_clip
        data = setup.data.train.to(device) if device.type == "cuda" else setup.data.train
        from multidiff.train.data import StepBatches

        self.stream = iter(StepBatches(data, t.batch_size, setup.cfg.seed))
        self.step, self.decay = 0, t.ema_decay
        self.params = list(self.model.parameters())

    def run(self, steps: int) -> list[float]:
        times = []
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        for _ in range(steps):
            sync()
            start = time.perf_counter()
            batch = next(self.stream).to(self.device, non_blocking=True)
            x = self.model.encode(batch)
            g = torch.Generator(device=self.device).manual_seed(self.step)
            sigma = self.schedule.sample(x.shape[0], g, self.device)
            noise = torch.randn(x.shape, generator=g, device=self.device, dtype=x.dtype)
            out = self.model.modality_loss(x, sigma, noise, self.weight, batch, generator=g)
            self.schedule.observe(sigma, out.error, out.loss.detach(), out.mask)
            per = out.loss.sum(1)
            self.opt.zero_grad(set_to_none=True)
            per.mean().backward()
            if self.clip:
                torch.nn.utils.clip_grad_norm_(self.params, self.clip)
            self.opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1 - self.decay)
            self.step += 1
            if self.schedule.refresh_every and self.step % self.schedule.refresh_every == 0:
                self.schedule.refresh(self.step)
            sync()
            times.append(time.perf_counter() - start)
        return times


def interleaver(setup: Any, block: int, blocks: int, device: torch.device):
    import lightning as L

    class Interleave(L.Callback):
        """Times Lightning's steps; after every block, runs and times a block of the raw loop."""

        def __init__(self) -> None:
            self.lightning: list[list[float]] = [[]]
            self.raw: list[list[float]] = []
            self.loop: Any = None
            self.last: float | None = None

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.loop = RawLoop(setup, pl_module, device)
            self.loop.run(block)  # warm-up (allocator, kernels, first refresh)

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if self.last is None:
                self.last = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            if self.last is not None:
                self.lightning[-1].append(now - self.last)
            step = trainer.global_step
            if step > block and step % block == 0 and len(self.raw) < blocks:  # after a warm-up block
                self.raw.append(self.loop.run(block))
                self.lightning.append([])
            self.last = time.perf_counter()  # the raw block's time is not Lightning's

    return Interleave()


def flops_per_step(setup: Any, device: torch.device) -> float:
    """Model FLOPs of one training step (forward + backward), counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(setup.model).to(device)
    x = model.encode(setup.data.train[: setup.cfg.train.batch_size].to(device))
    sigma = setup.schedule.to(device).sample(x.shape[0], None, device)
    with FlopCounterMode(display=False) as counter:
        out = model.modality_loss(x, sigma, torch.randn_like(x), setup.weight, setup.data.train[: setup.cfg.train.batch_size].to(device))
        out.loss.sum(1).mean().backward()
    return float(counter.get_total_flops())


def bench(domain: str, recipe_path: str, device: torch.device, block: int, blocks: int, extra: list[str], flops: bool) -> dict[str, Any]:
    from multidiff.pipeline import prepare
    from multidiff.recipe import load_recipe_file, resolve
    from multidiff.train.fit import fit

    raw = load_recipe_file(ROOT / recipe_path)
    accel = ["train.accelerator=gpu"] if device.type == "cuda" else ["train.accelerator=cpu"]
    recipe = resolve(raw, recipe_path, _sets(raw, accel + extra + [f"train.max_steps={block * (blocks + 2)}"]))
    setup = prepare(recipe, metrics=False)
    cb = interleaver(setup, block, blocks, device)
    with tempfile.TemporaryDirectory() as tmp:
        fit(setup, Path(tmp), extra_callbacks=[cb])
    light = [t for blk in cb.lightning[1:-1] for t in blk]  # the first block warms up; the last may be partial
    raw_times = [t for blk in cb.raw for t in blk]
    lm, rm = statistics.median(light), statistics.median(raw_times)
    # each Lightning block against the raw block just before it: their spread is the ratio's own noise
    pairs = [statistics.median(a) / statistics.median(b) for a, b in zip(cb.lightning[1:-1], cb.raw) if a and b]
    out = {"domain": domain, "recipe": recipe_path, "lightning_ms": 1000 * lm, "raw_ms": 1000 * rm, "ratio": lm / rm,
           "block_ratios": pairs,
           "steps_per_s": 1 / lm, "batch": setup.cfg.train.batch_size, "params": sum(p.numel() for p in setup.model.parameters())}  # fmt: skip
    if device.type == "cuda":
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    if flops:
        f = flops_per_step(setup, device)
        out["tflops_per_step"] = f / 1e12
        peak = next((v for k, v in PEAK_FLOPS.items() if device.type == "cuda" and k in torch.cuda.get_device_name(device)), None)
        out["mfu"] = (f / lm) / peak if peak else None
    return out


def _spread(ratios: list[float]) -> str:
    return f"(blocks {min(ratios):.2f}–{max(ratios):.2f}) " if ratios else ""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--domains", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--block", type=int, default=15, help="steps per timed block")
    p.add_argument("--blocks", type=int, default=6, help="blocks of each kind")
    p.add_argument("--scale", choices=list(SCALES), default="cpu", help="recipe sizes: cpu (as shipped), real (GPU), tiny (dry run)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe overrides for every domain (e.g. train.compile=true)")
    p.add_argument("--flops", action="store_true", help="count model FLOPs and report utilisation (GPU)")
    p.add_argument("--json", help="write the figures to this file too")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    rows = []
    for domain in args.domains:
        r = bench(domain, RECIPES[domain], device, args.block, args.blocks, SCALES[args.scale][domain] + args.set, args.flops)
        rows.append(r)
        extra = ""
        if "peak_memory_mb" in r:
            extra += f" · peak {r['peak_memory_mb']:.0f} MB"
        if r.get("mfu") is not None:
            extra += f" · {r['tflops_per_step']:.3g} TFLOP/step · MFU {100 * r['mfu']:.1f}%"
        print(f"{domain:13s} trainer {r['lightning_ms']:7.2f} ms/step · raw {r['raw_ms']:7.2f} ms/step · ratio {r['ratio']:.3f} "
              f"{_spread(r['block_ratios'])}"
              f"· {r['steps_per_s']:.1f} steps/s (batch {r['batch']}, {r['params'] / 1e6:.2f} M params){extra}", flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    ratio = math.exp(sum(math.log(r["ratio"]) for r in rows) / len(rows))
    print(f"trainer/raw step-time ratio: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

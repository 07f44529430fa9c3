"""Sample along a schedule file's σ grid with multidiff's samplers and with diffusers' schedulers.

What it shows: ``from_schedule`` turns a schedule file into K sampling σ's (then 0);
``multidiff.interop.apply_to_scheduler`` makes diffusers' ``EulerDiscreteScheduler``,
``HeunDiscreteScheduler`` and ``EDMEulerScheduler`` step through exactly those σ's. The model is the
exact denoiser of Gaussian data of std s = 0.5, D(x; σ) = x·s²/(s² + σ²), so every sampler's output
can be checked against the others and against the exact ODE solution (std s·σ0/√(s² + σ0²)):

- diffusers' Euler and EDM-Euler against multidiff's ``euler``, diffusers' Heun against ``heun``:
  the same steps from the same start, so the max |difference| is 0 up to float32 rounding. Heun
  matches because its interleaved σ list [σ0, σ1, σ1, …, σ_{K−1}, σ_{K−1}, 0] gives 2K − 1 model
  calls: a predictor at σ_i, a corrector at σ_{i+1}, and a plain Euler last step into σ = 0, as in
  multidiff's (EDM's) Heun.

Run:  python examples/sample_with_exported_schedule.py runs/ddpm-infonoise/schedule.json --steps 24
Prints one line per sampler and a final JSON line (max |diff| and std of each), for scripts.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from multidiff import interop
from multidiff.diffusion.sampling import euler, heun
from multidiff.schedules.grids import from_schedule

S = 0.5  # std of the Gaussian data the exact denoiser knows


def exact_denoiser(x: Tensor, sigma: Tensor) -> Tensor:
    """E[x0 | x] for x0 ~ N(0, S²) per dimension and x = x0 + σε (σ per example)."""
    s2 = sigma.reshape(-1, *[1] * (x.dim() - 1)).to(x.dtype) ** 2
    return x * (S**2 / (S**2 + s2))


def run_diffusers(scheduler: Any, sigmas: Tensor, x: Tensor, denoiser: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """diffusers' own loop over a scheduler configured by multidiff.interop: the model sees σ (not
    t), no ``scale_model_input`` (the denoiser is preconditioned itself), start at sigmas[0]·noise."""
    interop.apply_to_scheduler(scheduler, sigmas)
    edm = type(scheduler).__name__ == "EDMEulerScheduler"
    for i, t in enumerate(scheduler.timesteps):
        x0 = denoiser(x, scheduler.sigmas[i].expand(x.shape[0]))  # σ of the i-th model call
        # EDMEulerScheduler preconditions ε/v outputs itself; an x0 estimate goes in as pred_original_sample
        out = scheduler.step(x0, t, x, pred_original_sample=x0) if edm else scheduler.step(x0, t, x)
        x = out.prev_sample
    return x


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", help="a multidiff schedule file (.json)")
    p.add_argument("--steps", type=int, default=24, help="sampling steps K")
    p.add_argument("--out", help="folder to save the samples in (samples.npz); default: not saved")
    p.add_argument("--tiny", action="store_true", help="64 samples instead of 1024")
    p.add_argument("--mix", type=float, default=0.5, help="share of EDM's rho-spacing in the grid (see from_schedule)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    from diffusers import EDMEulerScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler
    from diffusers.utils import logging

    logging.set_verbosity_error()  # diffusers warns when scale_model_input is skipped; here that is intended
    sigmas = from_schedule(args.file, args.steps, mix=args.mix)
    n = 64 if args.tiny else 1024
    x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(args.seed)) * sigmas[0]
    samples = {"multidiff-euler": euler(exact_denoiser, x, sigmas), "multidiff-heun": heun(exact_denoiser, x, sigmas)}
    # EDM's own σ range set to the grid's, so the ramp positions lie in [0, 1] (any range works)
    edm = EDMEulerScheduler(sigma_min=float(sigmas[-2]), sigma_max=float(sigmas[0]), sigma_data=S)
    schedulers = {  # name: (scheduler, the multidiff sampler it must reproduce)
        "diffusers-euler": (EulerDiscreteScheduler(prediction_type="sample"), "multidiff-euler"),
        "diffusers-heun": (HeunDiscreteScheduler(prediction_type="sample"), "multidiff-heun"),
        "diffusers-edm-euler": (edm, "multidiff-euler"),
    }
    diffs = {}
    for name, (scheduler, reference) in schedulers.items():
        samples[name] = run_diffusers(scheduler, sigmas, x, exact_denoiser)
        diffs[name] = float((samples[name] - samples[reference]).abs().max())
    exact_std = S * float(sigmas[0]) / (S**2 + float(sigmas[0]) ** 2) ** 0.5
    print(f"{args.file}: {args.steps} steps, σ from {float(sigmas[0]):.4g} to {float(sigmas[-2]):.4g}; exact ODE std {exact_std:.4f}")
    for name, value in samples.items():
        against = f"  max |diff| vs {schedulers[name][1]}: {diffs[name]:.3g}" if name in diffs else ""
        print(f"{name:20s} std {float(value.std()):.4f}{against}")
    print("(Heun matches too: its interleaved σ's give 2K − 1 model calls, predictor at σ_i, corrector at σ_{i+1}, "
          "a plain Euler step into 0; the std's departure from the exact one is the K-step discretization error)")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        np.savez(Path(args.out) / "samples.npz", **{k: v.numpy() for k, v in samples.items()})
    print(json.dumps({"max_abs_diff": diffs, "std": {k: float(v.std()) for k, v in samples.items()}, "exact_std": exact_std}))


if __name__ == "__main__":
    main()

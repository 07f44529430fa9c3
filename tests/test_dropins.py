"""The drop-ins inside the real libraries' training steps: k-diffusion's ``Denoiser.loss`` and the
lines of diffusers' flow-matching scripts (its scheduler, its loss weighting), with exact Gaussian
denoisers in place of the network, so what the schedule learns has a closed form: for data of RMS s
the x0 MMSE per dimension is s²σ²/(s² + σ²) at VE noise σ. Then what users of those loops need
besides: refreshes counted in optimizer steps under gradient accumulation, and identical schedules
on every process."""
import importlib
import importlib.util
import math
import sys
import types

import numpy as np
import pytest
import torch
from conftest import require

import multidiff
from multidiff.dropins import KDIFFUSION_WEIGHTINGS, KDiffusionDensity, kdiffusion_loss_weight
from multidiff.schedules.io import load_schedule_file


def assert_learned_the_gaussian_mmse(schedule, rms: float, min_count: int = 40) -> None:
    profile = schedule.to_table().profile
    u, mmse, counts = (np.asarray(profile[k]) for k in ("u", "mmse", "counts"))
    seen = counts >= min_count
    assert seen.sum() >= 15, counts
    sigma2 = np.exp(2 * u[seen])
    truth = rms**2 * sigma2 / (rms**2 + sigma2)
    rel = np.abs(mmse[seen] / truth - 1)
    assert np.median(rel) < 0.05 and rel.max() < 0.3, rel


# ---- k-diffusion -----------------------------------------------------------------------------------

@pytest.fixture
def k_layers(monkeypatch):
    """k-diffusion's own ``layers`` module (``Denoiser``). Its package ``__init__`` imports the whole
    training stack (clip, kornia, wandb, clean-fid), which the tests do not install; the Denoiser needs
    only ``layers``, ``utils`` and ``sampling``, so the package is registered without running its
    ``__init__``. ``utils`` imports torchvision for image helpers the Denoiser never calls: a stand-in
    is registered only when torchvision is absent, and every module added is removed afterwards."""
    spec = importlib.util.find_spec("k_diffusion")
    require(spec is not None, "k-diffusion (pip install --no-deps k-diffusion==0.1.1.post1 dctorch==0.1.2)")
    before = set(sys.modules)
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    monkeypatch.setitem(sys.modules, "k_diffusion", package)
    if importlib.util.find_spec("torchvision") is None:
        for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    yield importlib.import_module("k_diffusion.layers")
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("k_diffusion", "torchvision"):
            del sys.modules[name]


class ExactF(torch.nn.Module):
    """k-diffusion's inner model, exactly: the F that makes the preconditioned denoiser the Bayes
    denoiser of Gaussian data of RMS ``rms`` (which need not be the Denoiser's σ_data)."""

    def __init__(self, rms: float, sigma_data: float) -> None:
        super().__init__()
        self.rms, self.sigma_data = rms, sigma_data

    def forward(self, scaled: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.view(-1, *[1] * (scaled.ndim - 1))
        d2 = self.sigma_data**2
        noised = scaled * (s**2 + d2).sqrt()  # the Denoiser passed noised · c_in
        best = noised * self.rms**2 / (self.rms**2 + s**2)
        return (best - noised * d2 / (s**2 + d2)) / (s * self.sigma_data / (s**2 + d2).sqrt())


@pytest.mark.parametrize("weighting", KDIFFUSION_WEIGHTINGS)
def test_kdiffusion_denoiser_loss_teaches_the_gaussian_mmse(k_layers, weighting, tmp_path):
    torch.manual_seed(0)
    rms, sigma_data = 1.0, 0.5  # preconditioned for 0.5, data of RMS 1: the truth is not c_out²
    model = k_layers.Denoiser(ExactF(rms, sigma_data), sigma_data=sigma_data, weighting=weighting)
    sample_density = multidiff.KDiffusionDensity("infonoise", sigma_data=sigma_data, weighting=weighting, warmup=100, refresh=50)
    device = torch.device("cpu")
    for _ in range(300):
        reals = rms * torch.randn(64, 1, 4, 4)
        noise = torch.randn_like(reals)
        sigma = sample_density([reals.shape[0]], device=device)  # k-diffusion's train.py line, unchanged
        losses = model.loss(reals, noise, sigma)
        sample_density.observe(sigma, losses)
        sample_density.step()
    assert sigma.shape == (64,) and sigma.dtype == torch.float32
    assert_learned_the_gaussian_mmse(sample_density.schedule, rms)
    saved = load_schedule_file(sample_density.save(tmp_path / "schedule.json"))
    assert saved.table.step == 300 and saved.meta["info"]["loop"] == "k-diffusion"
    assert saved.meta["weighting"] == f"k-diffusion {weighting}" and saved.meta["info"]["target"] == "F"


@pytest.mark.parametrize("weighting", KDIFFUSION_WEIGHTINGS)
def test_kdiffusion_loss_weight_is_the_denoisers(k_layers, weighting):
    sigma = torch.logspace(-3, 2, 50, dtype=torch.float64)
    theirs = k_layers.Denoiser(torch.nn.Identity(), sigma_data=0.7, weighting=weighting).weighting(sigma)
    assert torch.allclose(kdiffusion_loss_weight(weighting, sigma, 0.7), theirs.double(), rtol=1e-12)


def test_kdiffusion_density_refuses_an_unknown_weighting():
    with pytest.raises(multidiff.UserError, match="karras, snr, soft-min-snr"):
        KDiffusionDensity(sigma_data=0.5, weighting="min-snr")


# ---- diffusers' flow-matching scripts --------------------------------------------------------------

def flow_step(density, noise_scheduler_copy, model_input, target_kind: str, scheme: str):
    """One step of diffusers' SD3/Flux training scripts with the density swapped in and the exact
    Gaussian velocity model as the transformer (the scripts' names, so the README's lines are these)."""
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    args = types.SimpleNamespace(weighting_scheme=scheme, logit_mean=0.0, logit_std=1.0, mode_scale=1.29)
    bsz, rms = model_input.shape[0], float(model_input.square().mean().sqrt())
    noise = torch.randn_like(model_input)
    u = density(weighting_scheme=args.weighting_scheme, batch_size=bsz, logit_mean=args.logit_mean,
                logit_std=args.logit_std, mode_scale=args.mode_scale, device=model_input.device)
    indices = (u * noise_scheduler_copy.config.num_train_timesteps).long()
    timesteps = noise_scheduler_copy.timesteps[indices].to(device=model_input.device)
    step_indices = [(noise_scheduler_copy.timesteps == t).nonzero().item() for t in timesteps]  # the scripts' get_sigmas
    sigmas = noise_scheduler_copy.sigmas[step_indices].flatten().view(-1, 1, 1, 1)
    noisy_model_input = (1.0 - sigmas) * model_input + sigmas * noise
    # E[x0 | x_t] for Gaussian x0: x_t/(1 − t) = x0 + σε, σ = t/(1 − t); written to stay finite at t = 1
    best = noisy_model_input * rms**2 * (1 - sigmas) / (rms**2 * (1 - sigmas) ** 2 + sigmas**2)
    model_pred = (noisy_model_input - best) / sigmas  # the exact velocity
    if target_kind == "x0":  # SD3's --precondition_outputs
        model_pred = model_pred * (-sigmas) + noisy_model_input
    weighting = compute_loss_weighting_for_sd3(weighting_scheme=args.weighting_scheme, sigmas=sigmas)
    target = model_input if target_kind == "x0" else noise - model_input
    loss = torch.mean((weighting.float() * (model_pred.float() - target.float()) ** 2).reshape(target.shape[0], -1), 1)
    density.observe(timesteps, loss, weight=weighting)
    loss = loss.mean()
    return u, sigmas


@pytest.mark.parametrize(("target", "scheme"), [("velocity", "logit_normal"), ("x0", "cosmap"), ("velocity", "sigma_sqrt")])
def test_diffusers_flow_step_teaches_the_gaussian_mmse(target, scheme):
    pytest.importorskip("diffusers")
    from diffusers import FlowMatchEulerDiscreteScheduler

    torch.manual_seed(1)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    rms = 0.8
    density = multidiff.DiffusersTimestepDensity(scheduler, "infonoise", sigma_data=rms, target=target, warmup=100, refresh=50)
    for _ in range(300):
        flow_step(density, scheduler, rms * torch.randn(64, 1, 4, 4), target, scheme)
        density.step()  # once per optimizer step
    assert_learned_the_gaussian_mmse(density.schedule, rms)


def test_diffusers_timesteps_follow_the_schedule_and_carry_no_order():
    """Through the scripts' own lines (u → index → timestep → flow t), each timestep is drawn with
    the schedule's mass between the logSNR midpoints around it (log-uniform σ: exact masses)."""
    pytest.importorskip("diffusers")
    from diffusers import FlowMatchEulerDiscreteScheduler
    from scipy.stats import spearmanr

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    density = multidiff.DiffusersTimestepDensity(scheduler, "loguniform", sigma_data=1.0, sigma_range=(0.01, 100.0))
    n = 40_000
    torch.manual_seed(2)
    u = density("logit_normal", n)
    index = (u * 1000).long()
    t = scheduler.sigmas[index].double()
    assert bool(((t > 0) & (t < 1)).all())
    # expected: each timestep owns ln σ between the midpoints to its neighbours, cut to [ln 0.01, ln 100];
    # cleanest first (j = 999 − index); pure noise (t = 1) lies far above 100, so its upper edge is 1
    t_clean = scheduler.sigmas.double().flip(0)[:-1]
    ln_sigma = torch.log(t_clean / (1 - t_clean))
    lo, hi = math.log(0.01), math.log(100.0)
    upper = ((ln_sigma[1:] + ln_sigma[:-1]) / 2).clamp(lo, hi).sub(lo).div(hi - lo)
    expected = torch.cat([upper, torch.ones(2, dtype=torch.float64)])
    drawn = torch.bincount(999 - index, minlength=1000).double().cumsum(0) / n
    assert float((drawn - expected).abs().max()) < 1.63 / math.sqrt(n)  # Kolmogorov's 1 % bound
    rho = spearmanr(np.arange(4096), density("logit_normal", 4096).numpy()).statistic
    assert abs(rho) < 0.06


def test_diffusers_density_refuses_what_is_not_a_training_scheduler():
    pytest.importorskip("diffusers")
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    density = multidiff.DiffusersTimestepDensity(scheduler, sigma_data=1.0)
    with pytest.raises(multidiff.UserError, match="not the scheduler's training timesteps"):
        density.observe(torch.tensor([500.25]), torch.ones(1))
    with pytest.raises(multidiff.UserError, match="per-example losses"):
        density.observe(scheduler.timesteps[:4], torch.ones(()))
    scheduler.set_timesteps(20)
    with pytest.raises(multidiff.UserError, match="training copy"):
        multidiff.DiffusersTimestepDensity(scheduler, sigma_data=1.0)
    with pytest.raises(multidiff.UserError, match="velocity, x0"):
        multidiff.DiffusersTimestepDensity(FlowMatchEulerDiscreteScheduler(), sigma_data=1.0, target="eps")


# ---- gradient accumulation and several processes ---------------------------------------------------

def exact_losses(sigma: torch.Tensor, generator: torch.Generator, rms: float = 1.0) -> torch.Tensor:
    """karras-weighted F-MSEs of the exact denoiser for Gaussian data of RMS ``rms`` (σ_data 0.5)."""
    x = rms * torch.randn(sigma.shape[0], 16, generator=generator, dtype=torch.float64)
    s = sigma.double()[:, None]
    noisy = x + s * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    x0_error = (noisy * rms**2 / (rms**2 + s**2) - x).square().mean(1)
    return (x0_error / (s[:, 0] ** 2 * 0.25 / (s[:, 0] ** 2 + 0.25))).float()


def test_gradient_accumulation_refreshes_on_optimizer_steps():
    """Four micro-batches of 16 between optimizer steps learn what one batch of 64 learns, with the
    refreshes at the same optimizer steps."""
    whole = KDiffusionDensity(sigma_data=0.5, warmup=40, refresh=20)
    micro = KDiffusionDensity(sigma_data=0.5, warmup=40, refresh=20)
    g = torch.Generator().manual_seed(3)
    refreshed = {"whole": [], "micro": []}
    for step in range(1, 121):
        sigma = whole([64])
        losses = exact_losses(sigma, g)
        whole.observe(sigma, losses)
        for part in range(4):
            micro.observe(sigma[16 * part : 16 * part + 16], losses[16 * part : 16 * part + 16])
        if whole.step():
            refreshed["whole"].append(step)
        if micro.step():
            refreshed["micro"].append(step)
    assert refreshed["whole"] == refreshed["micro"] == [20, 40, 60, 80, 100, 120]
    a, b = whole.schedule.to_table(), micro.schedule.to_table()
    assert np.allclose(a.pdf, b.pdf, rtol=1e-4, atol=1e-6)
    assert a.step == b.step == 120


def _rank(rank: int, world: int, init: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    density = KDiffusionDensity(sigma_data=0.5, warmup=30, refresh=15)
    g = torch.Generator().manual_seed(4)  # every rank makes the global batch; each observes its share
    for _ in range(90):
        sigma = torch.exp(torch.randn(24, generator=g) * 1.5 - 0.5)
        losses = exact_losses(sigma, g)
        share = slice(0, 14) if rank == 0 else slice(14, 24)  # unequal shares, as a last batch may be
        density.observe(sigma[share], losses[share])
        density.step()
    torch.save({"pdf": density.schedule.to_table().pdf, "refreshes": density.steps}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_several_processes_learn_from_the_global_batch_and_agree(tmp_path):
    """Two processes (gloo), each observing its share of every global batch, end with identical
    schedules, equal to one process that observed the whole batches."""
    torch.multiprocessing.spawn(_rank, args=(2, f"file://{tmp_path}/init", str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["pdf"] == r1["pdf"]  # identical copies, bit for bit
    assert r0["refreshes"] == r1["refreshes"] == 90
    single = KDiffusionDensity(sigma_data=0.5, warmup=30, refresh=15)
    g = torch.Generator().manual_seed(4)
    for _ in range(90):
        sigma = torch.exp(torch.randn(24, generator=g) * 1.5 - 0.5)
        single.observe(sigma, exact_losses(sigma, g))
        single.step()
    assert np.allclose(r0["pdf"], single.schedule.to_table().pdf, rtol=1e-5, atol=1e-7)

"""The examples as a user runs them (tiny sizes), ``multidiff.interop`` against closed-form samplers
and diffusers' own schedulers, ``schedule sigmas --format``, the Lightning callback's checkpoints,
and the acceptance path: a diffusers UNet trained on InfoNoise timesteps exports a schedule that
``multidiff train`` and diffusers' samplers both take."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import REPO, tiny_train_args

import multidiff
from multidiff import interop
from multidiff.cli import main
from multidiff.diffusion.sampling import euler, heun, karras
from multidiff.schedules.grids import from_schedule
from multidiff.schedules.io import load_schedule_file

S = 0.5  # std of the Gaussian data whose exact denoiser the sampler tests use
# diffusers 0.42.1 turns alphas_cumprod into numpy through __array__, which NumPy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def run_example(name: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "examples" / name), *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def ddpm_file(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("ddpm")
    stdout = run_example("ddpm_infonoise.py", "--tiny", "--out", str(out))
    return out / "schedule.json", stdout


def assert_learned(path: Path) -> multidiff.ScheduleTable:
    """A valid InfoNoise file whose density moved away from its warm-up base (EDM's) after refreshes."""
    loaded = load_schedule_file(path)
    t = loaded.table
    assert t.method == "infonoise" and t.step > t.params["warmup"] and np.isfinite(t.profile["mmse"]).any()
    base = multidiff.make_schedule("edm", sigma_min=t.sigma_min, sigma_max=t.sigma_max, sigma_data=loaded.meta["sigma_data"],
                                   weighting="edm")  # fmt: skip
    base_pdf = base.pdf(torch.tensor(t.u, dtype=torch.float32)).double().numpy()
    assert 0.5 * np.trapezoid(np.abs(np.asarray(t.pdf) - base_pdf), t.u) > 0.1  # total variation from the base
    return t


# ---- the examples -----------------------------------------------------------------------------------


def test_ddpm_example_learns_and_exports_a_schedule(ddpm_file):
    path, stdout = ddpm_file
    t = assert_learned(path)
    meta = load_schedule_file(path).meta
    assert meta["weighting"] == "eps-mse" and meta["info"]["parameterization"]["name"] == "ddpm"
    peak = float(stdout.split("learned density peaks at sigma = ")[1].split()[0])
    assert peak == pytest.approx(math.exp(t.u[int(np.argmax(t.pdf))]), rel=1e-3)
    assert "information rate peaks at sigma = " in stdout


def test_rectified_flow_example_learns_and_exports_a_schedule(tmp_path):
    stdout = run_example("rectified_flow_infonoise.py", "--tiny", "--out", str(tmp_path))
    assert_learned(tmp_path / "schedule.json")
    assert load_schedule_file(tmp_path / "schedule.json").meta["info"]["target"] == "velocity"
    assert "learned density (per unit ln σ) peaks at sigma" in stdout


def test_lightning_example_trains_with_the_callback_and_checkpoints_the_schedule(tmp_path):
    run_example("lightning_callback.py", "--tiny", "--out", str(tmp_path))
    t = assert_learned(tmp_path / "schedule.json")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    saved = ckpt["multidiff_noise_schedule"]
    assert ckpt["global_step"] == 12 and saved["last_refresh"] == t.step == 12
    assert [h["step"] for h in saved["state"]["history"]] == [4, 8, 12]


def test_sampling_example_matches_diffusers_schedulers_on_the_exported_file(ddpm_file):
    stdout = run_example("sample_with_exported_schedule.py", str(ddpm_file[0]), "--tiny", "--steps", "10")
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert set(summary["max_abs_diff"]) == {"diffusers-euler", "diffusers-heun", "diffusers-edm-euler"}
    assert max(summary["max_abs_diff"].values()) < 1e-5
    assert all(0.1 < s < 2 for s in summary["std"].values()) and summary["exact_std"] == pytest.approx(0.5, abs=1e-3)


# ---- interop against independent truth -----------------------------------------------------------------


def exact_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return x * (S**2 / (S**2 + sigma.reshape(-1, *[1] * (x.dim() - 1)) ** 2))


def closed_form(x: torch.Tensor, sigmas: torch.Tensor, second_order: bool) -> torch.Tensor:
    """Euler / Heun on the exact Gaussian denoiser in closed form: dx/dσ = c(σ)·x, c = σ/(S² + σ²),
    so each step multiplies x by a number (float64)."""
    s = sigmas.double().tolist()
    factor = 1.0
    for a, b in zip(s[:-1], s[1:]):
        h, ca = b - a, a / (S**2 + a**2)
        euler_step = 1 + h * ca
        heun_step = 1 + h / 2 * (ca + b / (S**2 + b**2) * euler_step)
        factor *= heun_step if second_order and b > 0 else euler_step
    return x.double() * factor


def run_diffusers(scheduler, sigmas: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    interop.apply_to_scheduler(scheduler, sigmas)
    edm = type(scheduler).__name__ == "EDMEulerScheduler"
    for i, t in enumerate(scheduler.timesteps):
        x0 = exact_denoiser(x, scheduler.sigmas[i].expand(x.shape[0]))
        x = (scheduler.step(x0, t, x, pred_original_sample=x0) if edm else scheduler.step(x0, t, x)).prev_sample
    return x


def grids(ddpm_path: Path) -> dict[str, torch.Tensor]:
    return {"karras": karras(9, 0.002, 80.0), "learned": from_schedule(ddpm_path, 9)}


@pytest.fixture(scope="module")
def diffusers_schedulers():
    from diffusers import EDMEulerScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler
    from diffusers.utils import logging

    logging.set_verbosity_error()  # skipping scale_model_input is intended (the denoiser takes σ itself)
    return EulerDiscreteScheduler, HeunDiscreteScheduler, EDMEulerScheduler


def test_diffusers_schedulers_follow_a_multidiff_grid_exactly(ddpm_file, diffusers_schedulers):
    euler_cls, heun_cls, edm_cls = diffusers_schedulers
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sd_betas = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)  # σ ≤ 14.6: the grid leaves its range
    for name, sigmas in grids(ddpm_file[0]).items():
        x_T = x * sigmas[0]
        truth_euler, truth_heun = closed_form(x_T, sigmas, False), closed_form(x_T, sigmas, True)
        scale = float(truth_heun.abs().max())
        assert (euler(exact_denoiser, x_T, sigmas) - truth_euler).abs().max() < 1e-5 * scale, name
        assert (heun(exact_denoiser, x_T, sigmas) - truth_heun).abs().max() < 1e-5 * scale, name
        for sched in (euler_cls(prediction_type="sample"), euler_cls(prediction_type="sample", **sd_betas),
                      edm_cls(sigma_data=S), edm_cls(sigma_min=float(sigmas[-2]), sigma_max=float(sigmas[0]))):  # fmt: skip
            assert (run_diffusers(sched, sigmas, x_T) - truth_euler).abs().max() < 1e-5 * scale, (name, sched.config)
            assert torch.equal(sched.sigmas, sigmas)  # the very same float32 σ's
        for betas in ({}, sd_betas):
            sched = heun_cls(prediction_type="sample", **betas)
            assert (run_diffusers(sched, sigmas, x_T) - truth_heun).abs().max() < 1e-5 * scale, name
            assert len(sched.timesteps) == 2 * (len(sigmas) - 1) - 1  # model calls, as multidiff's heun
            same_betas = {k: sched.config[k] for k in ("beta_start", "beta_end", "beta_schedule")}  # their defaults differ
            own = interop.apply_to_scheduler(euler_cls(**same_betas), sigmas).timesteps  # diffusers' own σ → t
            assert torch.allclose(sched.timesteps[[0, *range(1, len(sched.timesteps), 2)]], own, atol=1e-3)


def test_conversions_and_their_errors(diffusers_schedulers):
    sigmas = karras(6, 0.01, 50.0)
    assert interop.for_k_diffusion(sigmas) == interop.for_diffusers_euler(sigmas) == sigmas.tolist()
    inter = interop.for_diffusers_heun(sigmas)
    assert len(inter) == 12 and inter[0] == float(sigmas[0]) and inter[1] == inter[2] == float(sigmas[1]) and inter[-1] == 0.0
    for cfg in [(0.002, 80.0, 7.0), (0.01, 50.0, 7.0), (0.1, 10.0, 3.0)]:
        ramp = interop.for_diffusers_edm(sigmas, *cfg)
        assert len(ramp) == 6 and torch.equal(interop.sigma_from_edm_ramp(ramp, *cfg).float(), sigmas[:-1])
    assert interop.for_diffusers_edm(sigmas, 0.01, 50.0, 7.0)[0] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        interop.for_k_diffusion([1.0, 2.0, 0.0])  # not descending
    with pytest.raises(ValueError):
        interop.for_diffusers_euler([2.0, 1.0])  # no final 0
    from diffusers import DDPMScheduler

    with pytest.raises(multidiff.UserError, match="supports"):
        interop.apply_to_scheduler(DDPMScheduler(), sigmas)
    with pytest.raises(ValueError, match="karras"):
        interop.apply_to_scheduler(diffusers_schedulers[2](sigma_schedule="exponential"), sigmas)


def test_schedule_sigmas_formats_are_what_the_consumers_take(ddpm_file, diffusers_schedulers, capsys):
    path = str(ddpm_file[0])
    grid = from_schedule(path, 6)
    out = {}
    for fmt in ("k-diffusion", "diffusers-euler", "diffusers-heun", "diffusers-edm"):
        assert main(["schedule", "sigmas", path, "--steps", "6", "--format", fmt]) == 0
        out[fmt] = json.loads(capsys.readouterr().out)
    assert main(["schedule", "sigmas", path, "--steps", "6"]) == 0  # the default is k-diffusion, as before
    assert json.loads(capsys.readouterr().out) == out["k-diffusion"] == [float(f"{s:.6g}") for s in grid.tolist()]
    assert [len(v) for v in out.values()] == [7, 7, 12, 6]
    euler_cls, heun_cls, edm_cls = diffusers_schedulers
    e = euler_cls(prediction_type="sample")
    e.set_timesteps(sigmas=out["diffusers-euler"])
    assert torch.equal(e.sigmas, grid)  # 9 significant digits: the float32 σ's exactly
    m = edm_cls()  # the CLI's ramp is for EDMEulerScheduler's defaults
    m.set_timesteps(sigmas=torch.tensor(out["diffusers-edm"], dtype=torch.float64))
    assert torch.equal(m.sigmas, grid)
    m.set_timesteps(sigmas=torch.tensor(out["diffusers-edm"]))  # a float32 ramp: a few ulps off
    assert torch.allclose(m.sigmas, grid, rtol=1e-5)
    h = heun_cls(prediction_type="sample")
    h.set_timesteps(6)
    h.sigmas = torch.tensor(out["diffusers-heun"])
    assert len(h.sigmas) == len(h.timesteps) + 1 and torch.equal(h.sigmas.unique(), grid.unique())
    with pytest.raises(SystemExit) as exc:
        main(["schedule", "sigmas", path, "--format", "diffusers-ddim"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "invalid choice" in err[0]


# ---- the Lightning callback ------------------------------------------------------------------------


def feed(callback, steps: range, g: torch.Generator) -> None:
    """Training batches as a LightningModule would return them: VE σ's from the schedule and the ε-MSE
    of an exact denoiser of N(0, S²) data, S²/(S² + σ²) per dimension, times exponential noise."""
    for step in steps:
        sigma = callback.schedule.sample(64, generator=g)
        eps_mse = S**2 / (S**2 + sigma**2) * torch.empty(64, dtype=torch.float64).exponential_(generator=g)
        callback.on_train_batch_end(SimpleNamespace(global_step=step), None, {"loss": eps_mse.mean(), "t": sigma,
                                    "per_example_loss": eps_mse}, None, 0)  # fmt: skip


def test_callback_checkpoint_resumes_the_schedule_exactly(tmp_path):
    from multidiff.train.external import NoiseScheduleCallback

    def fresh(export=None):
        noise = multidiff.VE(S).make_schedule("infonoise", target="eps", warmup=4, refresh=4, bins=24, min_count=2)
        return NoiseScheduleCallback(noise, export_path=export)

    module = SimpleNamespace(device=torch.device("cpu"))
    whole, first = fresh(), fresh()
    for cb in (whole, first):
        cb.on_fit_start(None, module)
    assert module.noise_schedule is first.schedule
    feed(whole, range(1, 11), torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    feed(first, range(1, 7), g)  # stop between refreshes: pending statistics must survive
    ckpt = {}
    first.on_save_checkpoint(None, None, ckpt)
    torch.save(ckpt, tmp_path / "c.ckpt")
    resumed = fresh(tmp_path / "s.json")
    resumed.on_load_checkpoint(None, None, torch.load(tmp_path / "c.ckpt", weights_only=True))
    resumed.on_fit_start(None, module)
    feed(resumed, range(7, 11), g)
    a, b = whole.schedule.schedule.to_table(), resumed.schedule.schedule.to_table()
    assert a.pdf == b.pdf and a.profile == b.profile and a.step == b.step == 8
    for key in ("sums", "counts"):  # and the statistics pending for the next refresh
        assert torch.equal(whole.schedule.state_dict()[key], resumed.schedule.state_dict()[key])
    resumed.on_fit_end(SimpleNamespace(is_global_zero=True), module)
    assert load_schedule_file(tmp_path / "s.json").table.pdf == b.pdf
    with pytest.raises(KeyError, match="per_example_loss"):
        resumed.on_train_batch_end(SimpleNamespace(global_step=11), None, {"loss": torch.tensor(1.0)}, None, 0)


def test_callback_refreshes_once_per_optimizer_step_under_gradient_accumulation(tmp_path):
    """With accumulate_grad_batches=4, global_step stays put over four micro-batches: the schedule
    observes every micro-batch but refreshes once per due optimizer step (steps 4, 8, 12)."""
    import lightning as L

    from multidiff.train.external import NoiseScheduleCallback

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 4)

        def training_step(self, batch, batch_idx):
            (x,) = batch
            sigma = self.noise_schedule.sample(len(x), device=self.device).float()
            per_example = (self.net(x + sigma[:, None] * torch.randn_like(x)) - x).square().mean(1)
            return {"loss": per_example.mean(), "t": sigma, "per_example_loss": per_example}

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-3)

    noise = multidiff.VE(0.5).make_schedule("infonoise", target="x0", warmup=0, refresh=4, bins=8, min_count=1)
    refreshed, observed = [], []
    refresh, observe = noise.refresh, noise.observe
    noise.refresh = lambda step: refreshed.append(step) or refresh(step)
    noise.observe = lambda t, loss, **kw: observed.append(len(t)) or observe(t, loss, **kw)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(256, 4)), batch_size=8)
    trainer = L.Trainer(max_steps=12, accumulate_grad_batches=4, accelerator="cpu", devices=1, logger=False,
                        callbacks=[NoiseScheduleCallback(noise)], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(Tiny(), loader)
    assert trainer.global_step == 12 and len(observed) == 48  # every micro-batch observed
    assert refreshed == [4, 8, 12]


# ---- acceptance ------------------------------------------------------------------------------------


def test_acceptance_unet_schedule_trains_multidiff_and_samples_in_diffusers(ddpm_file, diffusers_schedulers, tmp_path):
    """A diffusers UNet2DModel trained a few steps on InfoNoise timesteps → schedule.json, which
    `multidiff train --schedule` accepts (σ range set to the file's) and diffusers' samplers follow."""
    path, _ = ddpm_file
    t = load_schedule_file(path).table
    out = tmp_path / "frozen"
    args = tiny_train_args(out, steps=2) + ["--schedule", str(path), "--set", f"diffusion.sigma_min={t.sigma_min!r}",
                                            "--set", f"diffusion.sigma_max={t.sigma_max!r}"]  # fmt: skip
    assert main(args) == 0
    frozen = load_schedule_file(out / "schedule.json").table
    assert frozen.pdf == t.pdf and json.loads((out / "eval.json").read_text())["step"] == 2
    sigmas = from_schedule(path, 8)
    x_T = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    reference = {False: euler(exact_denoiser, x_T, sigmas), True: heun(exact_denoiser, x_T, sigmas)}
    euler_cls, heun_cls, edm_cls = diffusers_schedulers
    for sched, second_order in ((euler_cls(prediction_type="sample"), False), (heun_cls(prediction_type="sample"), True),
                                (edm_cls(sigma_data=S), False)):  # fmt: skip
        assert (run_diffusers(sched, sigmas, x_T) - reference[second_order]).abs().max() < 1e-5

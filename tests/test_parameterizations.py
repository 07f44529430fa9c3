"""Schedules in other loops' noise variables: exact round trips, converted samples that follow the
density mapped in closed form, and loss conversions checked with an exact Gaussian denoiser."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

import multidiff
from multidiff import DDPM, VE, FlowMatching, LogSNR, VPTime
from multidiff.errors import UserError

LINEAR_BETAS = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
ALPHAS = torch.cumprod(1 - LINEAR_BETAS, 0)  # diffusers' DDPMScheduler default (linear betas)


def continuous():
    return [VE(0.5), VE(2.0), LogSNR(0.5), VPTime("cosine", 0.5), VPTime("linear", 0.5), FlowMatching(0.5)]


@pytest.mark.parametrize("p", continuous(), ids=lambda p: f"{p.name}-{getattr(p, 'kind', '')}-{p.sigma_data}")
def test_round_trips_are_exact(p):
    lo, hi = p.sigma_range()
    sigma = torch.exp(torch.linspace(math.log(lo), math.log(hi), 97, dtype=torch.float64))
    t = p.from_sigma(sigma)
    assert torch.allclose(p.sigma(t), sigma, rtol=1e-9)
    assert torch.allclose(p.from_logsnr(p.logsnr(t)), t, rtol=1e-9, atol=1e-12)


def test_ddpm_timesteps_round_trip_and_cover_their_range():
    p = DDPM(ALPHAS, sigma_data=0.5)
    k = torch.arange(1000)
    assert torch.equal(p.from_logsnr(p.logsnr(k)), k)
    lo, hi = p.sigma_range()
    assert float(p.sigma(torch.tensor(0))) > lo and float(p.sigma(torch.tensor(999))) < hi
    with pytest.raises(ValueError):
        DDPM([0.5, 0.7])  # must decrease


def edm_law(sigma_min=0.002, sigma_max=80.0):
    """EDM's training density as a truncated normal in ln σ (schedule units)."""
    a, b = (math.log(sigma_min) + 1.2) / 1.2, (math.log(sigma_max) + 1.2) / 1.2
    return stats.truncnorm(a, b, loc=-1.2, scale=1.2)


@pytest.mark.parametrize("p", [FlowMatching(0.5), VPTime("cosine", 0.5), VPTime("linear", 0.5), LogSNR(0.5), VE(2.0)],
                         ids=lambda p: f"{p.name}-{getattr(p, 'kind', '')}")  # fmt: skip
def test_sampled_variables_follow_the_density_mapped_in_closed_form(p):
    sched = multidiff.make_schedule("edm", sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, weighting="edm")
    loop = multidiff.LoopSchedule(sched, p, "x0")
    t = loop.sample(20000, torch.Generator().manual_seed(0)).double()
    # the schedule's σ (schedule units, σ_data 0.5) of each t, through λ: σ_s = 0.5·exp(−λ/2)
    law = edm_law()
    lam = p.logsnr(t)
    ln_sigma = np.log(0.5) - lam.numpy() / 2
    assert stats.kstest(ln_sigma, law.cdf).pvalue > 1e-3
    if isinstance(p, FlowMatching):  # and directly in t: P(T ≤ t) = F(ln(0.5·(t/(1−t))/0.5))
        tt = t.numpy()
        assert stats.kstest(tt, lambda x: law.cdf(np.log(x / (1 - x)))).pvalue > 1e-3


def test_ddpm_timesteps_are_drawn_with_the_schedule_mass_between_midpoints():
    p = DDPM(ALPHAS, sigma_data=1.0)
    lo, hi = p.sigma_range()
    sched = multidiff.make_schedule("loguniform", sigma_min=lo, sigma_max=hi, sigma_data=1.0, weighting="uniform")
    k = multidiff.LoopSchedule(sched, p, "eps").sample(400_000, torch.Generator().manual_seed(1))
    counts = np.bincount(k.numpy(), minlength=1000) / k.numel()
    edges_lam = torch.cat([p.lams[:1] + (p.lams[0] - p.lams[1]) / 2, p._mids, p.lams[-1:] - (p.lams[-2] - p.lams[-1]) / 2])
    u_edges = -edges_lam.numpy() / 2  # ln σ with σ_data 1
    mass = np.diff(u_edges) / (math.log(hi) - math.log(lo))
    assert np.allclose(mass.sum(), 1.0) and np.abs(counts - mass).max() < 3e-3
    assert stats.chisquare(counts[mass > 1e-3] * k.numel(), mass[mass > 1e-3] / mass[mass > 1e-3].sum() * (counts[mass > 1e-3].sum() * k.numel())).pvalue > 1e-4


# ---- the loss a loop computes → the x0 error per dimension, exactly ----------------------------------


def predictions(target, x, x_hat, noise, sigma, p):
    """(prediction, truth) in the target's space from an x0 estimate, in each parameterization's own
    coordinates (VP for v, the straight path for flow velocity, VE otherwise)."""
    s = sigma[:, None]
    if target == "x0":
        return x_hat, x
    if target == "eps":  # VE: x_σ = x + σε; the same identity holds in VP coordinates
        z = x + s * noise
        return (z - x_hat) / s, noise
    if target == "v":  # VP with α² + s² = 1: z = αx + sε, v = αε − sx
        a, sv = 1 / torch.sqrt(1 + s**2), s / torch.sqrt(1 + s**2)
        z = a * x + sv * noise
        return (a * z - x_hat) / sv, a * noise - sv * x
    if target == "velocity":  # x_t = (1 − t)x + tε, u = ε − x
        t = s / (1 + s)
        z = (1 - t) * x + t * noise
        return (z - x_hat) / t, noise - x
    if target == "F":  # EDM: F = (x − c_skip z)/c_out
        d2 = p.sigma_data**2
        z = x + s * noise
        c_skip, c_out = d2 / (s**2 + d2), s * p.sigma_data / torch.sqrt(s**2 + d2)
        return (x_hat - c_skip * z) / c_out, (x - c_skip * z) / c_out
    raise AssertionError(target)


@pytest.mark.parametrize("target", ["x0", "eps", "v", "velocity", "F"])
@pytest.mark.parametrize("schedule_sigma_data", [0.5, 1.0])
def test_loss_conversion_gives_the_x0_error_of_an_exact_gaussian_denoiser(target, schedule_sigma_data):
    s_data = 0.5  # the loop's data: N(0, 0.5²) per dimension
    p = VE(s_data) if target in ("eps", "F", "x0") else (VPTime("cosine", s_data) if target == "v" else FlowMatching(s_data))
    g = torch.Generator().manual_seed(0)
    sigma = torch.exp(torch.empty(256, dtype=torch.float64).uniform_(math.log(0.01), math.log(50), generator=g))
    x = s_data * torch.randn(256, 64, generator=g, dtype=torch.float64)
    noise = torch.randn(256, 64, generator=g, dtype=torch.float64)
    x_hat = (x + sigma[:, None] * noise) * (s_data**2 / (s_data**2 + sigma[:, None] ** 2))  # exact posterior mean
    pred, truth = predictions(target, x, x_hat, noise, sigma, p)
    loss = (pred - truth).square().mean(1)
    sched = multidiff.make_schedule("edm", sigma_min=0.002, sigma_max=80.0, sigma_data=schedule_sigma_data, weighting="edm")
    loop = multidiff.LoopSchedule(sched, p, target)
    t = p.from_sigma(sigma)
    expected = (x_hat - x).square().mean(1) * (schedule_sigma_data / s_data) ** 2  # in the schedule's units
    assert torch.allclose(loop.x0_error(t, loss), expected, rtol=1e-9)
    w = 1 + sigma  # a loop that weighted its loss passes the weights
    assert torch.allclose(loop.x0_error(t, loss * w, weight=w), expected, rtol=1e-9)
    # and the exact Gaussian mmse: s²σ²/(s² + σ²) per dimension, on average
    mmse = s_data**2 * sigma**2 / (s_data**2 + sigma**2)
    assert float(((x_hat - x).square().mean(1) / mmse).mean()) == pytest.approx(1.0, abs=0.03)


def test_x0_weights_match_the_losses_they_stand_for():
    p = VE(0.5)
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    from multidiff.diffusion.weighting import edm_weight

    assert torch.allclose(p.x0_weight("F")(sigma), edm_weight(sigma, 0.5))  # EDM's F-loss is EDM's weighting
    assert torch.allclose(p.x0_weight("eps")(sigma), 1 / sigma**2)  # ε-MSE is the ELBO (SNR) weighting


def test_infonoise_learns_the_gaussian_mmse_from_a_ddpm_eps_loss():
    """End to end: ε-losses of an exact denoiser at DDPM timesteps → InfoNoise's per-bin estimate
    equals the analytic mmse(σ) = s²σ²/(s² + σ²) of the data at the same noise levels."""
    s_data = 0.5
    p = DDPM(ALPHAS, sigma_data=s_data)
    loop = p.make_schedule("infonoise", target="eps", warmup=0, refresh=30, bins=32, min_count=4, ema=0.0, base="loguniform")
    g = torch.Generator().manual_seed(2)
    seen_sigma, analytic = [], []
    for _ in range(30):
        k = loop.sample(512, g)
        sigma = p.sigma(k)
        x = s_data * torch.randn(512, 32, generator=g, dtype=torch.float64)
        noise = torch.randn(512, 32, generator=g, dtype=torch.float64)
        z = x + sigma[:, None] * noise
        x_hat = z * (s_data**2 / (s_data**2 + sigma[:, None] ** 2))
        loop.observe(k, ((z - x_hat) / sigma[:, None] - noise).square().mean(1))  # the loop's ε-MSE
        seen_sigma.append(sigma)
        analytic.append(s_data**2 * sigma**2 / (s_data**2 + sigma**2))
    loop.refresh(30)
    # the oracle: the analytic mmse at the same σ's, binned the same way
    sig, mm = torch.cat(seen_sigma).numpy(), torch.cat(analytic).numpy()
    edges = loop.schedule.stats.edges
    idx = np.clip(np.searchsorted(edges, np.log(sig), side="right") - 1, 0, len(edges) - 2)
    learned = loop.schedule.means
    checked = 0
    for b in range(len(edges) - 1):
        if np.isfinite(learned[b]) and (idx == b).sum() >= 200:
            assert learned[b] == pytest.approx(mm[idx == b].mean(), rel=0.08), b
            checked += 1
    assert checked >= 20 and loop.schedule.ctx.weighting == "eps-mse"


def test_make_schedule_asks_for_an_explicit_weighting():
    with pytest.raises(TypeError):
        multidiff.make_schedule("infonoise", sigma_min=0.002, sigma_max=80, sigma_data=0.5)  # no silent w ≡ 1
    with pytest.raises(UserError, match="weighting"):
        multidiff.make_schedule("infonoise", sigma_min=0.002, sigma_max=80, sigma_data=0.5, weighting="nope")
    with pytest.raises(UserError, match="no parameter 'warmpu'"):
        multidiff.make_schedule("infonoise", sigma_min=0.002, sigma_max=80, sigma_data=0.5, weighting="edm", warmpu=3)


def test_save_fills_in_the_metadata_and_load_gives_the_same_density(tmp_path):
    sched = multidiff.make_schedule("laplace", sigma_min=0.002, sigma_max=80, sigma_data=0.5, weighting="edm")
    path = sched.save(tmp_path / "s.json", dataset="mine", note="hello")
    import json

    data = json.loads(path.read_text())
    assert data["sigma_data"] == 0.5 and data["weighting"] == "edm" and data["dataset"] == "mine" and data["info"] == {"note": "hello"}
    again = multidiff.load_schedule(path)
    u = torch.linspace(math.log(0.002), math.log(80), 200)
    assert torch.allclose(again.cdf(u), sched.cdf(u), atol=2e-3)  # piecewise linear between 256 points (Laplace has a kink)
    assert again.ctx.sigma_data == 0.5 and again.ctx.weighting == "edm"


# ---- before a learned schedule has learned, it draws from the loop's own density ------------------


@pytest.mark.parametrize("name", ["infonoise", "timewarp"])
def test_a_ddpm_loop_warms_up_on_uniform_timesteps(name):
    noise = DDPM(ALPHAS, sigma_data=0.5).make_schedule(name, target="eps", warmup=1000)
    k = noise.sample(200_000, torch.Generator().manual_seed(0))
    counts = np.bincount(k.numpy(), minlength=1000)
    assert counts.min() >= 199 and counts.max() <= 201  # stratified: one draw per 1/1000 of the mass (± float32 edges)
    assert float(k.double().median()) == pytest.approx(499.5, abs=1)


@pytest.mark.parametrize("p", [FlowMatching(0.5), VPTime("cosine", 0.5), VPTime("linear", 0.5)], ids=lambda p: f"{p.name}-{getattr(p, 'kind', '')}")
def test_a_continuous_time_loop_warms_up_on_uniform_t(p):
    noise = p.make_schedule("infonoise", target="x0" if p.name == "vp" else "velocity")
    t = noise.sample(20_000, torch.Generator().manual_seed(1)).double().numpy()
    lo, hi = sorted(float(v) for v in p.from_sigma(torch.tensor(p.sigma_range(), dtype=torch.float64)))
    assert stats.kstest(t, stats.uniform(lo, hi - lo).cdf).pvalue > 1e-3


def test_a_logsnr_loop_warms_up_on_uniform_logsnr():
    p = LogSNR(0.5)
    lam = p.make_schedule("infonoise", target="eps").sample(20_000, torch.Generator().manual_seed(2)).double().numpy()
    assert stats.kstest(lam, stats.uniform(-20, 40).cdf).pvalue > 1e-3


def test_the_warm_up_base_is_overridable_and_ve_loops_keep_edm():
    p = DDPM(ALPHAS, sigma_data=0.5)
    named = p.make_schedule("infonoise", target="eps", base="edm")
    assert named.schedule.params.base == "edm"
    k = named.sample(20_000, torch.Generator().manual_seed(3))
    assert float(k.double().median()) < 200  # EDM's log-normal puts most draws at low noise
    assert VE(0.5).make_schedule("infonoise", target="x0").schedule.params.base == "edm"
    assert p.make_schedule("edm", target="eps").schedule.name == "edm"  # fixed schedules are what they name
    with pytest.raises(UserError, match="native"):  # outside a parameterization there is no loop density
        multidiff.make_schedule("infonoise", sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, weighting="edm", base="native")

"""Samplers, σ grids and the likelihood bound against toy distributions with exact denoisers."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from multidiff.diffusion import sampling
from multidiff.diffusion.likelihood import fixed_noise, nelbo_nats, quadrature
from multidiff.diffusion.loss import mse_loss
from multidiff.diffusion.model import binary_recon_nll, gaussian_recon_nll
from multidiff.diffusion.precond import EDMPrecond, edm_coefficients
from multidiff.diffusion.weighting import edm_weight
from multidiff.schedules import grids


def gaussian_denoiser(s):
    """Exact E[x | x + σε] for x ~ N(0, s²)."""
    return lambda x, sigma: x * (s**2 / (s**2 + sigma.reshape(-1, *[1] * (x.ndim - 1)) ** 2))


def two_point_denoiser(x, sigma):
    """Exact E[x | x + σε] for x uniform on {−1, +1}."""
    return torch.tanh(x / sigma.reshape(-1, *[1] * (x.ndim - 1)) ** 2)


@pytest.mark.parametrize("sampler", ["heun", "euler"])
def test_sampler_reproduces_a_gaussian(sampler):
    s, n = 0.7, 20000
    sigmas = sampling.karras(64 if sampler == "heun" else 256, 0.002, 80.0)
    g = torch.Generator().manual_seed(0)
    x = sampling.SAMPLERS[sampler](gaussian_denoiser(s), sigmas[0] * torch.randn(n, 1, generator=g), sigmas)
    assert float(x.std()) == pytest.approx(s, rel=0.02)
    assert stats.kstest(x.flatten().numpy() / s, "norm").pvalue > 1e-3


def test_heun_reproduces_two_points_and_churn_keeps_it():
    g = torch.Generator().manual_seed(1)
    sigmas = sampling.karras(48, 0.002, 80.0)
    for churn in (0.0, 20.0):
        x = sampling.heun(two_point_denoiser, 80.0 * torch.randn(8000, 1, generator=g), sigmas, churn=churn, generator=g)
        assert float((x.abs() - 1).abs().max()) < 0.01  # every sample lands on a point
        assert float((x > 0).float().mean()) == pytest.approx(0.5, abs=0.02)  # in equal proportions


@pytest.mark.parametrize("sampler", ["heun", "euler"])
def test_the_sampler_callback_sees_every_step_and_changes_nothing(sampler):
    """One call per step, at σ_i in order; the Gaussian denoiser's x0 estimate is the exact shrinkage
    x·s²/(s² + σ²) of the state it is handed; the samples are bit-identical with or without it."""
    s, sigmas = 0.7, sampling.karras(12, 0.002, 80.0)
    x0 = 80.0 * torch.randn(64, 1, generator=torch.Generator().manual_seed(2))
    seen = []
    with_cb = sampling.SAMPLERS[sampler](gaussian_denoiser(s), x0.clone(), sigmas, callback=seen.append)
    assert torch.equal(with_cb, sampling.SAMPLERS[sampler](gaussian_denoiser(s), x0.clone(), sigmas))
    assert [c["i"] for c in seen] == list(range(12)) and [c["sigma"] for c in seen] == sigmas[:-1].tolist()
    for c in seen:
        assert torch.allclose(c["denoised"], c["x"] * s**2 / (s**2 + c["sigma_hat"] ** 2))


def test_sampling_is_deterministic_given_a_seed():
    sig = sampling.karras(8, 0.002, 80.0)
    run = lambda seed: sampling.heun(two_point_denoiser, 80 * torch.randn(4, 3, generator=torch.Generator().manual_seed(seed)),  # noqa: E731
                                     sig, churn=5.0, generator=torch.Generator().manual_seed(seed))  # fmt: skip
    assert torch.equal(run(3), run(3)) and not torch.equal(run(3), run(4))


def test_grids():
    k = sampling.karras(10, 0.002, 80.0, rho=7)
    assert k[0] == pytest.approx(80.0) and k[-2] == pytest.approx(0.002, rel=1e-5) and k[-1] == 0
    assert bool((k.diff() < 0).all())
    lu = sampling.loguniform(10, 0.002, 80.0)
    # equal quantiles of a density uniform in ln σ are exactly the log-uniform grid
    u = np.linspace(math.log(0.002), math.log(80), 50)
    assert torch.allclose(grids.from_density(u, np.ones_like(u), 10), lu, rtol=1e-4)


def test_infogrid_places_sigmas_at_equal_information():
    from multidiff.schedules.base import ScheduleTable

    u = np.linspace(math.log(0.002), math.log(80), 98)
    pu = u[1:-1]
    rate = np.exp(-((pu - 0.0) ** 2))  # information concentrated around σ = 1
    table = ScheduleTable("infonoise", 0.002, 80.0, u.tolist(), [1.0] * 98, np.linspace(0, 1, 98).tolist(),
                          sampling={"u": pu.tolist(), "density": rate.tolist()})  # fmt: skip
    sig = grids.from_schedule(table, 9, mix=0.0)[:-1].double()  # the learned profile alone
    info = stats.norm(0, math.sqrt(0.5))  # ∝ exp(−u²) is N(0, ½) in u
    q = info.cdf(sig.log().numpy())
    inner = q[1:-1]
    assert np.allclose(inner, np.linspace(1, 0, 9)[1:-1], atol=0.01)


def test_karras_density_is_the_limit_of_the_karras_grid():
    grid = sampling.karras(4001, 0.002, 80.0)[:-1].double().log().numpy()[::-1]
    u = np.linspace(math.log(0.002), math.log(80), 200)
    empirical = np.interp(u, grid[1:], np.arange(1, grid.size) / (grid.size - 1))  # CDF of the grid points
    model = np.concatenate([[0], np.cumsum(np.diff(u) * 0.5 * (grids.karras_density(u)[1:] + grids.karras_density(u)[:-1]))])
    assert np.abs(empirical - model).max() < 2e-3


@pytest.mark.parametrize("steps", [8, 16, 32])
def test_learned_grid_integrates_an_exact_gaussian_denoiser(steps):
    """Quantiles of the information profile alone jump from σ_max to a few σ_data in one step, which
    Heun cannot integrate; the learned grid mixes in EDM's ρ-spacing and ends at the data's std."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from conftest import binary_mmse

    from multidiff.schedules.base import ScheduleTable

    s = 0.7
    u = np.linspace(math.log(0.002), math.log(80), 96)
    sig = np.exp(u)
    rate = binary_mmse(sig) / sig**2  # the ±1 profile with the binary recipes' gate: a digits-like InfoGrid
    info = rate / (1 + (0.2 / sig) ** 3)  # gated at c = 0.2
    table = ScheduleTable("infonoise", 0.002, 80.0, u.tolist(), [1.0] * 96, np.linspace(0, 1, 96).tolist(),
                          sampling={"u": u.tolist(), "density": info.tolist()})  # fmt: skip
    x0 = torch.randn(4096, 16, generator=torch.Generator().manual_seed(0))
    ends = {}
    for name, mix in (("alone", 0.0), ("learned", grids.GRID_MIX)):
        grid = grids.from_schedule(table, steps, mix=mix)
        ends[name] = float(sampling.heun(gaussian_denoiser(s), x0 * float(grid[0]), grid).std())
    karras = float(sampling.heun(gaussian_denoiser(s), x0 * 80.0, sampling.karras(steps, 0.002, 80.0)).std())
    assert abs(ends["learned"] - s) < abs(ends["alone"] - s)  # the fix helps at every step count ...
    assert abs(ends["learned"] - s) <= abs(karras - s) + 1e-3  # ... and is at least as accurate as EDM's grid
    if steps >= 16:
        assert ends["learned"] == pytest.approx(s, rel=0.03)


@pytest.mark.parametrize("steps", [8, 16, 32])
def test_learned_grid_keeps_the_coarse_scales_of_continuous_data(steps):
    """Continuous data resolve detail at every scale, so their information rate is highest at low
    noise, while the ODE bends most near the data's coarsest scale. On a Gaussian with stds from 1
    down to 0.005 (exact denoiser, exact rate Σ s²/(s² + σ²) per unit ln σ, gated at 0.005), the
    learned grid must beat EDM's grid on the typical scale without losing the coarse one, which sets
    the samples' look (and their Fréchet distance): an equal mix left it 3× worse than EDM's grid."""
    from multidiff.schedules.base import ScheduleTable

    stds = torch.logspace(0, -2.3, 64, dtype=torch.float64)
    u = np.linspace(math.log(0.002), math.log(80), 400)
    sig = np.exp(u)[:, None]
    rate = (stds.numpy() ** 2 / (stds.numpy() ** 2 + sig**2)).sum(1) / (1 + (0.005 / sig[:, 0]) ** 3)
    table = ScheduleTable("infonoise", 0.002, 80.0, u.tolist(), [1.0] * 400, np.linspace(0, 1, 400).tolist(),
                          sampling={"u": u.tolist(), "density": rate.tolist()})  # fmt: skip
    exact = stds * 80.0 / (stds**2 + 80.0**2).sqrt()  # where x = 80 (one draw of σ_max·ε) flows: a linear ODE per scale

    def log_error(grid):  # |ln(end / exact end)| per scale, coarse first
        end = sampling.heun(gaussian_denoiser(stds), torch.full((1, 64), 80.0, dtype=torch.float64), grid.double())
        return (end[0] / exact).log().abs()

    karras = log_error(sampling.karras(steps, 0.002, 80.0))
    learned = log_error(grids.from_schedule(table, steps))
    assert learned.mean() < karras.mean()  # better on the typical scale ...
    assert learned[0] < 2 * karras[0]  # ... and within 2× of EDM's grid on the coarsest (an equal mix: 3×)


def test_precond_and_loss():
    net = torch.nn.Identity()
    zero = lambda x, c: torch.zeros_like(x)  # noqa: E731
    d = EDMPrecond(type("F", (torch.nn.Module,), {"forward": lambda self, x, c: zero(x, c)})(), 0.5)
    x, sigma = torch.randn(3, 2, 4), torch.tensor([0.1, 1.0, 10.0])
    c_skip, c_out, c_in, _ = edm_coefficients(sigma, 0.5)
    assert torch.allclose(d(x, sigma), c_skip[:, None, None] * x)
    # c_in makes the network input unit-variance for data of RMS σ_data
    assert torch.allclose(c_in**2 * (sigma**2 + 0.25), torch.ones(3))
    noise = torch.randn_like(x)
    out = mse_loss(d, x, sigma, noise, lambda s: edm_weight(s, 0.5))
    expected = (c_skip[:, None, None] * (x + sigma[:, None, None] * noise) - x).square().mean((1, 2))
    assert torch.allclose(out.error, expected) and torch.allclose(out.loss, edm_weight(sigma, 0.5) * expected)
    assert not out.error.requires_grad
    del net


def test_edms_weight_preconditioning_and_f_loss_share_one_coefficient():
    """c_out² (the preconditioning), 1/w (EDM's loss weight) and an F-MSE's x0 factor are one number,
    and against the closed form σ²σd²/(σ² + σd²) at a few hand-computed points."""
    from multidiff.parameterizations import VE

    sigma = torch.tensor([0.002, 0.1, 0.5, 1.0, 10.0, 80.0], dtype=torch.float64)
    _, c_out, _, _ = edm_coefficients(sigma, 0.5)
    assert torch.allclose(c_out**2, 1 / edm_weight(sigma, 0.5), rtol=1e-12)
    assert torch.allclose(VE(sigma_data=0.5).x0_factor(sigma, "F"), c_out**2, rtol=1e-12)
    assert float(1 / edm_weight(torch.tensor(0.5, dtype=torch.float64), 0.5)) == pytest.approx(0.125)  # 0.0625/0.5
    assert float(1 / edm_weight(torch.tensor(1.0, dtype=torch.float64), 0.5)) == pytest.approx(0.2)  # 0.25/1.25


def test_nelbo_of_exact_gaussian_denoiser_is_the_entropy():
    """For x ~ N(0, s²) and the exact denoiser, E[bound] has a closed form ≈ the entropy ½ln(2πe s²)."""
    s, lo, hi, dims, n = 0.8, 0.01, 50.0, 16, 4096
    x = s * torch.randn(n, dims, generator=torch.Generator().manual_seed(0))
    noise = fixed_noise(torch.arange(n), (dims,), 65, seed=1)
    parts = nelbo_nats(gaussian_denoiser(s), x, noise, sigma_min=lo, sigma_max=hi, recon_nll=gaussian_recon_nll)
    exact = (0.5 * math.log((s**2 + lo**2) / lo**2) + 0.5 * math.log(hi**2 / (s**2 + hi**2))  # diffusion term
             + s**2 / (2 * hi**2) + 0.5 * math.log(2 * math.pi * math.e * lo**2))  # prior + reconstruction  # fmt: skip
    assert float(parts["total"].mean()) / dims == pytest.approx(exact, abs=0.01)
    assert exact == pytest.approx(0.5 * math.log(2 * math.pi * math.e * s**2), abs=0.01)


def test_nelbo_of_exact_binary_denoiser_is_one_bit_per_pixel():
    lo, hi, dims, n = 0.2, 80.0, 64, 256
    x = torch.where(torch.rand(n, dims, generator=torch.Generator().manual_seed(0)) > 0.5, 1.0, -1.0)
    noise = fixed_noise(torch.arange(n), (dims,), 65, seed=2)
    parts = nelbo_nats(two_point_denoiser, x, noise, sigma_min=lo, sigma_max=hi, recon_nll=binary_recon_nll)
    bits = float(parts["total"].mean()) / (dims * math.log(2))
    assert bits == pytest.approx(1.0, abs=0.02)
    # and a denoiser that ignores its input (predicts the mean 0) is much worse
    worse = nelbo_nats(lambda z, sg: torch.zeros_like(z), x, noise, sigma_min=lo, sigma_max=hi, recon_nll=binary_recon_nll)
    assert float(worse["total"].mean()) / (dims * math.log(2)) > 3


class ExactJointBackbone(torch.nn.Module):
    """A joint model's backbone that makes its preconditioned denoiser exact for independent modalities:
    Gaussian of RMS ``s`` ("wave") and ±1 pixels ("pixels")."""

    def __init__(self, s: float, sigma_data: dict) -> None:
        super().__init__()
        self.s, self.sigma_data = s, sigma_data

    def forward(self, xs: dict, c_noise: dict) -> dict:
        out = {}
        for k, scaled in xs.items():
            sigma, d = torch.exp(4 * c_noise[k]).view(-1, 1), self.sigma_data[k]
            c_skip, c_out, c_in, _ = edm_coefficients(sigma, d)
            z = scaled / c_in
            best = gaussian_denoiser(self.s)(z, sigma.flatten()) if k == "wave" else two_point_denoiser(z, sigma.flatten())
            out[k] = (best - c_skip * z) / c_out
        return out


def test_joint_bound_follows_each_modality_to_its_floor_and_is_each_ones_entropy():
    """Two independent modalities under exact denoisers: the joint bound is the sum of each one's
    entropy (Gaussian: ½ln(2πe s²) per dimension; ±1 pixels: 1 bit), each along its own path to its own
    floor; given the pixels clean, the conditional bound is the Gaussian's alone."""
    from multidiff.diffusion.joint import JointDiffusion

    s, dims, n = 0.8, 8, 8192
    sigma_data = {"wave": s, "pixels": 1.0}
    model = JointDiffusion(ExactJointBackbone(s, sigma_data), {"wave": (dims,), "pixels": (dims,)}, sigma_data,
                           {"wave": "gaussian", "pixels": "binary"}, {"wave": 0.01, "pixels": 0.2}, {},
                           {"wave": torch.zeros(1, dims), "pixels": torch.zeros(1, dims)}, weighting="edm",
                           sigma_min=0.002, sigma_max=50.0, clean_share=0.0, drop_share=0.0)  # fmt: skip
    g = torch.Generator().manual_seed(3)
    x = torch.cat([s * torch.randn(n, dims, generator=g), torch.where(torch.rand(n, dims, generator=g) > 0.5, 1.0, -1.0)], 1)
    noise = fixed_noise(torch.arange(n), (2 * dims,), 65, seed=4)
    wave = x[:, :dims]  # −ln p of these very draws under N(0, s²): the entropy, without the sample's own spread
    gaussian = dims * 0.5 * math.log(2 * math.pi * s**2) + float(wave.square().sum(1).mean()) / (2 * s**2)
    joint = float(model.nelbo(x, noise, 0.002, 50.0).mean())
    assert joint == pytest.approx(gaussian + dims * math.log(2), abs=0.015 * 2 * dims)  # a few standard errors
    alone = float(model.nelbo(x, noise, 0.002, 50.0, only="wave").mean())
    assert alone == pytest.approx(gaussian, abs=0.015 * dims)
    pixels = float(model.nelbo(x, noise, 0.002, 50.0, only="pixels").mean())
    assert pixels == pytest.approx(dims * math.log(2), abs=0.02 * dims)
    # one quadrature: the joint bound is each modality's own bound down to its own floor (0.01, 0.2)
    own = [nelbo_nats(den, part, noise[:, :, cols], sigma_min=floor, sigma_max=50.0, recon_nll=recon)["total"]
           for den, part, cols, floor, recon in [(gaussian_denoiser(s), wave, slice(0, dims), 0.01, gaussian_recon_nll),
                                                 (two_point_denoiser, x[:, dims:], slice(dims, None), 0.2, binary_recon_nll)]]  # fmt: skip
    assert torch.allclose(model.nelbo(x, noise, 0.002, 50.0), own[0] + own[1], rtol=1e-5)
    assert not torch.allclose(model.nelbo(x, noise, 0.2, 50.0), own[0] + own[1], rtol=1e-3)  # the wave's floor raised to 0.2


def test_fixed_noise_depends_only_on_example_id():
    a = fixed_noise(torch.tensor([3, 4]), (2,), 5, seed=9)
    b = fixed_noise(torch.tensor([4]), (2,), 5, seed=9)
    assert torch.equal(a[1], b[0])
    us, du = quadrature(0.002, 80.0, 10)
    assert float(us[0]) == pytest.approx(math.log(0.002) + du / 2)

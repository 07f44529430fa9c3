"""The schedule zoo against independent truths: closed forms of the fixed families, the analytic
Fréchet path of Gaussian data (CRS fd), monotone fits (timewarp), unbiasedness (adaptive),
stage progression (curriculum), and the exported file of every schedule."""
import math

import numpy as np
import pytest
import torch
from scipy import optimize, stats
from test_schedules import CTX, SCHEDULES, smooth_observations

from multidiff.metrics.frechet import frechet_distance
from multidiff.schedules.base import ScheduleContext
from multidiff.schedules.crs import gaussian_path_speed
from multidiff.schedules.grids import from_schedule
from multidiff.schedules.io import load_schedule_file, save_schedule_file
from multidiff.schedules.registry import REGISTRY, build_schedule, is_fixed_method
from multidiff.schedules.tabulated import TabulatedSchedule
from multidiff.schedules.timewarp import isotonic_increasing

U = torch.linspace(CTX.u_min, CTX.u_max, 301, dtype=torch.float64)
Q = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
LAM_LO, LAM_HI = -2 * CTX.u_max, -2 * CTX.u_min  # the range in logSNR λ = −2 ln σ


def truncated_in_u(law):
    """pdf and inverse cdf on u = −λ/2 of a scipy law on λ truncated to the σ range."""
    mass = law.cdf(LAM_HI) - law.cdf(LAM_LO)
    pdf = lambda u: 2 * law.pdf(-2 * u) / mass  # noqa: E731
    icdf = lambda q: -law.ppf(law.cdf(LAM_HI) - q * mass) / 2  # P(U ≤ u) = P(λ ≥ −2u)  # noqa: E731
    return pdf, icdf


@pytest.mark.parametrize(
    "name, params, law",
    [
        ("laplace", {}, stats.laplace(0, 0.5)),
        ("laplace", {"mu": 1.0, "b": 2.0}, stats.laplace(1.0, 2.0)),
        ("cauchy", {}, stats.cauchy(0, 1)),
        ("edm", {}, stats.norm(-2 * -1.2, 2 * 1.2)),  # EDM's log-normal as N(λ; −2·P_mean, (2·P_std)²)
        ("chen", {"function": "linear"}, stats.logistic(0, 1)),  # γ = 1 − t: λ = logit γ is logistic
        ("chen", {"function": "linear", "b": 2.0}, stats.logistic(2 * math.log(2.0), 1)),  # shift 2 ln b
    ],
)
def test_logsnr_families_match_their_closed_forms(name, params, law):
    s = build_schedule(name, params, CTX)
    pdf, icdf = truncated_in_u(law)
    assert np.allclose(s.pdf(U).numpy(), pdf(U.numpy()), rtol=1e-6, atol=1e-12)
    assert np.allclose(s.icdf(Q).numpy(), icdf(Q.numpy()), atol=1e-6)


def test_cosine_is_minus_two_log_tan():
    s = build_schedule("cosine", {}, CTX)
    # t ~ U(0, 1) truncated to the t's of the σ range; λ(t) = −2 ln tan(πt/2), u = −λ/2
    t_lo, t_hi = (2 / np.pi) * np.arctan([CTX.sigma_min, CTX.sigma_max])
    t = t_lo + Q.numpy() * (t_hi - t_lo)
    lam = -2 * np.log(np.tan(np.pi * t / 2))
    assert np.allclose(s.icdf(Q).numpy(), -lam / 2, atol=1e-9)
    # and its λ density is sech(λ/2)/(2π)
    lam_u = -2 * U.numpy()
    p_lam = 1 / np.cosh(lam_u / 2) / (2 * np.pi)
    assert np.allclose(s.pdf(U).numpy(), 2 * p_lam / (t_hi - t_lo), rtol=1e-9)
    # Chen's cosine γ with its paper defaults is the same schedule
    chen = build_schedule("chen", {"function": "cosine"}, CTX)
    assert torch.allclose(chen.pdf(U), s.pdf(U), rtol=1e-9) and torch.allclose(chen.icdf(Q), s.icdf(Q), atol=1e-9)


# Chen (2023), Algorithm 1, transcribed independently in numpy
def alg1_sigmoid(t, start=-3.0, end=3.0, tau=1.0):
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    v_start, v_end = sig(start / tau), sig(end / tau)
    out = sig((t * (end - start) + start) / tau)
    return (v_end - out) / (v_end - v_start)


def alg1_cosine(t, start=0.0, end=1.0, tau=1.0):
    v_start, v_end = np.cos(start * np.pi / 2) ** (2 * tau), np.cos(end * np.pi / 2) ** (2 * tau)
    out = np.cos((t * (end - start) + start) * np.pi / 2) ** (2 * tau)
    return (v_end - out) / (v_end - v_start)


@pytest.mark.parametrize(
    "params, gamma",
    [
        ({"function": "sigmoid"}, alg1_sigmoid),
        ({"function": "sigmoid", "start": 0.0, "end": 3.0, "tau": 0.7}, lambda t: alg1_sigmoid(t, 0.0, 3.0, 0.7)),
        ({"function": "cosine", "start": 0.2, "end": 1.0, "tau": 2.0, "b": 0.5}, lambda t: alg1_cosine(t, 0.2, 1.0, 2.0)),
        ({"function": "linear", "b": 3.0}, lambda t: 1 - t),
    ],
)
def test_chen_gamma_functions_follow_algorithm_1(params, gamma):
    s = build_schedule("chen", params, CTX)
    t = np.linspace(0.01, 0.99, 50)
    assert np.allclose(s.gamma(torch.tensor(t)).numpy(), gamma(t), atol=1e-12)
    # sampling: t uniform on the t's of the σ range, σ from λ = logit γ(t) + 2 ln b
    b = params.get("b", 1.0)
    gamma_of_u = lambda u: 1 / (1 + np.exp(2 * u + 2 * np.log(b)))  # noqa: E731
    t_of = lambda u: optimize.brentq(lambda tt: gamma(tt) - gamma_of_u(u), 0, 1, xtol=1e-14)  # noqa: E731
    t_lo, t_hi = t_of(CTX.u_min), t_of(CTX.u_max)
    tq = t_lo + Q.numpy() * (t_hi - t_lo)
    g = gamma(tq)
    u_expected = -0.5 * np.log(g / (1 - g)) - np.log(b)
    assert np.allclose(s.icdf(Q).numpy(), u_expected, atol=1e-7)


@pytest.mark.parametrize("name", ["cosine", "laplace", "cauchy", "chen(cosine, b=0.5)", "chen(linear, b=2)"])
def test_sampled_histograms_follow_pdf(name):
    s = SCHEDULES[name]
    u = s.sample(100_000, torch.Generator().manual_seed(3)).log().double()
    edges = torch.linspace(CTX.u_min, CTX.u_max, 41, dtype=torch.float64)
    counts = torch.histogram(u, edges).hist.numpy()
    mass = np.diff(s.cdf(edges).numpy())
    sub = torch.linspace(0, 1, 201, dtype=torch.float64)
    fine = edges[:-1, None] + sub[None] * (edges[1:] - edges[:-1])[:, None]  # 200 cells per bin
    by_pdf = torch.trapezoid(s.pdf(fine), fine, dim=1).numpy()
    ok = mass > 1e-3
    assert np.allclose(counts[ok] / 100_000, mass[ok], atol=1e-3, rtol=2e-2)
    assert np.allclose(by_pdf[ok], mass[ok], rtol=2e-2, atol=2e-4)


# ---- CRS ------------------------------------------------------------------------------------------


def whitened_gaussian(n, d, s, seed=0):
    """n points in d dims whose empirical mean is exactly 0 and covariance exactly s²·I."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x - x.mean(0)
    chol = torch.linalg.cholesky(x.T @ x / (n - 1))
    return s * x @ torch.linalg.inv(chol).T


@pytest.mark.parametrize("space", ["ve", "vp"])
def test_crs_fd_speed_matches_the_analytic_frechet_path_of_gaussian_data(space):
    s_data, d = 0.5, 4
    crs = build_schedule("crs", {"space": space, "bins": 40, "smooth": 0.0}, CTX)
    sig = np.exp(crs.nodes)
    a = 1 / np.sqrt(CTX.sigma_data**2 + sig**2) if space == "vp" else np.ones_like(sig)
    # x ~ N(0, s²): the noised law a·(x + σε) is N(0, a²(s² + σ²)); neighbours are W2 = √d·|Δ(a·√(s² + σ²))| apart
    analytic = np.sqrt(d) * np.abs(np.diff(a * np.sqrt(s_data**2 + sig**2))) / crs.delta
    crs.prepare(whitened_gaussian(4000, d, s_data).float())
    assert np.allclose(crs.speed, analytic, rtol=1e-5)
    # a plain sample of the same law: the estimate converges to it
    plain = build_schedule("crs", {"space": space, "bins": 40, "smooth": 0.0}, CTX)
    plain.prepare(s_data * torch.randn(40000, d, generator=torch.Generator().manual_seed(1)))
    assert np.allclose(plain.speed, analytic, rtol=0.05)
    # p(u) ∝ v^xi: without smoothing and floor the density at segment midpoints follows the speed
    pdf = crs.pdf(torch.tensor(crs.mids)).double().numpy()
    assert np.allclose(pdf / pdf.max(), analytic / analytic.max(), rtol=1e-4, atol=1e-9)


def test_crs_path_speed_is_the_frechet_distance_of_the_fitted_gaussians():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(6, 6))
    mean, cov = rng.normal(size=6), m @ m.T / 6
    sigmas = np.array([0.3, 0.35, 2.0, 2.3])
    got = gaussian_path_speed(mean, cov, sigmas, 0.7, "vp")
    for k in range(3):
        a0, a1 = 1 / np.sqrt(0.49 + sigmas[k] ** 2), 1 / np.sqrt(0.49 + sigmas[k + 1] ** 2)
        fd = frechet_distance(a0 * mean, a0**2 * (cov + sigmas[k] ** 2 * np.eye(6)),
                              a1 * mean, a1**2 * (cov + sigmas[k + 1] ** 2 * np.eye(6)))  # fmt: skip
        assert got[k] == pytest.approx(math.sqrt(fd), rel=1e-5)


def test_crs_xi_sharpens_and_the_sampling_grid_is_its_cdf():
    flat = SCHEDULES["crs(fd)"]
    sharp = build_schedule("crs", {"xi": 2.0}, CTX)
    sharp.prepare(torch.where(torch.rand(512, 16, generator=torch.Generator().manual_seed(0)) > 0.5, 1.0, -1.0))
    mids = torch.tensor(flat.mids, dtype=torch.float32)
    p1, p2 = flat.pdf(mids).double().numpy(), sharp.pdf(mids).double().numpy()
    assert np.allclose(p2 / p2.max(), (p1 / p1.max()) ** 2, rtol=1e-3, atol=1e-9)
    # `--sigmas learned` for CRS: σ's at equal quantiles of its CDF
    sigmas = from_schedule(flat, 9, mix=0.0)  # the learned density alone; `learned` mixes in EDM's ρ-spacing
    cdf = flat.cdf(sigmas[:-1].log()).double().numpy()
    assert np.allclose(cdf, np.linspace(1, 0, 9), atol=1e-4)


class GaussianProbe:
    """The Bayes denoiser of N(0, s²I) data, D(x; σ) = s²/(s² + σ²)·x, on a fixed batch."""

    def __init__(self, x, s):
        self.x, self.s, self.calls, self.examples = x, s, 0, 0

    def data(self):
        return self.x

    def __call__(self, x, sigma):
        self.calls += 1
        self.examples += x.shape[0]
        return (self.s**2 / (self.s**2 + sigma**2)).view(-1, *[1] * (x.ndim - 1)) * x


@pytest.mark.parametrize("measure", ["x0", "eps"])
def test_crs_model_measures_against_the_bayes_denoiser(measure):
    s_data, n, d = 0.5, 2048, 8
    crs = build_schedule("crs", {"measure": measure, "bins": 24, "warmup": 0, "smooth": 0.0, "probe_batch": n}, CTX)
    assert crs.probe_examples == n and crs.prepare_examples == 0 and crs.refresh_every == 200
    probe = GaussianProbe(s_data * torch.randn(n, d, generator=torch.Generator().manual_seed(2)), s_data)
    info = crs.refresh(200, probe)
    assert info["probe_examples"] == (24 + 1) * n == probe.examples and crs.active
    # per dimension the x0 prediction is c·(x + σε), c = s²/(s² + σ²); x ⟂ ε, E x² = s², E ε² = 1
    sig = np.exp(crs.nodes)
    c = s_data**2 / (s_data**2 + sig**2)
    if measure == "x0":
        coef_x, coef_e = c, c * sig
    else:  # ε̂ = (x_σ − D)/σ = (1 − c)·x/σ + (1 − c)·ε
        coef_x, coef_e = (1 - c) / sig, 1 - c
    analytic = np.sqrt(np.diff(coef_x) ** 2 * s_data**2 + np.diff(coef_e) ** 2) / crs.delta
    assert np.allclose(crs.speed, analytic, rtol=0.06)


# ---- timewarp -----------------------------------------------------------------------------------------


def test_isotonic_fit_pools_adjacent_violators():
    assert np.allclose(isotonic_increasing(np.array([1.0, 3, 2, 4]), np.ones(4)), [1, 2.5, 2.5, 4])
    assert np.allclose(isotonic_increasing(np.array([3.0, 1, 2]), np.array([1.0, 1, 2])), [2, 2, 2])
    y = np.random.default_rng(0).normal(size=200).cumsum()
    fit = isotonic_increasing(y, np.ones_like(y))
    assert (np.diff(fit) >= -1e-12).all() and fit.mean() == pytest.approx(y.mean())


def test_isotonic_fit_matches_scikit_learns_with_uneven_weights():
    IsotonicRegression = pytest.importorskip("sklearn.isotonic").IsotonicRegression  # in the trainer's install
    y = np.random.default_rng(0).normal(size=200).cumsum()
    w = np.random.default_rng(1).uniform(0.1, 5.0, size=200)
    reference = IsotonicRegression(increasing=True).fit_transform(np.arange(200), y, sample_weight=w)
    assert np.allclose(isotonic_increasing(y, w), reference, atol=1e-9)


def test_timewarp_density_is_the_slope_of_the_fitted_loss():
    floor = 0.05
    s = build_schedule("timewarp", {"warmup": 0, "refresh": 1, "bins": 100, "smooth": 0.0, "floor": floor}, CTX)
    c = torch.tensor(s.stats.centers, dtype=torch.float32)
    # a noiseless, monotone loss curve L(u) = sigmoid(u): CDF ∝ L, density ∝ L'
    s.observe(c.exp().repeat(8), torch.zeros(800), torch.sigmoid(c).repeat(8))
    s.refresh(1)
    assert np.allclose(s.fitted, torch.sigmoid(c).numpy(), atol=1e-6)
    u = torch.linspace(CTX.u_min + 0.3, CTX.u_max - 0.3, 50, dtype=torch.float64)
    lo, hi = torch.sigmoid(c[0].double()), torch.sigmoid(c[-1].double())
    expected = (1 - floor) * torch.sigmoid(u) * torch.sigmoid(-u) / (hi - lo) + floor / (CTX.u_max - CTX.u_min)
    assert torch.allclose(s.pdf(u.float()).double(), expected, rtol=0.01)
    # its CDF is the normalized fit (where the fit lives, between the outer bin centres)
    cdf = (1 - floor) * (torch.sigmoid(u) - lo) / (hi - lo) + floor * (u - CTX.u_min) / (CTX.u_max - CTX.u_min)
    assert torch.allclose(s.cdf(u.float()).double(), cdf, atol=2e-3)


# ---- adaptive ------------------------------------------------------------------------------------------


def test_adaptive_importance_weights_keep_the_objective_unbiased():
    s = SCHEDULES["adaptive(learned)"]
    target = build_schedule("edm", {}, CTX)
    # a weighted loss that varies strongly with σ, as training losses do
    loss = lambda sigma: 1 + 3 * torch.sigmoid(2 * sigma.log()) + 0.2 * torch.cos(sigma.log())  # noqa: E731
    grid = torch.linspace(CTX.u_min, CTX.u_max, 200_001, dtype=torch.float64)
    objective = float(torch.trapezoid(target.pdf(grid) * loss(grid.exp()), grid))  # E_target[ℓ]
    # exactly: ∫ p · (target/p) · ℓ du
    p, scale = s.pdf(grid.float()).double(), s.loss_scale(grid.exp().float()).double()
    assert float(torch.trapezoid(p * scale * loss(grid.exp()), grid)) == pytest.approx(objective, rel=1e-4)
    # by sampling, as training does: the scaled loss averages to the target's objective
    means = []
    for seed in range(20):
        sigma = s.sample(4096, torch.Generator().manual_seed(seed)).double()
        means.append(float((s.loss_scale(sigma.float()).double() * loss(sigma)).mean()))
    assert np.mean(means) == pytest.approx(objective, rel=2e-3)
    # the sampling density tilts toward high loss and the weights stay bounded by ~1/floor
    assert float(scale.max()) <= 1.05 / s.params.floor
    before = build_schedule("adaptive", {}, CTX)
    assert before.loss_scale(torch.ones(3)) is None  # warm-up: plain target samples, weight 1


# ---- curriculum ---------------------------------------------------------------------------------------


def test_curriculum_stage_progression_on_a_synthetic_loss_sequence():
    s = build_schedule("curriculum", {"clusters": 4, "patience": 50, "refresh": 10, "ema": 0.0}, CTX)
    stages = []
    for step in range(1, 401):
        loss = 1 / step if step <= 100 else 0.01  # improves until step 100, then plateaus
        s.observe(torch.ones(8), torch.zeros(8), torch.full((8,), loss))
        if step % s.refresh_every == 0:
            s.refresh(step)
        stages.append(s.stage)
    # the check at 110 (mean 0.01) still beats the one at 100 (mean of 1/91…1/100); nothing improves
    # after it, so stage 1 starts at 160; each stage's first check sets a new best (the EMA resets),
    # then 50 steps without improvement move it on
    assert [(h["step"], h["stage"]) for h in s.history] == [(160, 1), (220, 2), (280, 3)]
    assert stages[-1] == 3 and s.lo == 0  # the last stage is the plain base, until the end
    base = build_schedule("edm", {}, CTX)
    assert torch.allclose(s.pdf(U.float()), base.pdf(U.float()))


@pytest.mark.parametrize("base", ["laplace", "infonoise", "crs"])
def test_curriculum_wraps_any_registered_base_and_refuses_the_two_it_would_undo(base):
    """The registry builds the curriculum's base by name (learned ones too); curriculum and adaptive are refused."""
    from multidiff.errors import UserError

    s = build_schedule("curriculum", {"clusters": 4, "base": base}, CTX)
    assert s.base.name == base and s.to_table().method == "curriculum"
    for bad in ("curriculum", "adaptive", "nonesuch"):
        with pytest.raises(UserError, match="base must be a schedule name other than curriculum and adaptive"):
            build_schedule("curriculum", {"base": bad}, CTX)


def test_curriculum_clusters_are_equal_mass_from_high_noise_down():
    base = build_schedule("edm", {}, CTX)
    s = build_schedule("curriculum", {"clusters": 5}, CTX)
    edges = s.boundaries().double()
    assert torch.allclose(base.cdf(edges.float()).double(), torch.linspace(1, 0, 6, dtype=torch.float64), atol=1e-5)
    for stage in range(5):
        s.stage = stage
        u = s.sample(20_000, torch.Generator().manual_seed(stage)).log()
        assert float(u.min()) >= float(edges[stage + 1]) - 1e-4  # only clusters 0..stage: the noisiest
        inside = base.cdf(u) >= 1 - (stage + 1) / 5 - 1e-5
        assert bool(inside.all())
    state = s.state_dict()
    t = build_schedule("curriculum", {"clusters": 5}, CTX)
    t.load_state_dict(state)
    assert t.stage == 4  # the stage travels in the checkpoint


# ---- every schedule exports the same schedule file ------------------------------------------------


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_every_schedule_exports_a_valid_file_that_reloads_the_same_density(tmp_path, name):
    table = SCHEDULES[name].to_table()
    path = save_schedule_file(tmp_path / "s.json", table, {"domain": "test"})
    loaded = load_schedule_file(path).table
    frozen = TabulatedSchedule(CTX, loaded)
    u = torch.tensor(loaded.u, dtype=torch.float32)
    assert torch.allclose(frozen.pdf(u), torch.tensor(table.pdf, dtype=torch.float32), rtol=1e-5, atol=1e-7)
    assert loaded.method == table.method


def test_refresh_history_records_total_variation():
    s = smooth_observations(build_schedule("timewarp", {"warmup": 2, "refresh": 1}, CTX), steps=6)
    tvs = [h.get("tv") for h in s.history]
    assert tvs[0] is None and all(tv is not None for tv in tvs[1:])  # active from the warm-up on


def test_compare_report_says_when_a_curriculum_never_finished():
    pytest.importorskip("matplotlib")  # the report is the trainer's; the schedule library installs without it
    from multidiff.report.compare_report import schedule_notes

    s = build_schedule("curriculum", {"clusters": 5, "patience": 30}, CTX)
    stuck = schedule_notes({"curriculum": s.to_table(), "edm": build_schedule("edm", {}, CTX).to_table()})
    assert len(stuck) == 1 and "stage 1 of 5" in stuck[0] and "30-step" in stuck[0]
    s.stage = 4  # the last stage: the plain base, nothing to warn about
    assert schedule_notes({"curriculum": s.to_table()}) == []


@pytest.mark.parametrize("sigma_data", [0.5, 2.0])
def test_logsnr_families_follow_sigma_data_as_k_diffusion_does(sigma_data):
    """k-diffusion's v-diffusion density draws t ~ U and σ = σ_data·tan(πt/2); multidiff's cosine
    must give the same law, and laplace must be Laplace(μ, b) in λ = 2 ln(σ_data/σ)."""
    from scipy import stats

    ctx = ScheduleContext(0.002, 80.0, sigma_data)
    g = torch.Generator().manual_seed(0)
    sigma = build_schedule("cosine", {}, ctx).sample(20000, g).double().numpy()
    t = 2 / np.pi * np.arctan(sigma / sigma_data)
    lo, hi = (2 / np.pi * np.arctan(s / sigma_data) for s in (0.002, 80.0))
    assert stats.kstest(t, stats.uniform(lo, hi - lo).cdf).pvalue > 1e-3
    lam = 2 * np.log(sigma_data / build_schedule("laplace", {}, ctx).sample(20000, g).double().numpy())
    lam_lo, lam_hi = 2 * np.log(sigma_data / 80.0), 2 * np.log(sigma_data / 0.002)
    law = stats.laplace(0.0, 0.5)
    truncated = lambda x: (law.cdf(x) - law.cdf(lam_lo)) / (law.cdf(lam_hi) - law.cdf(lam_lo))  # noqa: E731
    assert stats.kstest(lam, truncated).pvalue > 1e-3


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_fixed_methods_are_the_schedules_that_never_adapt(name):
    """The reports' yardstick races learned schedules against the fixed ones: a method counts as
    fixed exactly when, built with its defaults, it neither prepares from data nor refreshes."""
    sched = build_schedule(name, {}, CTX)
    adapts = sched.refresh_every > 0 or sched.prepare_examples > 0
    assert is_fixed_method(name) == (not adapts)

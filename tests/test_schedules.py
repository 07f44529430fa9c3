"""Schedules against closed forms and against their own pdf/cdf/icdf contracts."""
import math

import numpy as np
import pytest
import torch
from conftest import binary_mmse
from scipy import optimize, stats

from multidiff.diffusion.weighting import edm_weight
from multidiff.schedules.base import ScheduleContext
from multidiff.schedules.infonoise import InfoNoise, InfoNoiseParams, low_noise_gate
from multidiff.schedules.registry import REGISTRY, build_schedule
from multidiff.schedules.tabulated import TabulatedDensity, TabulatedSchedule

CTX = ScheduleContext(0.002, 80.0, 1.0, weight=lambda s: edm_weight(s, 1.0))


def learned_infonoise(**overrides):
    """An InfoNoise schedule refreshed on a smooth synthetic error profile."""
    params = InfoNoiseParams(**{"warmup": 0, "refresh": 1, **overrides})
    s = InfoNoise(CTX, params)
    g = torch.Generator().manual_seed(0)
    for step in range(1, 4):
        sigma = torch.exp(torch.empty(4096).uniform_(CTX.u_min, CTX.u_max, generator=g))
        s.observe(sigma, sigma**2 / (1 + sigma**2), torch.zeros(4096))
        s.refresh(step)
    assert s.active
    return s


def smooth_observations(s, steps=3, n=4096, seed=0):
    """Feed a schedule smooth synthetic errors/losses over log-uniform σ and refresh it."""
    g = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        sigma = torch.exp(torch.empty(n).uniform_(CTX.u_min, CTX.u_max, generator=g))
        error = sigma**2 / (1 + sigma**2)
        s.observe(sigma, error, error * (sigma**2 + 1) / sigma**2)
        s.refresh(step)
    return s


def learned(name, **params):
    """A learned schedule (timewarp, adaptive) after a few refreshes, past its warm-up."""
    s = smooth_observations(build_schedule(name, {"warmup": 0, "refresh": 1, **params}, CTX))
    assert s.active
    return s


def prepared_crs(**params):
    g = torch.Generator().manual_seed(0)
    s = build_schedule("crs", params, CTX)
    s.prepare(torch.where(torch.rand(512, 16, generator=g) > 0.5, 1.0, -1.0))  # ±1 "pixels"
    return s


def staged_curriculum(stage=2):
    s = build_schedule("curriculum", {"clusters": 5}, CTX)
    s.stage = stage
    return s


def all_schedules():
    out = {name: build_schedule(name, {}, CTX) for name in REGISTRY if name not in ("infonoise", "crs")}  # crs: prepared below
    out["infonoise(learned)"] = learned_infonoise()
    out["timewarp(learned)"] = learned("timewarp")
    out["adaptive(learned)"] = learned("adaptive")
    out["crs(fd)"] = prepared_crs()
    out["crs(fd, ve, xi=1.2)"] = prepared_crs(space="ve", xi=1.2)
    out["curriculum(stage 2)"] = staged_curriculum()
    out["chen(cosine, b=0.5)"] = build_schedule("chen", {"function": "cosine", "start": 0.2, "tau": 2.0, "b": 0.5}, CTX)
    out["chen(linear, b=2)"] = build_schedule("chen", {"function": "linear", "b": 2.0}, CTX)
    table = out["infonoise(learned)"].to_table()
    out["file"] = TabulatedSchedule(CTX, table)
    return out


SCHEDULES = all_schedules()


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_samples_follow_pdf(name):
    s = SCHEDULES[name]
    g = torch.Generator().manual_seed(1)
    u = s.icdf(torch.rand(20000, generator=g)).double().numpy()  # iid draws through the inverse CDF
    cdf = lambda v: s.cdf(torch.as_tensor(v, dtype=torch.float32)).double().numpy()  # noqa: E731
    assert stats.kstest(u, cdf).pvalue > 1e-3
    # the cdf is the integral of the pdf
    grid = torch.linspace(CTX.u_min, CTX.u_max, 20001, dtype=torch.float64)  # fine: curriculum has a jump
    pdf = s.pdf(grid.float()).double()
    integral = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumulative_trapezoid(pdf, grid)])
    assert torch.allclose(integral, s.cdf(grid.float()).double(), atol=2e-3)
    # stratified sampling, as used in training, follows the same law (and is in range)
    sigma = s.sample(5000, torch.Generator().manual_seed(2))
    assert float(sigma.min()) >= CTX.sigma_min * (1 - 1e-5) and float(sigma.max()) <= CTX.sigma_max * (1 + 1e-5)
    assert stats.kstest(sigma.log().double().numpy(), cdf).statistic < 0.01


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_batch_position_carries_no_noise_level(name):
    """A stratified draw comes out sorted; ``sample`` must return it in a random order: over many
    batches the position of the smallest σ is uniform, and σ is not rank-correlated with position."""
    s = SCHEDULES[name]
    n, batches = 16, 800
    g = torch.Generator().manual_seed(5)
    draws = torch.stack([s.sample(n, g) for _ in range(batches)])
    counts = np.bincount(draws.argmin(1).numpy(), minlength=n)
    assert stats.chisquare(counts).pvalue > 1e-4  # sorted draws put every minimum at position 0
    rho = stats.spearmanr(np.tile(np.arange(n), batches), draws.flatten().numpy()).statistic
    assert abs(rho) < 0.05
    # still one draw per stratum: the sorted batch is the stratified draw
    q = s.cdf(draws.log()).sort(1).values
    assert ((q - torch.arange(n) / n) >= -1e-3).all() and ((q - (torch.arange(n) + 1) / n) <= 1e-3).all()


def test_sample_order_comes_from_the_given_generator():
    s = SCHEDULES["edm"]
    a = s.sample(64, torch.Generator().manual_seed(3))
    b = s.sample(64, torch.Generator().manual_seed(3))
    c = s.sample(64, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_cdf_monotone_and_icdf_inverts(name):
    s = SCHEDULES[name]
    u = torch.linspace(CTX.u_min, CTX.u_max, 2001)
    c = s.cdf(u)
    assert float(c[0]) == pytest.approx(0, abs=1e-6) and float(c[-1]) == pytest.approx(1, abs=1e-6)
    assert bool((c.diff() >= -1e-7).all())
    where = s.pdf(u) > 1e-3  # where the cdf is invertible at float32 resolution
    assert torch.allclose(s.icdf(c)[where], u[where], atol=2e-3)
    q = torch.linspace(0.001, 0.999, 999)
    assert torch.allclose(s.cdf(s.icdf(q)), q, atol=1e-4)


def test_edm_is_a_truncated_normal_in_log_sigma():
    s = build_schedule("edm", {"p_mean": -1.2, "p_std": 1.2}, CTX)
    u = torch.linspace(-3, 1, 9, dtype=torch.float64)
    z = stats.norm(-1.2, 1.2)
    mass = z.cdf(CTX.u_max) - z.cdf(CTX.u_min)
    assert np.allclose(s.pdf(u).numpy(), z.pdf(u.numpy()) / mass, rtol=1e-6)
    assert float(s.icdf(torch.tensor([0.5], dtype=torch.float64))) == pytest.approx(
        z.ppf(z.cdf(CTX.u_min) + 0.5 * mass), abs=1e-6
    )
    edm2 = build_schedule("edm2", {}, CTX)
    assert (edm2.params.p_mean, edm2.params.p_std) == (-0.4, 1.0)


def test_tabulated_density_is_exact_for_its_pieces():
    # pdf ∝ u on [0, 1] (one linear piece): cdf = u², icdf = √q
    d = TabulatedDensity(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 2.0]))
    q = torch.linspace(0, 1, 11)
    assert torch.allclose(d.icdf(q), q.sqrt(), atol=1e-6)
    assert torch.allclose(d.cdf(q), q**2, atol=1e-6)


# ---- InfoNoise against the analytic case of iid ±1 pixels ---------------------------------------


def feed_exact_mmse(schedule: InfoNoise, step: int = 1, per_bin: int = 16) -> None:
    """Observe the exact Bayes MMSE at every bin centre, per_bin times."""
    sigma = torch.tensor(np.exp(schedule.stats.centers), dtype=torch.float32).repeat(per_bin)
    e = torch.tensor(binary_mmse(np.exp(schedule.stats.centers)), dtype=torch.float32).repeat(per_bin)
    schedule.observe(sigma, e, e)
    schedule.refresh(step)


def test_infonoise_reproduces_the_binary_profile_with_pinned_gate():
    c = 0.2
    s = InfoNoise(CTX, InfoNoiseParams(bins=64, warmup=0, smooth=0.0, floor=0.0, gate_c=c))
    feed_exact_mmse(s)
    sigma = np.exp(s.stats.centers)
    mmse = binary_mmse(sigma)
    # the profile is the I–MMSE entropy rate mmse/σ²
    assert np.allclose(s.profile.mmse, mmse, rtol=1e-5, atol=1e-12)
    assert np.allclose(s.profile.rate, mmse / sigma**2, rtol=1e-5, atol=1e-12)
    # the density is rate · gate / w, applied here by hand
    by_hand = (mmse / sigma**2) * sigma**3 / (sigma**3 + c**3) / ((sigma**2 + 1) / sigma**2)
    got = s.pdf(torch.tensor(s.stats.centers, dtype=torch.float32)).double().numpy()
    du = s.stats.centers[1] - s.stats.centers[0]
    by_hand /= (by_hand * du).sum()
    got /= (got * du).sum()
    assert np.allclose(got, by_hand, atol=2e-3 * by_hand.max())
    # the information of ±1 pixels sits between σ≈0.3 and σ≈3; EDM's log-normal peaks at σ≈0.3
    peak = sigma[np.argmax(got)]
    assert 0.5 < peak < 1.5


def test_infonoise_onset_rule_matches_root_of_analytic_profile():
    p = 0.002
    s = InfoNoise(CTX, InfoNoiseParams(bins=128, warmup=0, smooth=0.0, floor=0.0, gate_c=None, onset_p=p))
    feed_exact_mmse(s)
    ungated = lambda sg: binary_mmse(np.array([sg]))[0] / (sg**2 + 1)  # rate / w with σ_data = 1  # noqa: E731
    peak = optimize.minimize_scalar(lambda lu: -ungated(np.exp(lu)), bounds=(-2, 2), method="bounded")
    top = ungated(np.exp(peak.x))
    onset = np.exp(optimize.brentq(lambda lu: ungated(np.exp(lu)) - p * top, np.log(0.05), peak.x))
    width = (CTX.u_max - CTX.u_min) / 128
    assert s.profile.rule == "onset"
    assert abs(math.log(s.profile.c) - math.log(onset)) <= width  # within one bin of the exact crossing
    g = low_noise_gate(np.exp(s.stats.centers), s.profile.c, 3.0)
    assert np.allclose(s.profile.gate, g)


def test_infonoise_warmup_ema_floor_and_total_variation():
    params = InfoNoiseParams(bins=32, warmup=3, refresh=1, smooth=0.0, floor=0.05, gate_c=0.2, ema=0.5, min_count=4)
    s = InfoNoise(CTX, params)
    base = build_schedule("edm", {}, CTX)
    u = torch.linspace(-5, 3, 50)
    feed_exact_mmse(s, step=1)
    assert not s.active and torch.allclose(s.pdf(u), base.pdf(u))  # still the base during warm-up
    sigma = torch.tensor(np.exp(s.stats.centers), dtype=torch.float32)
    # EMA over refreshes: a second, doubled observation moves the estimate halfway
    first = s.mmse.copy()
    s.observe(sigma.repeat(8), 2 * torch.tensor(first, dtype=torch.float32).repeat(8), sigma.repeat(8))
    s.refresh(2)
    assert np.allclose(s.mmse, 1.5 * first, rtol=1e-5)
    # bins with too few new observations keep their value, and carry the samples to the next refresh
    s.observe(sigma[:1].repeat(3), torch.tensor([100.0] * 3), torch.zeros(3))
    s.refresh(3)
    assert np.allclose(s.mmse, 1.5 * first, rtol=1e-5)
    assert float(s.stats.counts[0]) == 3 and float(s.stats.counts[1:].sum()) == 0
    assert s.active
    # the floor mixes in log-uniform: every u has at least floor / width density
    width = CTX.u_max - CTX.u_min
    assert float(s.pdf(torch.linspace(CTX.u_min, CTX.u_max, 200)).min()) >= 0.05 / width * (1 - 1e-4)
    assert s.history[-1]["tv"] > 0.1  # switching away from EDM is a large change...
    for step in range(4, 8):
        feed_exact_mmse(s, step=step)
    assert s.history[-1]["tv"] < 1e-2  # ...and a settled profile barely moves


def test_infonoise_state_round_trip_rebuilds_the_same_table():
    s = learned_infonoise()
    s.observe(torch.tensor([0.5, 1.0]), torch.tensor([0.1, 0.2]), torch.zeros(2))  # pending statistics
    t = InfoNoise(CTX, s.params)
    t.load_state_dict(s.state_dict())
    assert t.active and torch.equal(t.stats.sums, s.stats.sums) and torch.equal(t.stats.counts, s.stats.counts)
    assert t.to_table().pdf == s.to_table().pdf


def test_infonoise_rejects_nonfinite_statistics():
    from multidiff.errors import NonFiniteLossError

    s = InfoNoise(CTX, InfoNoiseParams(warmup=0))
    s.observe(torch.tensor([1.0]), torch.tensor([float("nan")]), torch.tensor([0.0]))
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        s.refresh(1)


@pytest.mark.parametrize("temper", [0.5, 2.0, 4.0])
def test_a_tempered_profile_is_the_normalized_power_of_the_rate(temper):
    """temper = ξ: for a Gaussian with σ_data = 1 the rate is mmse/σ² = 1/(1 + σ²) exactly, so with a flat
    weight and the gate far below the range the density is ∝ (1 + σ²)^(-ξ), normalized over ln σ."""
    from multidiff.schedules.infonoise import infonoise_profile

    u = np.linspace(np.log(0.002), np.log(80.0), 400)
    sigma2 = np.exp(2 * u)
    prof = infonoise_profile(u, sigma2 / (1 + sigma2), np.ones_like(u), gate_c=1e-9, temper=temper)
    expected = (1 + sigma2) ** -temper
    expected /= float((expected * np.gradient(u)).sum())
    np.testing.assert_allclose(prof.density, expected, rtol=1e-6)
    grid = torch.linspace(CTX.u_min, CTX.u_max, 2001)
    sharper = learned_infonoise(temper=temper).pdf(grid).max() > learned_infonoise().pdf(grid).max()
    assert bool(sharper) == (temper > 1)  # the schedule's peak rises when ξ > 1 and falls when ξ < 1
    with pytest.raises(ValueError, match="temper"):
        InfoNoise(CTX, InfoNoiseParams(temper=0.0))


@pytest.mark.parametrize("base", ["edm", "laplace"])
def test_a_defensive_mixture_keeps_the_base_share_everywhere(base):
    """defensive = α: the learned density never gives a region less than α·(1 − floor) of what the
    base gives it (the defensive-mixture guarantee), still integrates to one, and α = 0 changes nothing."""
    from multidiff.schedules.bases import fixed_schedule

    u = torch.linspace(CTX.u_min, CTX.u_max, 2001)
    plain = learned_infonoise(base=base)
    mixed = learned_infonoise(base=base, defensive=0.5)
    reference = fixed_schedule(base, CTX).pdf(u)
    assert torch.all(mixed.pdf(u) >= 0.5 * (1 - 0.03) * reference * 0.99)
    assert not torch.all(plain.pdf(u) >= 0.5 * (1 - 0.03) * reference * 0.99)  # without it the learned one starves a region
    assert float(torch.trapezoid(mixed.pdf(u), u)) == pytest.approx(1.0, abs=2e-3)
    assert torch.equal(learned_infonoise(base=base, defensive=0.0).pdf(u), plain.pdf(u))
    with pytest.raises(ValueError, match="defensive"):
        InfoNoise(CTX, InfoNoiseParams(defensive=0.98, floor=0.03))

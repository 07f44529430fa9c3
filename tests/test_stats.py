"""The comparison's yardsticks on constructed curves with known answers."""
import math

import numpy as np
import pytest

from multidiff.report.compare_report import final_within_noise
from multidiff.report.stats import bound_mark, paired_difference, speedup, steps_to_reach, summarize_ratios, verdict


def test_steps_to_reach_interpolates_between_evaluations():
    steps, values = [100, 200, 300, 400], [1.0, 0.8, 0.6, 0.4]
    assert steps_to_reach(steps, values, 0.7) == pytest.approx(250.0)  # halfway between 0.8 and 0.6
    assert steps_to_reach(steps, values, 1.2) == 100.0  # reached at the first evaluation
    assert steps_to_reach(steps, values, 0.3) is None  # never
    higher = steps_to_reach(steps, [0.1, 0.3, 0.5, 0.9], 0.4, lower=False)
    assert higher == pytest.approx(250.0)  # accuracy-like metrics race upward


def test_a_noisy_dip_below_the_target_is_not_reaching_it():
    steps, values = [100, 200, 300, 400], [1.0, 0.5, 0.9, 0.6]  # dips to 0.5 once, then climbs back
    assert steps_to_reach(steps, values, 0.7) == pytest.approx(300 + 100 * (0.9 - 0.7) / (0.9 - 0.6))


def test_speedup_of_a_curve_twice_as_fast():
    steps = [250 * k for k in range(1, 9)]  # 250 … 2000
    base = [1 / s for s in steps]
    fast = [1 / (2 * s) for s in steps]  # reaches any value in half the steps
    sp = speedup((steps, base), (steps, fast))
    assert sp["reached"] and sp["ratio"] == pytest.approx(2.0, rel=0.05)
    slow = speedup((steps, fast), (steps, base))  # the other way round: the baseline gets there first
    assert not slow["reached"] and slow["ratio"] == pytest.approx(0.5, rel=0.05)


def test_a_curve_already_there_at_its_first_evaluation_gives_a_lower_bound():
    steps = [1000, 2000]
    sp = speedup((steps, [5.0, 4.0]), (steps, [3.5, 3.0]))  # beats the baseline's final 4.0 at step 1 000
    assert sp["reached"] and sp["ratio"] == pytest.approx(2.0) and sp["at_least"]  # got there at ≤ 1 000 steps
    later = speedup((steps, [5.0, 4.0]), (steps, [4.5, 3.0]))
    assert later["ratio"] == pytest.approx(2000 / (1000 + 1000 * 0.5 / 1.5)) and not later["at_least"]
    out = summarize_ratios([2.0, 1.2], at_least=[True, False])
    assert out["at_least"] and out["verdict"].endswith("a lower bound (reached by its first evaluation)")
    assert not summarize_ratios([2.0, 1.2], at_least=[False, False])["at_least"]


def test_a_baseline_already_there_at_its_first_evaluation_gives_an_upper_bound():
    """The mirror case: the run never reaches the baseline's final value, and the baseline was at the
    run's final value by its first evaluation, so the ratio 1 000 / 2 000 holds for any later crossing
    of the truth: the speedup is at most ½, shown as "≤", never as an exact ½ with a zero-width interval."""
    steps = [1000, 2000]
    sp = speedup((steps, [2.5, 2.0]), (steps, [4.0, 3.0]))
    assert not sp["reached"] and sp["ratio"] == pytest.approx(0.5) and sp["at_most"] and not sp["at_least"]
    between = speedup((steps, [3.5, 2.0]), (steps, [4.0, 3.0]))  # the baseline crosses 3.0 between its evaluations
    assert between["ratio"] == pytest.approx((1000 + 1000 * 0.5 / 1.5) / 2000) and not between["at_most"]
    out = summarize_ratios([0.5, 0.5, 0.5], at_most=[True, True, True])
    assert out["at_most"] and bound_mark(out) == "≤ " and out["verdict"].endswith("an upper bound (the baseline was there by its first evaluation)")
    assert bound_mark(summarize_ratios([0.5, 0.6])) == ""


def test_final_values_only_give_no_speedup():
    sp = speedup(([3000], [4.0]), ([3000], [3.0]))  # one evaluation each: when it got there is unknown
    assert sp["reached"] and sp["ratio"] is None and sp["steps"] is None
    assert summarize_ratios([sp["ratio"]])["verdict"] == "not measurable"


def test_ratios_are_averaged_in_log_space_with_a_t_interval():
    out = summarize_ratios([2.0, 0.5])
    assert out["mean"] == pytest.approx(1.0)  # 2× and ½× cancel
    same = summarize_ratios([1.5, 1.5, 1.5])
    assert same["mean"] == pytest.approx(1.5) and same["interval"] == pytest.approx((1.5, 1.5)) and same["verdict"] == "faster"
    spread = summarize_ratios([0.8, 1.1, 1.4])
    lo, hi = spread["interval"]
    assert lo < 1 < hi and spread["verdict"] == "within noise"
    assert summarize_ratios([1.7])["verdict"] == "one seed: no interval"
    assert summarize_ratios([None, None])["verdict"] == "not measurable"
    # the t-interval of three log speedups, by hand: mean ± t(0.975, 2)·sd/√3
    logs = np.log([1.06, 1.288, 1.33])
    half = 4.302652729911275 * logs.std(ddof=1) / math.sqrt(3)
    assert summarize_ratios([1.06, 1.288, 1.33])["interval"] == pytest.approx((math.exp(logs.mean() - half), math.exp(logs.mean() + half)))


def test_two_close_seeds_do_not_make_a_speedup():
    """Two seeds at 1.025× and 1.037× (a 200-step compare) say nothing about which is faster."""
    out = summarize_ratios([1.025, 1.037])
    assert out["interval"][0] < 1 < out["interval"][1] and out["verdict"] == "within noise"


@pytest.mark.parametrize("n", [2, 3, 5])
def test_speedup_interval_covers_the_true_speedup_95_percent_of_the_time(n):
    """Coverage against a known truth: per-seed speedups drawn log-normally around a true geometric
    mean of 1.3× (log sd 0.2); over 4 000 seed sets the 95 % interval must contain 1.3 in about 95 %
    of them. (A percentile bootstrap of the seeds covers about 74 % at n = 3 and 50 % at n = 2.)"""
    rng = np.random.default_rng(n)
    true, sets = 1.3, 4000
    ratios = np.exp(rng.normal(math.log(true), 0.2, size=(sets, n)))
    covered = 0
    for r in ratios:
        lo, hi = summarize_ratios(list(r))["interval"]
        covered += lo <= true <= hi
    assert abs(covered / sets - 0.95) < 0.015, covered / sets


def test_paired_difference_and_its_verdict():
    better = paired_difference([0.9, 0.8, 0.85], [1.0, 0.9, 0.96], lower=True)
    assert better["mean"] == pytest.approx(-0.1033, abs=1e-3) and better["verdict"] == "better"
    noisy = paired_difference([0.9, 1.1, 1.0], [1.0, 1.0, 1.0], lower=True)
    assert noisy["verdict"] == "within noise"
    assert paired_difference([0.9], [1.0], lower=True)["verdict"] == "one seed: no interval"
    assert verdict((0.7, 0.9), 3, reference=1.0) == "slower"


def test_final_values_within_the_metrics_own_noise():
    assert final_within_noise({"mean": -0.04, "interval": None}, eval_sd=0.7)  # one seed, below 2 sd
    assert not final_within_noise({"mean": -2.0, "interval": None}, eval_sd=0.7)
    assert final_within_noise({"mean": -0.01, "interval": (-0.05, 0.03)}, eval_sd=None)
    assert not final_within_noise({"mean": -0.1, "interval": None}, eval_sd=None)  # NELBO, one seed: no noise figure

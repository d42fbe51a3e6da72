"""Threshold rules (conformal, quantile, F1, manual) and normalised scores, on generated scores."""

from __future__ import annotations

import numpy as np
import pytest

from aelab.anomaly import (
    Threshold,
    choose_threshold,
    f1_threshold,
    normalized_score,
    quantile_threshold,
)
from aelab.errors import AelabError


def _f1_reference(normal, anomalous, t):
    """F1 of the decision score > t, from the definition."""
    tp = np.sum(anomalous > t)
    fp = np.sum(normal > t)
    fn = np.sum(anomalous <= t)
    return 2 * tp / (2 * tp + fp + fn)


@pytest.mark.parametrize("quantile", [0.99, 0.95, 0.9])
def test_quantile_rule_gives_the_requested_false_alarm_rate_on_new_normals(quantile):
    rng = np.random.default_rng(0)
    held_out = rng.lognormal(-4, 0.5, 20_000)  # skewed, like reconstruction errors
    fresh = rng.lognormal(-4, 0.5, 20_000)
    th = choose_threshold(held_out, rule="quantile", quantile=quantile)
    assert th.rule == "quantile" and th.quantile == quantile and th.n_normal == 20_000
    assert np.mean(held_out > th.value) == pytest.approx(1 - quantile, abs=1e-3)
    assert np.mean(fresh > th.value) == pytest.approx(1 - quantile, abs=5e-3)


def test_f1_rule_matches_a_brute_force_search_and_separates_separable_scores():
    rng = np.random.default_rng(1)
    normal, anomalous = rng.normal(0, 1, 300), rng.normal(1.5, 1, 60)
    t = f1_threshold(normal, anomalous)
    candidates = np.concatenate([normal, anomalous, [normal.min() - 1]])
    best = max(_f1_reference(normal, anomalous, c) for c in candidates)
    assert _f1_reference(normal, anomalous, t) == pytest.approx(best)
    # Perfectly separable: the threshold lies strictly between the groups (F1 = 1).
    t = f1_threshold([0.1, 0.2, 0.3], [0.7, 0.9])
    assert 0.3 < t < 0.7 and t == pytest.approx(0.5)
    th = choose_threshold([0.1, 0.2, 0.3], [0.7, 0.9])
    assert th.rule == "f1" and th.n_anomalous == 2


def test_manual_rule_and_bad_thresholds():
    assert choose_threshold(value=0.25) == Threshold(0.25, "manual")
    assert choose_threshold([1.0, 2.0], value=0.25).rule == "manual"  # a value wins under auto
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(AelabError, match="positive"):
            choose_threshold(value=bad)
    with pytest.raises(AelabError, match="rule"):
        choose_threshold([1.0], rule="median")
    with pytest.raises(AelabError, match="anomalies"):
        choose_threshold([1.0, 2.0], rule="f1")
    with pytest.raises(AelabError, match="no held-out normal"):
        choose_threshold([], rule="quantile")
    with pytest.raises(AelabError, match="quantile"):
        quantile_threshold([1.0, 2.0], 1.5)
    with pytest.raises(AelabError, match="NaN"):
        quantile_threshold([1.0, float("nan")])


def test_normalized_score_is_monotone_with_the_threshold_at_one_half():
    s = np.array([0.0, 0.01, 0.1, 0.2, 5.0])
    z = normalized_score(s, 0.1)
    assert z[2] == 0.5 and z[0] == 0.0 and np.all(np.diff(z) > 0) and np.all(z < 1)
    th = Threshold(0.1, "quantile", 0.99, 80)
    # The same decision: normalised > 0.5 exactly when the score is above the threshold.
    assert np.array_equal(th.predict(s), (th.normalize(s) > 0.5).astype(int))
    assert Threshold.from_dict(th.to_dict()) == th


def test_conformal_threshold_is_the_kth_smallest_score():
    scores = np.random.default_rng(5).permutation(np.arange(1.0, 81.0))  # 80 held-out scores 1..80
    for alpha, k in ((0.1, 73), (0.05, 77), (0.2, 65), (0.01, 80)):  # k = ceil(81 (1 - alpha)), capped at 80
        th = choose_threshold(scores, rule="conformal", alpha=alpha)
        assert (th.rank, th.value, th.n_normal, th.alpha) == (k, float(k), 80, alpha)
        assert th.expected_false_alarm_rate == pytest.approx((81 - k) / 81)
    assert choose_threshold(scores).rule == "conformal"  # the default without anomalies
    assert Threshold.from_dict(th.to_dict()) == th


@pytest.mark.parametrize("alpha, n", [(0.05, 79), (0.1, 60), (0.01, 199)])
def test_conformal_false_alarm_rate_on_generated_scores(alpha, n):
    """2,000 calibrations of n held-out normals, each tested on 200 fresh normals.

    The mean false-alarm rate matches (n + 1 - k) / (n + 1) <= alpha (finite-sample guarantee);
    the rates spread like Beta(n + 1 - k, k); the observed rate on 200 new normals falls inside
    the 95 % beta-binomial interval about 95 % of the time. The plain quantile rule, with the
    same data, exceeds alpha on average (the defect the conformal rule fixes).
    """
    from scipy import stats

    rng = np.random.default_rng(int(alpha * 1000) + n)
    reps, m = 2000, 200
    calib = rng.lognormal(-4, 0.5, (reps, n))
    fresh = rng.lognormal(-4, 0.5, (reps, m))
    k = int(np.ceil((n + 1) * (1 - alpha) - 1e-9))
    th = choose_threshold(calib[0], alpha=alpha)
    lo, hi = th.false_alarm_interval(m)
    values = np.sort(calib, axis=1)[:, k - 1]
    observed = np.mean(fresh > values[:, None], axis=1)
    assert th.rank == k and th.expected_false_alarm_rate <= alpha
    assert observed.mean() == pytest.approx((n + 1 - k) / (n + 1), abs=0.15 * alpha)
    true_rate = stats.lognorm(0.5, scale=np.exp(-4)).sf(values)  # the exact rate of each threshold
    assert stats.kstest(true_rate, stats.beta(n + 1 - k, k).cdf).pvalue > 0.001
    inside = np.mean((observed >= lo) & (observed <= hi))
    assert 0.93 <= inside <= 0.995
    naive = np.array([np.mean(f > np.quantile(c, 1 - alpha)) for c, f in zip(calib[:500], fresh[:500])])
    assert naive.mean() > alpha > observed.mean() - 0.1 * alpha


def test_conformal_interval_without_new_images_is_the_beta_interval():
    from scipy import stats

    th = choose_threshold(np.arange(99.0), alpha=0.05)  # n = 99: k = 95
    lo, hi = th.false_alarm_interval()
    assert th.rank == 95 and (lo, hi) == pytest.approx((stats.beta.ppf(0.025, 5, 95), stats.beta.ppf(0.975, 5, 95)))
    assert Threshold(0.1, "quantile", 0.99, 80).false_alarm_interval(100) is None

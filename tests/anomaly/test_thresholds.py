"""Threshold rules, normalised scores, score combination and metrics, on synthetic scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aelab.anomaly import (
    Threshold,
    anomaly_metrics,
    base_scores,
    choose_threshold,
    combine_scores,
    f1_threshold,
    normalized_score,
    pixel_errors,
    quantile_threshold,
)
from aelab.errors import AelabError


def _f1_reference(normal, anomalous, t):
    """F1 of the decision score > t, from the definition."""
    tp = np.sum(anomalous > t)
    fp = np.sum(normal > t)
    fn = np.sum(anomalous <= t)
    return 2 * tp / (2 * tp + fp + fn)


def _auroc_reference(normal, anomalous):
    """AUROC as the Mann-Whitney probability P(anomalous > normal), ties counting one half."""
    diff = anomalous[:, None] - normal[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


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


def test_scores_match_their_definitions():
    rng = np.random.default_rng(2)
    target = torch.from_numpy(rng.random((3, 3, 16, 16), dtype=np.float32))
    recon = torch.from_numpy(rng.random((3, 3, 16, 16), dtype=np.float32))
    base = base_scores(target, recon)
    diff = recon.numpy() - target.numpy()
    np.testing.assert_allclose(base["mse"], (diff**2).reshape(3, -1).mean(1), rtol=1e-5)
    np.testing.assert_allclose(base["mae"], np.abs(diff).reshape(3, -1).mean(1), rtol=1e-5)
    assert np.all(base["ssim"] > 0.5)  # unrelated noise images: SSIM near 0
    same = base_scores(target, target)
    np.testing.assert_allclose(same["ssim"], 0.0, atol=1e-4)
    np.testing.assert_allclose(pixel_errors(target, recon, "mse").mean((1, 2)).numpy(), base["mse"], rtol=1e-5)
    np.testing.assert_allclose(pixel_errors(target, recon, "ssim").mean((1, 2)).numpy(), base["ssim"], rtol=1e-4)
    medians = {"mse": 0.5, "mae": 1.0, "ssim": 2.0}
    expected = (np.sqrt(base["mse"] / 0.5) + base["ssim"] / 2.0) / 2
    np.testing.assert_allclose(combine_scores(base, "combined", medians), expected)
    with pytest.raises(AelabError, match="median"):
        combine_scores(base, "combined")
    with pytest.raises(AelabError, match="unknown anomaly score"):
        combine_scores(base, "psnr")


def test_metrics_match_references():
    rng = np.random.default_rng(3)
    normal, anomalous = rng.normal(0, 1, 200), rng.normal(1, 1, 50)
    m = anomaly_metrics(normal, anomalous, 0.8, normal_loss=[0.1, 0.3], anomalous_loss=[1.0])
    assert m["auroc"] == pytest.approx(_auroc_reference(normal, anomalous))
    assert m["f1"] == pytest.approx(_f1_reference(normal, anomalous, 0.8))
    assert m["recall"] == pytest.approx(np.mean(anomalous > 0.8))
    assert m["false_alarm_rate"] == pytest.approx(np.mean(normal > 0.8))
    tp, fp = np.sum(anomalous > 0.8), np.sum(normal > 0.8)
    assert m["precision"] == pytest.approx(tp / (tp + fp))
    assert m["normal_loss"] == pytest.approx(0.2) and m["anomaly_loss"] == pytest.approx(1.0)
    assert 0 < m["average_precision"] <= 1 and m["n_normal"] == 200 and m["n_anomalous"] == 50
    with pytest.raises(AelabError, match="anomalous"):
        anomaly_metrics(normal, [], 0.5)


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

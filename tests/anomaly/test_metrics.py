"""Pixel metrics (pixel AUROC, PRO) and the evaluation result, against in-test references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from aelab.anomaly import anomaly_metrics, choose_threshold
from aelab.anomaly.metrics import evaluate_scores, per_region_overlap, pixel_metrics
from aelab.errors import AelabError


def _scene(seed: int = 0):
    """Six 24x24 maps, noise everywhere, with 1-3 defect regions of different sizes raised by 0.5-1."""
    rng = np.random.default_rng(seed)
    maps = rng.random((6, 24, 24))
    masks = np.zeros_like(maps, dtype=bool)
    for i in range(6):
        for _ in range(rng.integers(1, 4)):
            y, x, h, w = *rng.integers(0, 18, 2), *rng.integers(1, 6, 2)
            masks[i, y : y + h, x : x + w] = True
    maps[masks] += rng.uniform(0.5, 1.0, masks.sum())
    return maps, masks


def _pro_reference(maps, masks, limit=0.3):
    """PRO from its definition: every distinct map value as a threshold, exact curve, cut at limit."""
    regions = []
    for m, g in zip(maps, masks):
        lab, n = ndimage.label(g, structure=np.ones((3, 3)))
        regions += [m[lab == i] for i in range(1, n + 1)]
    normal = maps[~masks]
    fpr, pro = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fpr.append(np.mean(normal >= t))
        pro.append(np.mean([np.mean(r >= t) for r in regions]))
    fpr, pro = np.array(fpr), np.array(pro)
    cut = np.searchsorted(fpr, limit, side="right")
    p_lim = np.interp(limit, fpr[cut - 1 : cut + 1], pro[cut - 1 : cut + 1])
    return np.trapezoid(np.r_[pro[:cut], p_lim], np.r_[fpr[:cut], limit]) / limit


def test_pixel_auroc_is_scikit_learns_on_the_flattened_maps():
    maps, masks = _scene()
    m = pixel_metrics(maps, masks)
    assert m["pixel_auroc"] == roc_auc_score(masks.ravel(), maps.ravel())
    pos, neg = maps[masks], maps[~masks]
    mann_whitney = np.mean(pos[:, None] > neg[None, :])  # continuous values: no ties
    assert m["pixel_auroc"] == pytest.approx(mann_whitney)


def test_pro_matches_the_definition_and_counts_regions_not_pixels():
    maps, masks = _scene(1)
    assert per_region_overlap(maps, masks) == pytest.approx(_pro_reference(maps, masks), abs=2e-3)
    assert pixel_metrics(maps, masks)["n_regions"] == sum(ndimage.label(g, structure=np.ones((3, 3)))[1] for g in masks)
    # A map that finds the one large region but misses three small ones: pixel AUROC stays
    # high (most defect pixels are found), PRO drops to about a quarter (1 of 4 regions).
    masks = np.zeros((1, 40, 40), bool)
    masks[0, 2:22, 2:22] = True
    for y in (30, 34, 38):
        masks[0, y, 30:32] = True
    maps = masks.astype(float) * 0.0
    maps[0, 2:22, 2:22] = 1.0
    m = pixel_metrics(maps + np.random.default_rng(0).random(maps.shape) * 0.1, masks)
    assert m["pixel_auroc"] > 0.95 and 0.2 < m["aupro"] < 0.35 and m["n_regions"] == 4


def test_pro_of_perfect_and_random_maps():
    _, masks = _scene(2)
    assert per_region_overlap(masks.astype(float), masks) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    many = rng.random((60, 32, 32)) < 0.02
    assert per_region_overlap(rng.random(many.shape), many) == pytest.approx(0.15, abs=0.02)  # PRO = FPR: area 0.3/2
    with pytest.raises(AelabError, match="both anomalous and normal"):
        pixel_metrics(np.zeros((1, 4, 4)), np.zeros((1, 4, 4), bool))
    with pytest.raises(AelabError, match="shape"):
        pixel_metrics(np.zeros((1, 4, 4)), np.zeros((1, 4, 5), bool))


def test_evaluation_result_holds_image_pixel_and_per_defect_metrics():
    maps, masks = _scene(3)
    labels = masks.any((1, 2)).astype(int)
    labels[:2] = 0
    masks[:2] = False
    scores = maps.reshape(6, -1).max(1)
    th = choose_threshold(np.arange(1.0, 41.0), alpha=0.1)
    ev = evaluate_scores(scores, labels, th, loss=scores / 10, score="mse", maps=maps, masks=masks,
                         defects=["good", "good", "scratch", "scratch", "blob", "blob"])
    d = ev.to_dict()
    assert d["auroc"] == roc_auc_score(labels, scores)
    assert d["pixel_auroc"] == roc_auc_score(masks.ravel(), maps.ravel())
    assert d["threshold_rule"] == "conformal" and d["expected_false_alarm_rate"] == pytest.approx(4 / 41)
    assert set(d["per_defect_auroc"]) == {"scratch", "blob"} and len(d["false_alarm_interval"]) == 2
    assert d["per_defect_auroc"]["blob"] == roc_auc_score([0, 0, 1, 1], scores[[0, 1, 4, 5]])


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

"""Image-level detection metrics: ranking quality, the decision at the threshold, and mean losses.

Anomalies are the positive class. AUROC and average precision judge the scores alone (no
threshold); F1, precision, recall and the false-alarm rate judge the decision ``score > threshold``.
``normal_loss`` and ``anomaly_loss`` are the course report's two numbers: the mean per-image MSE
between image and reconstruction over each group.

Example:
    >>> m = anomaly_metrics([0.1, 0.2, 0.3], [0.5, 0.25], threshold=0.28)
    >>> m["auroc"], m["recall"], round(m["false_alarm_rate"], 3)
    (0.8333333333333334, 0.5, 0.333)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from aelab.errors import AelabError

__all__ = [
    "METRIC_KEYS",
    "PIXEL_METRIC_KEYS",
    "AnomalyEvaluation",
    "anomaly_metrics",
    "evaluate_scores",
    "per_region_overlap",
    "pixel_metrics",
]

METRIC_KEYS: tuple[str, ...] = (
    "auroc", "average_precision", "f1", "precision", "recall", "false_alarm_rate", "threshold",
    "normal_loss", "anomaly_loss", "n_normal", "n_anomalous",
)


def anomaly_metrics(
    normal_scores: Any,
    anomalous_scores: Any,
    threshold: float,
    *,
    normal_loss: Any = None,
    anomalous_loss: Any = None,
) -> dict[str, float | int | None]:
    """Metrics of a detector on normal and anomalous images.

    Args:
        normal_scores: ``(N,)`` scores of normal images.
        anomalous_scores: ``(M,)`` scores of anomalous images.
        threshold: decision threshold (anomaly when score > threshold).
        normal_loss: ``(N,)`` per-image MSE of the normal images (optional).
        anomalous_loss: ``(M,)`` per-image MSE of the anomalous images (optional).

    Returns:
        Dict with the keys of `METRIC_KEYS`; the losses are ``None`` when not given.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    normal = np.asarray(normal_scores, dtype=np.float64).ravel()
    anom = np.asarray(anomalous_scores, dtype=np.float64).ravel()
    if len(normal) == 0 or len(anom) == 0:
        raise AelabError(f"metrics need normal and anomalous images, got {len(normal)} normal and "
                         f"{len(anom)} anomalous")
    y = np.concatenate([np.zeros(len(normal)), np.ones(len(anom))])
    s = np.concatenate([normal, anom])
    pred = s > threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn)
    f1 = 2 * tp / (2 * tp + fp + fn)
    return {
        "auroc": float(roc_auc_score(y, s)),
        "average_precision": float(average_precision_score(y, s)),
        "f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
        "false_alarm_rate": fp / len(normal),
        "threshold": float(threshold),
        "normal_loss": None if normal_loss is None else float(np.mean(normal_loss)),
        "anomaly_loss": None if anomalous_loss is None else float(np.mean(anomalous_loss)),
        "n_normal": len(normal),
        "n_anomalous": len(anom),
    }


PIXEL_METRIC_KEYS: tuple[str, ...] = ("pixel_auroc", "aupro", "n_regions")


def _check_maps(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    maps, masks = np.asarray(maps, dtype=np.float64), np.asarray(masks).astype(bool)
    if maps.shape != masks.shape or maps.ndim != 3:
        raise AelabError(f"anomaly maps and masks must both be (N, H, W) of one shape, got {maps.shape} "
                         f"and {masks.shape}")
    if not masks.any() or masks.all():
        raise AelabError("pixel metrics need both anomalous and normal pixels in the masks")
    return maps, masks


def per_region_overlap(maps: Any, masks: Any, fpr_limit: float = 0.3, n_levels: int = 301) -> float:
    """Normalised area under the per-region-overlap curve up to a pixel false-positive rate.

    The PRO metric of Bergmann et al. (Uninformed Students, CVPR 2020; The MVTec Anomaly
    Detection Dataset, IJCV 2021), as anomalib computes it (``AUPRO``, ``fpr_limit=0.3``): each
    connected region of a ground-truth mask (8-connectivity) weighs the same, however large. For
    a threshold ``t``: ``PRO(t)`` = mean over regions of the share of the region's pixels with a
    map value above ``t``; ``FPR(t)`` = the share of normal pixels above ``t``. The curve
    ``PRO(FPR)`` is integrated (trapezoids) from 0 to ``fpr_limit`` and divided by
    ``fpr_limit``, so a perfect map scores 1 and a random one about ``fpr_limit / 2``.

    Args:
        maps: ``(N, H, W)`` anomaly maps, higher = more anomalous.
        masks: ``(N, H, W)`` ground truth, True on defects.
        fpr_limit: upper end of the false-positive-rate range, in (0, 1].
        n_levels: thresholds, placed at the normal pixels' quantiles ``1 - f`` for ``f`` evenly in
            [0, fpr_limit] (each exact: the curve passes through the data's own points).
    """
    from scipy import ndimage

    maps, masks = _check_maps(maps, masks)
    normal = np.sort(maps[~masks])
    regions = []
    for m, g in zip(maps, masks):
        labelled, n = ndimage.label(g, structure=np.ones((3, 3)))
        regions += [np.sort(m[labelled == i]) for i in range(1, n + 1)]
    levels = np.linspace(0.0, fpr_limit, n_levels)
    idx = np.clip(np.ceil((1.0 - levels) * len(normal)).astype(int) - 1, 0, len(normal) - 1)
    thresholds = np.unique(np.r_[normal[idx], np.inf, -np.inf])[::-1]  # descending: fpr rises from 0 to 1
    fpr = 1.0 - np.searchsorted(normal, thresholds, side="right") / len(normal)
    pro = np.mean([1.0 - np.searchsorted(r, thresholds, side="right") / len(r) for r in regions], axis=0)
    keep = fpr <= fpr_limit
    nxt = int(np.argmax(~keep))  # the first point past the limit (the -inf threshold at least)
    f_all, p_all = fpr[nxt], pro[nxt]
    fpr, pro = fpr[keep], pro[keep]
    if fpr[-1] < fpr_limit:  # close the curve at the limit by linear interpolation to the next point
        p_lim = pro[-1] + (p_all - pro[-1]) * (fpr_limit - fpr[-1]) / (f_all - fpr[-1])
        fpr, pro = np.r_[fpr, fpr_limit], np.r_[pro, p_lim]
    return float(np.trapezoid(pro, fpr) / fpr_limit)


def pixel_metrics(maps: Any, masks: Any, fpr_limit: float = 0.3) -> dict[str, float | int]:
    """Pixel-level metrics of anomaly maps against ground-truth masks (as anomalib reports them).

    Returns:
        ``pixel_auroc`` (scikit-learn's ``roc_auc_score`` on the flattened maps, defect pixels
        positive), ``aupro`` (`per_region_overlap` up to ``fpr_limit``), ``n_regions``.
    """
    from scipy import ndimage
    from sklearn.metrics import roc_auc_score

    maps, masks = _check_maps(maps, masks)
    n_regions = sum(ndimage.label(g, structure=np.ones((3, 3)))[1] for g in masks)
    return {
        "pixel_auroc": float(roc_auc_score(masks.ravel(), maps.ravel())),
        "aupro": per_region_overlap(maps, masks, fpr_limit),
        "n_regions": int(n_regions),
    }


@dataclass
class AnomalyEvaluation:
    """Everything `aelab anomaly evaluate` measures, as one typed result (``to_dict`` for JSON).

    Image metrics are those of `anomaly_metrics`; ``expected_false_alarm_rate`` and
    ``false_alarm_interval`` (95 %, for the observed rate on these ``n_normal`` images) come from
    the conformal threshold (``None`` for other rules); ``pixel_auroc``/``aupro`` need masks;
    ``per_defect_auroc`` is the image AUROC of each defect type against all normal images.
    """

    auroc: float
    average_precision: float
    f1: float
    precision: float
    recall: float
    false_alarm_rate: float
    threshold: float
    normal_loss: float | None
    anomaly_loss: float | None
    n_normal: int
    n_anomalous: int
    score: str = "mse"
    threshold_rule: str = "manual"
    expected_false_alarm_rate: float | None = None
    false_alarm_interval: tuple[float, float] | None = None
    pixel_auroc: float | None = None
    aupro: float | None = None
    n_regions: int | None = None
    per_defect_auroc: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["false_alarm_interval"] = None if self.false_alarm_interval is None else list(self.false_alarm_interval)
        return d


def evaluate_scores(
    scores: Any, labels: Any, threshold: Any, *, loss: Any = None, score: str = "mse", maps: Any = None,
    masks: Any = None, defects: Any = None,
) -> AnomalyEvaluation:
    """An `AnomalyEvaluation` from per-image scores and labels (1 = anomalous).

    Args:
        scores: ``(N,)`` image scores.
        labels: ``(N,)`` 0/1.
        threshold: an `aelab.anomaly.Threshold` (its rule and conformal statistics are reported).
        loss: ``(N,)`` per-image MSE (for the normal/anomaly loss).
        score: the score's name.
        maps, masks: ``(N, H, W)`` anomaly maps and ground-truth masks: adds the pixel metrics.
        defects: ``(N,)`` defect type per image (anything for normal ones): adds ``per_defect_auroc``.
    """
    from sklearn.metrics import roc_auc_score

    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    loss = None if loss is None else np.asarray(loss, dtype=np.float64)
    m = anomaly_metrics(s[~y], s[y], threshold.value, normal_loss=None if loss is None else loss[~y],
                        anomalous_loss=None if loss is None else loss[y])
    ev = AnomalyEvaluation(**m, score=score, threshold_rule=threshold.rule,
                           expected_false_alarm_rate=threshold.expected_false_alarm_rate,
                           false_alarm_interval=threshold.false_alarm_interval(int((~y).sum())))
    if maps is not None and masks is not None:
        px = pixel_metrics(maps, masks)
        ev.pixel_auroc, ev.aupro, ev.n_regions = px["pixel_auroc"], px["aupro"], px["n_regions"]
    if defects is not None:
        d = np.asarray(defects, dtype=object)
        for kind in sorted(set(d[y])):
            keep = ~y | (y & (d == kind))
            ev.per_defect_auroc[str(kind)] = float(roc_auc_score(y[keep], s[keep]))
    return ev

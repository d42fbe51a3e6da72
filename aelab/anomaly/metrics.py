"""Image-level detection metrics: ranking quality, the decision at the threshold, and mean losses.

Anomalies are the positive class. AUROC and average precision judge the scores alone (no
threshold); F1, precision, recall and the false-alarm rate judge the decision ``score > threshold``.
``normal_loss`` and ``anomaly_loss`` are the seed report's two numbers: the mean per-image MSE
between image and reconstruction over each group.

Example:
    >>> m = anomaly_metrics([0.1, 0.2, 0.3], [0.5, 0.25], threshold=0.28)
    >>> m["auroc"], m["recall"], round(m["false_alarm_rate"], 3)
    (0.8333333333333334, 0.5, 0.333)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aelab.errors import AelabError

__all__ = ["METRIC_KEYS", "anomaly_metrics"]

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
        raise AelabError(f"metrics need normal and anomalous images, got {len(normal)} normal and {len(anom)} anomalous")
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
        "n_normal": int(len(normal)),
        "n_anomalous": int(len(anom)),
    }

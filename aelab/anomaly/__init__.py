"""Anomaly detection by reconstruction: an autoencoder fitted on normal images, scores, thresholds, metrics."""

from aelab.anomaly.detector import DETECTOR_FILE, ReconstructionDetector
from aelab.anomaly.inputs import ImageBatch, Reconstruction, ScoreResult
from aelab.anomaly.metrics import METRIC_KEYS, anomaly_metrics
from aelab.anomaly.scores import BASE_KINDS, SCORE_KINDS, base_scores, combine_scores, normal_medians, pixel_errors
from aelab.anomaly.thresholds import (
    THRESHOLD_RULES,
    Threshold,
    choose_threshold,
    f1_threshold,
    normalized_score,
    quantile_threshold,
)

__all__ = [
    "BASE_KINDS",
    "DETECTOR_FILE",
    "METRIC_KEYS",
    "SCORE_KINDS",
    "THRESHOLD_RULES",
    "ImageBatch",
    "Reconstruction",
    "ReconstructionDetector",
    "ScoreResult",
    "Threshold",
    "anomaly_metrics",
    "base_scores",
    "choose_threshold",
    "combine_scores",
    "f1_threshold",
    "normal_medians",
    "normalized_score",
    "pixel_errors",
    "quantile_threshold",
]

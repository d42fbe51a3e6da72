"""Anomaly detection: an autoencoder (reconstruction) or a transformation classifier (geometric) fitted on
normal images (`BaseDetector`: the estimator interface they share); scores, thresholds, metrics."""

from aelab.anomaly.base import BaseDetector
from aelab.anomaly.corruption import CORRUPTIONS, structured_corruption
from aelab.anomaly.detector import DETECTOR_FILE, ReconstructionDetector
from aelab.anomaly.evaluate import AnomalyEvaluateConfig, EvaluateResult, anomaly_evaluate
from aelab.anomaly.fit import (
    DETECTOR_KEYS,
    GEOMETRIC_KEYS,
    SHARED_KEYS,
    AnomalyFitConfig,
    DetectorSettings,
    FitResult,
    GeometricSettings,
    anomaly_fit,
    make_detector,
)
from aelab.anomaly.geometric import GeometricDetector
from aelab.anomaly.inputs import ImageBatch, Reconstruction, ScoreResult
from aelab.anomaly.methods import METHODS, default_method, load_detector
from aelab.anomaly.metrics import METRIC_KEYS, anomaly_metrics
from aelab.anomaly.run_study import AnomalyStudySettings, run_anomaly_study
from aelab.anomaly.score import AnomalyScoreConfig, ScoreRunResult, anomaly_score
from aelab.anomaly.scores import (
    BASE_KINDS,
    MAP_KINDS,
    REDUCTIONS,
    SCORE_KINDS,
    base_scores,
    combine_scores,
    error_maps,
    normal_medians,
    pixel_errors,
    reduce_maps,
    smooth_maps,
)
from aelab.anomaly.thresholds import (
    THRESHOLD_RULES,
    Threshold,
    choose_threshold,
    conformal_threshold,
    f1_threshold,
    normalized_score,
    quantile_threshold,
)

__all__ = [
    "DETECTOR_KEYS",
    "GEOMETRIC_KEYS",
    "SHARED_KEYS",
    "AnomalyFitConfig",
    "DetectorSettings",
    "FitResult",
    "GeometricSettings",
    "anomaly_fit",
    "make_detector",
    "AnomalyEvaluateConfig",
    "EvaluateResult",
    "anomaly_evaluate",
    "AnomalyScoreConfig",
    "ScoreRunResult",
    "anomaly_score",
    "AnomalyStudySettings",
    "BASE_KINDS",
    "CORRUPTIONS",
    "DETECTOR_FILE",
    "MAP_KINDS",
    "METHODS",
    "METRIC_KEYS",
    "REDUCTIONS",
    "SCORE_KINDS",
    "THRESHOLD_RULES",
    "BaseDetector",
    "GeometricDetector",
    "ImageBatch",
    "Reconstruction",
    "ReconstructionDetector",
    "ScoreResult",
    "Threshold",
    "anomaly_metrics",
    "base_scores",
    "choose_threshold",
    "combine_scores",
    "conformal_threshold",
    "default_method",
    "error_maps",
    "f1_threshold",
    "load_detector",
    "normal_medians",
    "normalized_score",
    "pixel_errors",
    "quantile_threshold",
    "reduce_maps",
    "run_anomaly_study",
    "smooth_maps",
    "structured_corruption",
]

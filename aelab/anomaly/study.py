"""Study 3 as library code: fit, score and evaluate a detector on folders, one module per verb.

`aelab.anomaly.fit` (``anomaly_fit``, the detector settings), `aelab.anomaly.score` (``anomaly_score``) and
`aelab.anomaly.evaluate` (``anomaly_evaluate``); each takes a typed config and returns a typed result. The
images come from `aelab.data.anomaly_sets`. This module names the three verbs together for ``aelab run``.

Example:
    >>> fit = anomaly_fit(AnomalyFitConfig(data="mvtec/bottle", out="runs/bottle"))      # doctest: +SKIP
    >>> ev = anomaly_evaluate(AnomalyEvaluateConfig(data="mvtec/bottle"), detector=fit.detector)  # doctest: +SKIP
"""

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
from aelab.anomaly.score import AnomalyScoreConfig, ScoreRunResult, anomaly_score

__all__ = [
    "DETECTOR_KEYS",
    "GEOMETRIC_KEYS",
    "SHARED_KEYS",
    "AnomalyEvaluateConfig",
    "AnomalyFitConfig",
    "AnomalyScoreConfig",
    "DetectorSettings",
    "EvaluateResult",
    "FitResult",
    "GeometricSettings",
    "ScoreRunResult",
    "anomaly_evaluate",
    "anomaly_fit",
    "anomaly_score",
    "make_detector",
]

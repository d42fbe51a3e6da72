"""Former home of the anomaly verbs; they live in `aelab.anomaly.study` now (the CLI only parses).

Kept for one release so ``from aelab.cli.anomaly_cmds import anomaly_fit`` keeps working.
"""

from aelab.anomaly.study import (  # noqa: F401
    AnomalyEvaluateConfig,
    AnomalyFitConfig,
    AnomalyScoreConfig,
    anomaly_evaluate,
    anomaly_fit,
    anomaly_score,
)

__all__ = ["AnomalyFitConfig", "anomaly_fit", "AnomalyScoreConfig", "anomaly_score", "AnomalyEvaluateConfig", "anomaly_evaluate"]

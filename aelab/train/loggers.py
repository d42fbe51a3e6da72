"""Experiment tracking through Lightning's logger interface.

``metrics.csv`` in the run folder is always written (one row per epoch, `aelab.runs.MetricsLogger`);
``--logger tensorboard`` or ``--logger mlflow`` adds Lightning's own logger of that name when its
package is installed (``pip install tensorboard`` / ``pip install mlflow``), so a user's usual
dashboards show aelab's runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from lightning.fabric.loggers import Logger

from aelab.errors import AelabError
from aelab.runs import MetricsLogger

__all__ = ["LOGGERS", "RunMetricsLogger", "extra_loggers"]

LOGGERS = ("csv", "tensorboard", "mlflow")


class RunMetricsLogger(Logger):
    """A Lightning logger that writes the run folder's ``metrics.csv`` (rank 0 only)."""

    def __init__(self, run_dir: str | Path, start_epoch: int = 0, rank: int = 0):
        super().__init__()
        self._rank = rank
        self._file = MetricsLogger(Path(run_dir) / "metrics.csv", start_epoch=start_epoch) if rank == 0 else None

    @property
    def name(self) -> str:
        return "aelab"

    @property
    def version(self) -> str:
        return "0"

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self._file is not None:
            self._file.log(dict(metrics))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the resolved settings are config.yaml


def extra_loggers(kind: str, run_dir: Path) -> list[Logger]:
    """The optional dashboard logger asked for with ``--logger`` (none for ``csv``)."""
    if kind not in LOGGERS:
        raise AelabError(f"unknown logger {kind!r}; choose one of {', '.join(LOGGERS)}")
    try:
        if kind == "tensorboard":
            from lightning.fabric.loggers import TensorBoardLogger

            return [TensorBoardLogger(root_dir=str(run_dir / "tensorboard"), name="", version="")]
        if kind == "mlflow":
            return [_mlflow_logger(run_dir)]
    except ModuleNotFoundError:
        raise AelabError(f"--logger {kind} needs the {kind} package: pip install {kind}") from None
    return []


def _mlflow_logger(run_dir: Path) -> Logger:
    """MLflow's logger: to ``$MLFLOW_TRACKING_URI`` (a tracking server) when set, else to ``RUN/mlflow.db``.

    MLflow 3 keeps its file store only on request, so the local default is its SQLite store (which
    needs the full ``mlflow`` package, not ``mlflow-skinny``).
    """
    import os

    import mlflow  # noqa: F401  (fail early with a clear message)
    from lightning.pytorch.loggers import MLFlowLogger

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        try:
            import sqlalchemy  # noqa: F401
        except ModuleNotFoundError:
            raise AelabError("--logger mlflow writes RUN/mlflow.db (MLflow's SQLite store), which needs the full "
                             "mlflow package (pip install mlflow), or set MLFLOW_TRACKING_URI to your tracking "
                             "server") from None
        uri = "sqlite:///" + (Path(run_dir) / "mlflow.db").resolve().as_posix()
    return MLFlowLogger(experiment_name="aelab", run_name=Path(run_dir).name, tracking_uri=uri)

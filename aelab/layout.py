"""The files of an ``aelab run`` folder, named in one place.

The pipeline, the studies and the report ask a `RunLayout` for a path instead of spelling it.

Example:
    >>> lay = RunLayout("runs/aelab")
    >>> lay.stage("pretrain").as_posix(), lay.methods_csv.as_posix()
    ('runs/aelab/pretrain', 'runs/aelab/study1/methods.csv')
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PLAN_FILE", "RunLayout"]

#: The file a training stage under a time budget writes into its own folder: its plan (`aelab.results.StagePlan`).
PLAN_FILE = "budget.json"


@dataclass(frozen=True)
class RunLayout:
    """Paths inside one run folder ``root``."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    # bookkeeping
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def stages(self) -> Path:
        return self.root / "stages.json"

    @property
    def demo_data(self) -> Path:
        return self.root / "demo_data"

    def stage(self, name: str) -> Path:
        """The subfolder a stage writes (a training run folder, an embedding, a clustering ...)."""
        return self.root / name

    def error_file(self, name: str) -> Path:
        return self.root / f"{name}.error.txt"

    # study 1
    @property
    def study1(self) -> Path:
        return self.root / "study1"

    @property
    def methods_csv(self) -> Path:
        return self.study1 / "methods.csv"

    @property
    def chosen_json(self) -> Path:
        return self.study1 / "chosen.json"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.csv"

    def method_run(self, method: str) -> Path:
        """The run folder of one study-1 method (its fine-tune, or a classical reference's predictions)."""
        return self.stage(method)

    def method_predictions(self, method: str) -> Path:
        """A classical reference's ``predictions.csv`` (a network's is in `predict_run`)."""
        return self.method_run(method) / "predictions.csv"

    def method_probabilities(self, method: str) -> Path:
        """Class probabilities of one study-1 method's validation and test images (``probabilities.npz``), which
        the ``ensemble`` method combines."""
        return self.method_run(method) / "probabilities.npz"

    def predict_run(self, stage: str) -> Path:
        """The prediction run inside a fine-tune's folder (``<stage>/predict``)."""
        return self.root / stage / "predict"

    # any stage
    def metrics_csv(self, stage: str) -> Path:
        """``<stage>/metrics.csv`` (one row per epoch) of a training stage; ``stage`` relative to the run folder."""
        return self.root / stage / "metrics.csv"

    def model_json(self, stage: str) -> Path:
        """``<stage>/model.json`` (`aelab.models.summary.describe_model`) of a training stage."""
        return self.root / stage / "model.json"

    # study 2b
    @property
    def embed(self) -> Path:
        return self.stage("embed")

    def cluster_run(self, method: str) -> Path:
        """The run folder of one clustering method of study 2b."""
        return self.stage(f"cluster_{method}")

    def cluster_metrics(self, method: str) -> Path:
        return self.cluster_run(method) / "metrics.json"

    def cluster_figure(self, method: str, name: str) -> Path:
        return self.cluster_run(method) / "figures" / f"{name}.png"

    # study 3
    @property
    def anomaly(self) -> Path:
        return self.stage("anomaly")

    def anomaly_fit(self, variant: str) -> Path:
        """The fit run of one detector of study 3 (``noskip``, ``skip``, ``geometric``)."""
        return self.anomaly / variant

    def anomaly_eval(self, variant: str) -> Path:
        return self.anomaly / f"{variant}_eval"

    @property
    def anomaly_summary(self) -> Path:
        return self.anomaly / "summary.json"

    # report
    @property
    def training_curves(self) -> Path:
        return self.root / "figures" / "training_curves.png"

    def relative(self, path: str | os.PathLike) -> str:
        """``path`` relative to the run folder (as written in the run's files), or as given when outside it."""
        p = Path(path)
        return p.relative_to(self.root).as_posix() if p.is_relative_to(self.root) else str(p)

    def report(self, ext: str) -> Path:
        """``report.html``, ``report.pdf``, ``report.md`` or ``report.json``."""
        return self.root / f"report.{ext}"

"""Fixture run folders for the report tests: the files an ``aelab run`` writes, generated in the test."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

METHOD_COLUMNS = ["method", "description", "uses_unlabelled", "labels_per_class", "val_acc", "n_val", "test_acc",
                  "seconds", "run"]
# One row per study-1b method, as the contract of study1/methods.csv has them.
METHODS = [
    ["supervised-only", "random weights, labelled images only", "false", "20", "0.94", "50", "0.951", "31.5",
     "study1/supervised"],
    ["course", "course report: denoising AE pretraining, then w*MSE + (1-w)*CE", "true", "20", "0.88", "50",
     "0.866", "80.2", "study1/course"],
    ["fixmatch", "FixMatch-style consistency on labelled + unlabelled", "true", "20", "0.98", "50", "0.979",
     "240.0", "study1/fixmatch"],
    ["label-spreading", "LabelSpreading (kNN) on a 50-component PCA", "true", "20", "0.86", "50", "0.85", "0.1", ""],
]


def _png(path: Path, title: str) -> str:
    from matplotlib.figure import Figure

    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(4, 2.5), dpi=60)
    ax = fig.subplots()
    x = np.linspace(0, 1, 30)
    ax.plot(x, x**2)
    ax.set_title(title)
    fig.savefig(path)
    return path.name


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def _stages() -> dict:
    """``stages.json`` of a finished run of this version (every study-1 method of `METHODS` done)."""
    done = {"status": "done", "reason": None, "seconds": 12.5}
    methods = {r[0]: {**done, "result": {"method": r[0], "val_acc": float(r[4]), "n_val": int(r[5]),
                                         "labels_per_class": r[3], "test_acc": float(r[6]), "seconds": float(r[7]),
                                         "run": r[8] or None, "predictions": None}} for r in METHODS}
    return {"_meta": {"device": "cpu", "started": "2026-01-02T03:04:05", "aelab_version": "0.1.0"},
            "data": {**done, "result": {"data": "demo_data", "demo": True}}, "pretrain": done, **methods,
            "predict": {**done, "result": {"chosen": "fixmatch", "reason": "highest validation accuracy",
                                           "methods": "study1/methods.csv", "model": "study1/fixmatch",
                                           "predictions": "predictions.csv"}},
            "cluster": done, "anomaly": done}


def _study2_3(run: Path, classes: list[str]) -> None:
    panels = [{"alpha": a, "sizes": [100, 52, 48], "ratio": [2.0, 1.04, 0.96], "ari": ari}
              for a, ari in [(0.5, 0.91), (5.0, 0.4), (0.05, 0.6)]]
    _json(run / "cluster_ekm" / "metrics.json", {
        "panels": panels, "alpha": 0.5, "sizes": [100, 52, 48], "ari": 0.91,
        "class_counts": {c: n for c, n in zip(classes, [100, 50, 50])}, "search": {"target_ratio": [2, 1, 1]}})
    _json(run / "cluster_kmeans" / "metrics.json", {"sizes": [70, 70, 60], "ratio": [1.17, 1.17, 1.0], "ari": 0.55})
    _png(run / "cluster_ekm" / "figures" / "clusterings.png", "clusterings")
    _png(run / "cluster_ekm" / "figures" / "ratio_vs_alpha.png", "ratio")
    det = {"normal_loss": 0.001, "anomaly_loss": 0.004, "auroc": 0.93, "average_precision": 0.9, "threshold": 0.002,
           "false_alarm_rate": 0.05, "recall": 0.8, "threshold_rule": "quantile", "score": "mse"}
    _png(run / "anomaly" / "figures" / "roc_curve.png", "roc")
    _json(run / "anomaly" / "summary.json", {"noskip": det, "skip": {**det, "auroc": 0.8}, "normal": classes[0],
                                             "n_normal_test": 40, "n_anomalous": 40,
                                             "figures": ["anomaly/figures/roc_curve.png"]})


def write_run_folder(run: Path, *, model_json: bool = True,
                     classes: tuple[str, ...] = ("0", "1", "2")) -> Path:
    """A finished run folder with every file the report reads (numbers made up, figures tiny)."""
    run.mkdir(parents=True, exist_ok=True)
    _json(run / "stages.json", _stages())
    (run / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "preset": "tiny", "device": "cpu"}))
    _csv(run / "pretrain" / "metrics.csv", ["epoch", "val_mse"], [[0, 0.01], [1, 0.005]])
    for name in ("study1/supervised", "study1/fixmatch", "study1/course"):
        _csv(run / name / "metrics.csv", ["epoch", "val_acc"], [[0, 0.5], [1, 0.8], [2, 0.9]])
    if model_json:
        from aelab.models import build_model, preset_config
        from aelab.models.summary import describe_model

        info = describe_model(build_model(preset_config("tiny", in_channels=1, num_classes=len(classes))))
        _json(run / "study1" / "fixmatch" / "model.json", info)
    _csv(run / "study1" / "methods.csv", METHOD_COLUMNS, METHODS)
    _json(run / "study1" / "chosen.json", {"method": "fixmatch", "reason": "highest validation accuracy",
                                           "validation": "a stratified hold-out of the labelled images"})
    _study2_3(run, list(classes))
    return run


@pytest.fixture(scope="session")
def make_run_folder():
    """``make_run_folder(path, model_json=True, classes=(...))`` writes a fixture run."""
    return write_run_folder

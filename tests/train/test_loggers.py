"""Training metrics through Lightning's logger interface: metrics.csv always, dashboards on request."""

from __future__ import annotations

import csv
import sys

import pytest

from aelab.errors import AelabError
from aelab.train.loggers import RunMetricsLogger, extra_loggers


def test_metrics_csv_logger_writes_one_row_per_epoch_and_resumes(tmp_path):
    log = RunMetricsLogger(tmp_path)
    for epoch in range(3):
        log.log_metrics({"epoch": epoch, "val_acc": 0.5 + epoch / 10}, step=epoch)
    resumed = RunMetricsLogger(tmp_path, start_epoch=2)  # a run resumed after epoch 2 drops later rows
    resumed.log_metrics({"epoch": 2, "val_acc": 0.9}, step=2)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [(r["epoch"], r["val_acc"]) for r in rows] == [("0", "0.5"), ("1", "0.6"), ("2", "0.9")]


def test_only_rank_zero_writes(tmp_path):
    RunMetricsLogger(tmp_path, rank=1).log_metrics({"epoch": 0, "loss": 1.0})
    assert not (tmp_path / "metrics.csv").exists()


def test_csv_needs_no_extra_logger_and_unknown_kinds_are_refused(tmp_path):
    assert extra_loggers("csv", tmp_path) == []
    with pytest.raises(AelabError, match="unknown logger"):
        extra_loggers("wandb", tmp_path)


def test_a_dashboard_logger_without_its_package_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    with pytest.raises(AelabError, match="pip install mlflow"):
        extra_loggers("mlflow", tmp_path)


def _finetune(data, out, logger: str) -> list[dict]:
    from aelab.train import FinetuneConfig, finetune

    run = finetune(FinetuneConfig(data=str(data), preset="tiny", epochs=2, device="cpu", logger=logger, out=str(out)))
    return list(csv.DictReader(open(run / "metrics.csv")))


def test_tensorboard_logger_records_the_same_metrics_as_metrics_csv(demo_root, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = _finetune(demo_root, tmp_path / "run", "tensorboard")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    logged = [(e.step, e.value) for e in events.Scalars("val_ce")]
    assert logged == [(int(r["epoch"]), pytest.approx(float(r["val_ce"]), rel=1e-6)) for r in rows]


def test_mlflow_logger_records_the_same_metrics_as_metrics_csv(demo_root, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()  # a tracking store of the user's (here MLflow's file store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    rows = _finetune(demo_root, tmp_path / "run", "mlflow")
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("aelab").experiment_id])
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_ce"))
    assert history == [(int(r["epoch"]), pytest.approx(float(r["val_ce"]), rel=1e-6)) for r in rows]

"""Training metrics through Lightning's logger interface: metrics.csv always, dashboards on request."""

from __future__ import annotations

import csv

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


def test_a_dashboard_logger_without_its_package_is_one_line(tmp_path):
    pytest.importorskip("lightning")
    try:
        import tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed here")
    except ImportError:
        pass
    with pytest.raises(AelabError, match="pip install tensorboard"):
        extra_loggers("tensorboard", tmp_path)

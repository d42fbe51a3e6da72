"""Training with two processes (Lightning Fabric, CPU, gloo): one run folder, written once, resumable."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow


def _aelab(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "aelab.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_pretrain_and_finetune_with_two_processes(demo_root, tmp_path):
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    common = ["--preset", "tiny", "--device", "cpu", "--devices", "2"]
    r = _aelab("pretrain", "--data", str(demo_root), "--epochs", "2", "--out", str(pre), *common)
    assert r.returncode == 0, r.stderr[-2000:]
    # One run folder, written by rank 0 only: one row per epoch, one line per epoch on the console.
    assert [row["epoch"] for row in _rows(pre / "metrics.csv")] == ["0", "1"]
    assert r.stderr.count("[pretrain] epoch 2/2") == 1
    r = _aelab("finetune", "--data", str(demo_root), "--init_from", str(pre), "--method", "course",
               "--epochs", "2", "--out", str(ft), *common)
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = torch.load(ft / "best.ckpt", weights_only=True)
    assert ckpt["classes"] == [str(d) for d in range(10)] and 0.0 <= ckpt["metrics"]["val_acc"] <= 1.0


def test_resume_under_two_processes_continues_the_same_run(demo_root, tmp_path):
    run = tmp_path / "run"
    common = ["--preset", "tiny", "--device", "cpu", "--devices", "2"]
    r = _aelab("finetune", "--data", str(demo_root), "--epochs", "1", "--patience", "5", "--out", str(run), *common)
    assert r.returncode == 0, r.stderr[-2000:]
    # Raise the epoch budget in the saved settings, as a user continuing a run would.
    cfg = (run / "config.yaml").read_text().replace("epochs: 1", "epochs: 2")
    (run / "config.yaml").write_text(cfg)
    r = _aelab("finetune", "--resume", str(run), *common)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming" in r.stderr
    assert [row["epoch"] for row in _rows(run / "metrics.csv")] == ["0", "1"]
    assert torch.load(run / "last.ckpt", weights_only=True)["epoch"] == 1


def test_stages_that_never_decode_train_several_steps_with_two_processes(demo_root, tmp_path):
    """VICReg and supervised fine-tuning leave the decoder unused: DDP must not wait for its gradients (it did,
    and failed at the second step of an epoch). VICReg's variance and covariance see both processes' rows."""
    common = ["--preset", "tiny", "--device", "cpu", "--devices", "2", "--batch_size", "8", "--epochs", "1"]
    r = _aelab("pretrain", "--data", str(demo_root), "--objective", "vicreg", "--out", str(tmp_path / "v"), *common)
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(_rows(tmp_path / "v" / "metrics.csv")[0]["train_variance"]) > 0
    r = _aelab("finetune", "--data", str(demo_root), "--init_from", str(tmp_path / "v"), "--out", str(tmp_path / "f"),
               *common)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _rows(tmp_path / "f" / "metrics.csv")[0]["val_acc"]

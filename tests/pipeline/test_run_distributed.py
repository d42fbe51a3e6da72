"""`aelab run --devices 2`: the training stages in two CPU processes (gloo), one run folder, resumable."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _run(out, data, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    args = ["run", "--data", str(data), "--out", str(out), "--preset", "tiny",
            "--methods", "supervised,fixmatch,label-spreading", "--finetune_epochs", "2", "--fixmatch_epochs", "1",
            "--anomaly.epochs", "1", "--device", "cpu", "--devices", "2", *extra]
    return subprocess.run([sys.executable, "-m", "aelab.cli.main", *args], capture_output=True, text=True, timeout=400,
                          env=env)


def test_run_with_two_processes_writes_one_run_and_resumes(demo_root, tmp_path):
    out = tmp_path / "run"
    r = _run(out, demo_root)
    assert r.returncode == 0, r.stderr[-3000:]
    stages = json.loads((out / "stages.json").read_text())
    assert stages["_meta"]["processes"] == 2
    assert {k: v["status"] for k, v in stages.items() if not k.startswith("_")} == dict.fromkeys(
        ["data", "supervised", "fixmatch", "label-spreading", "predict", "cluster", "anomaly"], "done")
    # Rank 0 alone wrote: one metrics row per epoch, one console line per epoch, one predictions file.
    assert (out / "supervised" / "metrics.csv").read_text().count("\n") == 1 + 2
    assert r.stderr.count("[finetune] epoch 2/2") == 1
    pred = (out / "predictions.csv").read_text().splitlines()
    assert pred[0] == "id,label" and len(pred) == 1 + 50
    assert (out / "report.html").is_file() and (out / "report.pdf").is_file()
    assert "2 processes" in (out / "report.md").read_text()  # the report says how the run was trained
    # The same command again resumes: every stage is already done, nothing is trained again.
    ckpt = out / "fixmatch" / "best.ckpt"
    before = ckpt.stat().st_mtime_ns
    r = _run(out, demo_root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("already done") == 7 and ckpt.stat().st_mtime_ns == before

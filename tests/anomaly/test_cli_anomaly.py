"""End-to-end CPU runs of ``aelab anomaly fit``, ``score`` and ``evaluate`` on the demo data."""

from __future__ import annotations

import contextlib
import json
import shutil

import numpy as np
import pytest
import torch

from aelab.cli import main as cli_main
from aelab.runs import read_csv_rows

@contextlib.contextmanager
def registered():
    """Run the verbs on one torch thread (2 shared CI cores)."""
    n = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        torch.set_num_threads(1)
        try:
            yield mp
        finally:
            torch.set_num_threads(n)


def run(*argv: str) -> int:
    with registered():
        return cli_main.main(list(argv))


@pytest.fixture(scope="module")
def fit_run(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("anomaly_cli") / "fit"
    with registered() as mp:
        mp.setenv("AELAB_CACHE_DIR", str(tmp_path_factory.mktemp("cli_cache")))
        rc = cli_main.main(["anomaly", "fit", "--data", str(demo_root), "--preset", "tiny", "--depth", "4",
                            "--channels", "1", "--epochs", "3", "--batch_size", "8", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    return out


def test_fit_writes_the_run_folder(fit_run):
    for name in ("config.yaml", "metrics.csv", "best.ckpt", "last.ckpt", "detector.ckpt", "threshold.json", "split.csv"):
        assert (fit_run / name).is_file(), name
    th = json.loads((fit_run / "threshold.json").read_text())
    assert th["rule"] == "conformal" and th["value"] > 0 and th["n_train"] + th["n_held_out"] == 20
    split = read_csv_rows(fit_run / "split.csv")
    assert list(split[0]) == ["filename", "split"] and sum(r["split"] == "held_out" for r in split) == th["n_held_out"]
    assert len(read_csv_rows(fit_run / "metrics.csv")) >= 1


def test_score_writes_sorted_csv_and_figure(fit_run, demo_root, tmp_path):
    out = tmp_path / "score"
    assert run("anomaly", "score", "--model", str(fit_run), "--images", str(demo_root / "anomaly" / "anomalous"),
               "--out", str(out), "--top", "4") == 0
    text = (out / "anomaly_scores.csv").read_text()
    assert text.splitlines()[0] == "filename,score,normalized_score,is_anomaly"
    rows = read_csv_rows(out / "anomaly_scores.csv")
    assert len(rows) == 20 and {r["filename"] for r in rows} == {f"{i}.png" for i in range(20)}
    scores = np.array([float(r["score"]) for r in rows])
    assert np.all(np.diff(scores) <= 0)  # most anomalous first
    threshold = json.loads((fit_run / "threshold.json").read_text())["value"]
    for r in rows:
        s, z = float(r["score"]), float(r["normalized_score"])
        assert z == pytest.approx(s / (s + threshold)) and int(r["is_anomaly"]) == int(s > threshold)
    assert (out / "figures" / "most_anomalous.png").stat().st_size > 0


def test_evaluate_writes_metrics_and_figures(fit_run, demo_root, tmp_path):
    out = tmp_path / "eval"
    assert run("anomaly", "evaluate", "--model", str(fit_run), "--data", str(demo_root), "--out", str(out)) == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in ("auroc", "average_precision", "f1", "precision", "recall", "false_alarm_rate", "threshold",
                "normal_loss", "anomaly_loss", "n_normal", "n_anomalous"):
        assert key in m, key
    th = json.loads((fit_run / "threshold.json").read_text())
    # Only normal images the model was not trained on are evaluated: the held-out ones.
    assert m["n_normal"] == th["n_held_out"] and m["n_normal_excluded_trained"] == th["n_train"]
    assert m["n_anomalous"] == 20 and 0 <= m["auroc"] <= 1 and m["threshold"] == pytest.approx(th["value"])
    for name in ("score_histogram.png", "roc_curve.png", "cases_normal.png", "cases_anomalous.png"):
        assert (out / "figures" / name).stat().st_size > 0, name
    assert list(read_csv_rows(out / "scores.csv")[0]) == ["filename", "group", "defect", "score", "normalized_score", "is_anomaly"]


def test_bad_files_are_skipped_and_listed(fit_run, demo_root, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(demo_root / "anomaly" / "anomalous", folder)
    (folder / "99.png").write_bytes(b"\x89PNG broken")
    with pytest.warns(UserWarning, match="skipped 1"):
        assert run("anomaly", "score", "--model", str(fit_run), "--images", str(folder), "--out", str(tmp_path / "s")) == 0
    assert len(read_csv_rows(tmp_path / "s" / "anomaly_scores.csv")) == 20
    assert [r["filename"] for r in read_csv_rows(tmp_path / "s" / "skipped.csv")] == [str(folder / "99.png")]
    assert run("anomaly", "score", "--model", str(fit_run), "--images", str(folder), "--strict", "true",
               "--out", str(tmp_path / "s2")) == 2


@pytest.mark.parametrize("argv, message", [
    (["anomaly", "score", "--model", "{tmp}/missing", "--images", "{tmp}"], "no anomaly detector"),
    (["anomaly", "score", "--model", "{fit}/best.ckpt", "--images", "{tmp}"], "not an anomaly detector"),
    (["anomaly", "fit", "--data", "{tmp}/root", "--preset", "tiny"], "anomaly/normal"),
    (["anomaly", "fit", "--normal", "{tmp}/nowhere", "--preset", "tiny"], "not found"),
    (["anomaly", "evaluate", "--model", "{fit}", "--normal", "{demo}/anomaly/normal"], "anomalous"),
])
def test_bad_input_gives_one_line_error(argv, message, fit_run, demo_root, tmp_path, capsys):
    (tmp_path / "root" / "test").mkdir(parents=True)  # a data root without anomaly/
    shutil.copy(demo_root / "anomaly" / "normal" / "0.png", tmp_path / "root" / "test" / "0.png")
    argv = [a.format(tmp=tmp_path, fit=fit_run, demo=demo_root) for a in argv]
    assert run(*argv, "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("aelab: error:") and message in err[-1]

"""The anomaly workflows (`aelab.anomaly.study`), through the CLI and from Python, on demo and MVTec-layout data."""

from __future__ import annotations

import contextlib
import json
import shutil

import numpy as np
import pytest
import torch

from aelab.cli import main as cli_main
from aelab.runs import read_csv_rows
from tests.processes import run_processes


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
                            "--channels", "1", "--epochs", "3", "--batch_size", "8", "--device", "cpu",
                            "--out", str(out)])
    assert rc == 0
    return out


def test_fit_writes_the_run_folder(fit_run):
    for name in ("config.yaml", "metrics.csv", "best.ckpt", "last.ckpt", "detector.ckpt", "threshold.json",
                 "split.csv"):
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
    header = ["filename", "group", "defect", "score", "normalized_score", "is_anomaly"]
    assert list(read_csv_rows(out / "scores.csv")[0]) == header


def test_bad_files_are_skipped_and_listed(fit_run, demo_root, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(demo_root / "anomaly" / "anomalous", folder)
    (folder / "99.png").write_bytes(b"\x89PNG broken")
    with pytest.warns(UserWarning, match="skipped 1"):
        assert run("anomaly", "score", "--model", str(fit_run), "--images", str(folder),
                   "--out", str(tmp_path / "s")) == 0
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


def test_cli_and_python_defaults_are_identical():
    """One default per option: `aelab anomaly fit` builds the same detector as ReconstructionDetector()."""
    import dataclasses
    import inspect

    from aelab.anomaly import DETECTOR_KEYS, AnomalyFitConfig, ReconstructionDetector
    from aelab.cli.main import build_parser

    params = inspect.signature(ReconstructionDetector.__init__).parameters
    sig = {n: p.default for n, p in params.items() if n != "self"}
    fields = {f.name: f.default for f in dataclasses.fields(AnomalyFitConfig)}
    assert set(DETECTOR_KEYS) == set(sig) - {"random_state"} and set(DETECTOR_KEYS) <= set(fields)
    assert {k: fields[k] for k in DETECTOR_KEYS} == {k: sig[k] for k in DETECTOR_KEYS}
    parsed = build_parser().parse_args(["anomaly", "fit"])["anomaly"]["fit"]
    # what the command line really gets
    assert {k: parsed[k] for k in DETECTOR_KEYS} == {k: sig[k] for k in DETECTOR_KEYS}


@pytest.fixture(scope="module")
def mvtec_root(tmp_path_factory):
    from aelab.data.mvtec import make_mvtec_like

    return make_mvtec_like(tmp_path_factory.mktemp("mvtec") / "digits", n_train=40, n_test_good=6, n_per_defect=3)


@pytest.fixture(scope="module")
def mvtec_fit(mvtec_root, tmp_path_factory):
    from aelab.anomaly import AnomalyFitConfig, anomaly_fit

    with registered():
        return anomaly_fit(AnomalyFitConfig(data=str(mvtec_root), preset="tiny", channels=1, epochs=2, batch_size=8,
                                            device="cpu", out=str(tmp_path_factory.mktemp("mvtec_fit") / "fit")))


def test_mvtec_layout_fit_reads_train_good_only(mvtec_fit, mvtec_root):
    det = mvtec_fit.detector
    assert mvtec_fit.normal_dir == mvtec_root / "train" / "good" and len(det.train_files_) + len(det.val_files_) == 40
    assert mvtec_fit.checkpoint.is_file() and mvtec_fit.threshold["rule"] == "conformal"
    assert all("/train/good/" in f for f in det.train_files_)


def test_mvtec_layout_evaluate_reports_pixel_and_per_defect_metrics(mvtec_fit, mvtec_root, tmp_path):
    from sklearn.metrics import roc_auc_score

    from aelab.anomaly import AnomalyEvaluateConfig, anomaly_evaluate
    from aelab.data.mvtec import load_masks, read_mvtec

    with registered():
        ev = anomaly_evaluate(AnomalyEvaluateConfig(data=str(mvtec_root), out=str(tmp_path / "ev")),
                              detector=mvtec_fit.detector)
    m = ev.metrics
    assert (m.n_normal, m.n_anomalous) == (6, 9) and set(m.per_defect_auroc) == {"blob", "missing", "scratch"}
    # Pixel AUROC: scikit-learn's on the detector's maps against the masks, flattened.
    data = read_mvtec(mvtec_root)
    maps = mvtec_fit.detector.anomaly_map(data.test)
    assert m.pixel_auroc == pytest.approx(roc_auc_score(load_masks(data.masks, 32).ravel(), maps.ravel()))
    assert 0 <= m.aupro <= 1 and m.n_regions >= 9
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["pixel_auroc"] == m.pixel_auroc and saved["layout"] == "mvtec"
    rows = read_csv_rows(tmp_path / "ev" / "scores.csv")
    assert {r["defect"] for r in rows} == {"", "blob", "missing", "scratch"} and len(rows) == 15
    assert set(ev.figures) == {"score_histogram", "roc_curve", "cases_normal", "cases_anomalous"}


def test_cli_evaluate_and_score_on_mvtec_layout_write_maps(mvtec_fit, mvtec_root, tmp_path):
    assert run("anomaly", "evaluate", "--model", str(mvtec_fit.run_dir), "--data", str(mvtec_root),
               "--out", str(tmp_path / "e")) == 0
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["aupro"] is not None
    assert run("anomaly", "score", "--model", str(mvtec_fit.run_dir), "--images", str(mvtec_root / "test"),
               "--recursive", "--out", str(tmp_path / "s")) == 0
    names = [r["filename"] for r in read_csv_rows(tmp_path / "s" / "anomaly_scores.csv")]
    assert len(names) == 15 and "scratch/000.png" in names
    amap = np.load(tmp_path / "s" / "maps" / "scratch" / "000.npy")
    assert amap.shape == (32, 32) and amap.dtype == np.float32
    assert (tmp_path / "s" / "maps" / "scratch" / "000.png").is_file()
    det_map = mvtec_fit.detector.anomaly_map([mvtec_root / "test" / "scratch" / "000.png"])[0]
    np.testing.assert_allclose(amap, det_map, rtol=1e-5, atol=1e-7)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_process_worker(rank, port, model, root, out):
    """One of two processes as torchrun would start them: Fabric joins them (gloo) instead of re-running."""
    import os

    from aelab.anomaly import AnomalyEvaluateConfig, AnomalyScoreConfig, anomaly_evaluate, anomaly_score

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    common = dict(model=model, device="cpu", devices=2, batch_size=4)
    anomaly_score(AnomalyScoreConfig(images=f"{root}/test", recursive=True, out=f"{out}/s", **common))
    anomaly_evaluate(AnomalyEvaluateConfig(data=root, out=f"{out}/e", **common))


@pytest.mark.slow
def test_score_and_evaluate_with_two_processes_equal_one_process_byte_for_byte(mvtec_fit, mvtec_root, tmp_path):
    """15 test images in batches of 4: rank 0 scores 8, rank 1 the last 7; maps, scores and metrics gathered in
    file order."""
    from aelab.anomaly import AnomalyEvaluateConfig, AnomalyScoreConfig, anomaly_evaluate, anomaly_score

    model, root = str(mvtec_fit.run_dir), str(mvtec_root)
    with registered():  # one thread, as each of the two processes
        anomaly_score(AnomalyScoreConfig(model=model, images=f"{root}/test", recursive=True, device="cpu", batch_size=4,
                                         out=str(tmp_path / "one" / "s")))
        anomaly_evaluate(AnomalyEvaluateConfig(model=model, data=root, device="cpu", batch_size=4,
                                               out=str(tmp_path / "one" / "e")))
    run_processes(_two_process_worker, (_free_port(), model, root, str(tmp_path / "two")), "scoring")
    one, two = tmp_path / "one", tmp_path / "two"
    listing = lambda base: sorted(str(p.relative_to(base)) for p in base.rglob("*")  # noqa: E731
                                  if p.is_file() and p.name not in (".aelab.lock", "config.yaml"))
    files = listing(one)
    assert files == listing(two)
    assert "s/maps/scratch/000.npy" in files and "e/metrics.json" in files
    for name in files:
        if name.endswith((".csv", ".json", ".npy")):
            assert (two / name).read_bytes() == (one / name).read_bytes(), name
    # maps gathered for pixel AUROC
    assert json.loads((two / "e" / "metrics.json").read_text())["pixel_auroc"] is not None


@pytest.mark.slow
def test_anomaly_fit_with_two_processes_writes_one_run(demo_root, tmp_path):
    """`aelab anomaly fit --devices 2` (two CPU processes, gloo): one run folder, written once by rank 0."""
    import csv
    import os
    import subprocess
    import sys

    out = tmp_path / "fit"
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, "-m", "aelab.cli.main", "anomaly", "fit",
                        "--normal", str(demo_root / "anomaly" / "normal"), "--preset", "tiny", "--epochs", "2",
                        "--device", "cpu", "--devices", "2", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [row["epoch"] for row in csv.DictReader(open(out / "metrics.csv"))] == ["0", "1"]
    assert r.stderr.count("[anomaly] threshold") == 1
    from aelab.anomaly import ReconstructionDetector

    det = ReconstructionDetector.load(out / "detector.ckpt")
    assert np.isfinite(det.threshold_) and len(det.decision_function(str(demo_root / "anomaly" / "anomalous"))) == 20

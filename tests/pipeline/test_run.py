"""`aelab run` end to end on a tiny demo, resume after an interrupted stage, `aelab report`."""

from __future__ import annotations

import json
import shutil

import pytest

import aelab.pipeline as pipeline
from aelab.anomaly import AnomalyStudySettings, GeometricSettings
from aelab.cli.main import main
from aelab.pipeline import RunConfig, run_all

TINY = dict(preset="tiny", pretrain_epochs=1, finetune_epochs=2, fixmatch_epochs=1, vicreg_epochs=1,
            anomaly=AnomalyStudySettings(epochs=2, geometric=GeometricSettings(epochs=1, width=4)),
            demo_unlabelled=150, demo_labelled_per_class=6, demo_test=60, device="cpu", kmeans_features_centroids=32)
METHODS = ["supervised", "course", "course-noaug", "fixmatch", "vicreg", "label-spreading", "kmeans-features",
           "ensemble"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    cfg = RunConfig(out=str(out), **TINY)

    def interrupted(ctx):
        raise KeyboardInterrupt

    real = pipeline.stages_for
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "stages_for", lambda c: [(n, interrupted if n == "cluster" else f) for n, f in real(c)])
        with pytest.raises(KeyboardInterrupt):
            run_all(cfg)
    done = json.loads((out / "stages.json").read_text())
    assert done["pretrain"]["status"] == "done" and "cluster" not in done
    kept = [out / "pretrain" / "best.ckpt", out / "course" / "best.ckpt", out / "fixmatch" / "best.ckpt",
            out / "predictions.csv"]
    mtimes = [p.stat().st_mtime_ns for p in kept]
    run_all(cfg)  # resumes: the finished stages are not run again
    assert [p.stat().st_mtime_ns for p in kept] == mtimes
    assert json.loads((out / "stages.json").read_text())["cluster"]["status"] == "done"
    return out


def _report(run_dir):
    return json.loads((run_dir / "report.json").read_text())


def _section(report, sid):
    return next(s for s in report["sections"] if s["id"] == sid)


def _table(section):
    return next(b for b in section["blocks"] if b["type"] == "table")


def test_report_files_and_sections(run_dir):
    from pypdf import PdfReader

    for name in ("report.html", "report.pdf", "report.md", "report.json", "predictions.csv"):
        assert (run_dir / name).is_file(), name
    report = _report(run_dir)
    assert [s["id"] for s in report["sections"]] == ["1a", "1b", "2a", "2b", "3", "A"]
    assert [i["section"] for i in report["headline"][0]["items"]][-2:] == ["2b", "3"]
    stages = json.loads((run_dir / "stages.json").read_text())
    assert all(stages[s]["status"] == "done" for s in ("pretrain", *METHODS, "predict", "cluster", "anomaly")), stages
    assert all(s["skipped_reason"] is None for s in report["sections"])
    pdf = PdfReader(run_dir / "report.pdf")
    assert len(pdf.pages) >= 3
    assert sum(len(p.images) for p in pdf.pages) >= 4
    html = (run_dir / "report.html").read_text()
    assert 'src="http' not in html and html.count("data:image/png;base64") >= 4
    # predictions.csv is the file of the submitted method: the benchmarks' first whose validation accuracy the
    # best one's does not beat beyond the hold-out's noise (aelab.train.study.choose).
    from aelab.train.study import MethodResult, choose

    pred = (run_dir / "predictions.csv").read_text()
    chosen = stages["predict"]["result"]["chosen"]
    images = json.loads((run_dir / "study1" / "chosen.json").read_text())["settings"]["images"]
    assert chosen == choose([MethodResult(**stages[m]["result"]) for m in METHODS], images)[0].method
    folder = run_dir / chosen / ("" if chosen in ("label-spreading", "kmeans-features", "ensemble") else "predict")
    assert pred == (folder / "predictions.csv").read_text()
    assert pred.splitlines()[0] == "id,label" and len(pred.splitlines()) == 1 + TINY["demo_test"]


def test_report_numbers_equal_the_runs_files(run_dir):
    report = _report(run_dir)
    stages = json.loads((run_dir / "stages.json").read_text())
    import csv

    # Table 1b: one row per method, the numbers of the run's own files.
    with open(run_dir / "study1" / "methods.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["method", "description", "uses_unlabelled", "labels_per_class", "val_acc", "n_val",
                              "test_acc", "seconds", "run", "note"]
    assert [r["method"] for r in table] == METHODS
    for r in table:
        result = stages[r["method"]]["result"]
        assert float(r["val_acc"]) == result["val_acc"] and float(r["test_acc"]) == result["test_acc"]
        if r["run"]:  # the best checkpoint's validation accuracy is the row's
            accs = [float(m["val_acc"]) for m in csv.DictReader(open(run_dir / r["run"] / "metrics.csv"))]
            assert max(accs) == result["val_acc"]
    rows = _table(_section(report, "1b"))["rows"]
    shown = {row[0]: row for row in rows}
    assert all(shown[m][6] == stages[m]["result"]["test_acc"] for m in METHODS)
    ekm = json.loads((run_dir / "cluster_ekm" / "metrics.json").read_text())
    km = json.loads((run_dir / "cluster_kmeans" / "metrics.json").read_text())
    rows2 = _table(_section(report, "2b"))["rows"]
    assert rows2[0][3] == ekm["panels"][0]["ari"] == ekm["ari"]
    assert next(r for r in rows2 if r[0] == "k-means")[1] == ":".join(map(str, km["sizes"]))
    summary = json.loads((run_dir / "anomaly" / "summary.json").read_text())
    rows3 = _table(_section(report, "3"))["rows"]
    noskip = summary["noskip"]
    assert rows3[0][1:4] == [noskip["normal_loss"], noskip["anomaly_loss"], noskip["auroc"]]
    # The geometric detector's row: no reconstruction, so no losses; the demo digits are grayscale:
    # reconstruction is the default.
    assert rows3[2][0].startswith("geometric") and rows3[2][1:4] == [None, None, summary["geometric"]["auroc"]]
    assert summary["default_method"] == "reconstruction"
    assert summary["geometric"]["score"] == "dirichlet" and "the Dirichlet normality score" in (
        run_dir / "report.md").read_text()  # the caption says in words what the geometric detector scored
    a, b = summary["noskip"]["auroc"], summary["geometric"]["auroc"]
    assert summary["better"] == ("tie" if a == b else "noskip" if a > b else "geometric")
    # The model table comes from the model.json a training stage wrote (older runs: not recorded).
    model_json = run_dir / stages["predict"]["result"]["model"] / "model.json"
    text = _section(report, "1a")["blocks"][0]["text"]
    if model_json.is_file():
        assert f"{json.loads(model_json.read_text())['parameters']:,} parameters" in text
    else:
        assert text.startswith("Architecture not recorded")


def test_aelab_report_rebuilds_identical_content(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    before = (copy / "report.json").read_text()
    (copy / "report.json").unlink()
    assert main(["report", str(copy)]) == 0
    assert (copy / "report.json").read_text() == before.replace(str(run_dir), str(copy))


def test_missing_anomaly_folder_skips_that_section_with_a_reason(run_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(run_dir / "demo_data", data)
    shutil.rmtree(data / "anomaly")
    out = tmp_path / "r2"
    assert main(["run", "--data", str(data), "--out", str(out), "--preset", "tiny",
                 "--methods", "supervised,label-spreading",
                 "--finetune_epochs", "1", "--device", "cpu"]) == 0
    section = _section(_report(out), "3")
    assert section["skipped_reason"] and "anomaly" in section["skipped_reason"]
    assert "Skipped" in (out / "report.md").read_text()
    assert _section(_report(out), "1b")["skipped_reason"] is None


def test_changed_settings_on_an_existing_run_folder_are_refused(run_dir, capsys):
    assert main(["run", "--out", str(run_dir), "--preset", "small"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_a_run_folder_from_before_a_default_changed_names_the_flag_that_resumes_it(run_dir, tmp_path):
    """The geometric detector's score was ``transform`` before the Dirichlet score became the default: such a
    run folder is refused with the nested flag that resumes it, and that flag resumes it without running again."""
    import yaml

    from aelab.errors import AelabError

    copy = tmp_path / "before_dirichlet"
    shutil.copytree(run_dir, copy)
    saved = yaml.safe_load((copy / "config.yaml").read_text())
    assert saved["anomaly"]["geometric"]["score"] == "dirichlet"
    saved["anomaly"]["geometric"]["score"] = "transform"
    (copy / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    expected = (r"other settings \(anomaly.geometric.score\); use another --out or --force to start over; "
                r"--anomaly.geometric.score transform resumes it as it was run$")
    with pytest.raises(AelabError, match=expected):
        run_all(RunConfig(out=str(copy), **TINY))
    before = (copy / "anomaly" / "summary.json").stat().st_mtime_ns
    old = dict(TINY, anomaly=AnomalyStudySettings(epochs=2, geometric=GeometricSettings(epochs=1, width=4,
                                                                                        score="transform")))
    run_all(RunConfig(out=str(copy), **old))
    assert (copy / "anomaly" / "summary.json").stat().st_mtime_ns == before  # nothing ran again


def test_a_run_folder_from_before_an_option_existed_resumes_with_its_old_value(run_dir, tmp_path):
    """A config.yaml written before the k-means features' pooling options (and the first layer's option) lacks them:
    the default settings are refused with the flags that resume it, and those flags (the pooling the run used)
    resume it; a missing ``stem_kind`` reads as whiten, the first layer of every run before the option."""
    import yaml

    from aelab.errors import AelabError

    copy = tmp_path / "old"
    shutil.copytree(run_dir, copy)
    saved = yaml.safe_load((copy / "config.yaml").read_text())
    for key in ("kmeans_features_pooling", "kmeans_features_grid", "stem_kind"):  # stem_kind: whiten, as before it
        del saved[key]
    (copy / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    with pytest.raises(AelabError, match="--kmeans_features_pooling sum --kmeans_features_grid 2 resumes it"):
        run_all(RunConfig(out=str(copy), **TINY))
    with pytest.raises(AelabError, match=r"other settings \(kmeans_features_grid\)"):  # an old run's pooling, not grid
        run_all(RunConfig(out=str(copy), kmeans_features_pooling="sum", **TINY))
    before = (copy / "kmeans-features" / "predictions.csv").stat().st_mtime_ns
    run_all(RunConfig(out=str(copy), kmeans_features_pooling="sum", kmeans_features_grid=2, **TINY))
    assert (copy / "kmeans-features" / "predictions.csv").stat().st_mtime_ns == before  # nothing ran again
    assert yaml.safe_load((copy / "config.yaml").read_text())["kmeans_features_pooling"] == "sum"

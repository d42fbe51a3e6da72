"""Study 3 of `aelab run` (`aelab.anomaly.run_study`) on data in the MVTec AD layout: under ROOT/anomaly, and
ROOT itself."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from aelab.train.options import Engine


def _study(data: Path, run_dir: Path):
    """Study 3 as ``aelab run`` calls it, with tiny detectors."""
    from aelab.anomaly import AnomalyStudySettings, GeometricSettings, run_anomaly_study
    from aelab.layout import RunLayout

    cfg = SimpleNamespace(preset="tiny", channels=1, image_size=None, device="cpu", seed=0,
                          anomaly=AnomalyStudySettings(epochs=2, geometric=GeometricSettings(epochs=1, width=4)))
    return run_anomaly_study(cfg, data, RunLayout(run_dir), Engine(seed=0, device="cpu", precision="32-true"))


def test_mvtec_layout_under_anomaly_gives_pixel_metrics_and_run_relative_figures(tmp_path):
    from aelab.data.mvtec import make_mvtec_like

    make_mvtec_like(tmp_path / "data" / "anomaly", n_train=30, n_test_good=6, n_per_defect=2)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = _study(tmp_path / "data", tmp_path / "run")
    finally:
        torch.set_num_threads(n)
    summary = json.loads(Path(out.summary).read_text())
    assert out.auroc == summary["noskip"]["auroc"] and out.auroc_geometric == summary["geometric"]["auroc"]
    assert summary["normal"].startswith("MVTec AD layout")
    assert summary["n_normal_test"] == 6 and summary["n_anomalous"] == 6
    for variant in ("noskip", "skip"):
        m = summary[variant]
        assert 0 <= m["pixel_auroc"] <= 1 and 0 <= m["aupro"] <= 1
        assert set(m["per_defect_auroc"]) == {"blob", "missing", "scratch"}
        assert m["threshold_rule"] == "conformal" and m["expected_false_alarm_rate"] is not None
    assert summary["figures"] and all((tmp_path / "run" / f).is_file() for f in summary["figures"])
    # The geometric detector is evaluated on the same images (image scores only: no pixel metrics, no losses).
    g = summary["geometric"]
    assert g["method"] == "geometric" and 0 <= g["auroc"] <= 1 and g["pixel_auroc"] is None and g["normal_loss"] is None
    assert (g["n_normal"], g["n_anomalous"]) == (6, 6) and summary["default_method"] == "reconstruction"
    better = max(("noskip", "geometric"), key=lambda v: summary[v]["auroc"])
    assert summary["better"] == better or summary["better"] == "tie"


def test_no_anomaly_data_is_a_skip_with_a_reason(tmp_path):
    from aelab.errors import StageSkipped

    (tmp_path / "data" / "test").mkdir(parents=True)
    with pytest.raises(StageSkipped, match="no anomaly folder"):
        _study(tmp_path / "data", tmp_path / "run")


def test_aelab_run_on_an_mvtec_root_runs_study_3_with_pixel_metrics(tmp_path):
    """`aelab run --data ROOT` with ROOT itself in the MVTec AD layout (README, "Your own data")."""
    from aelab.anomaly import AnomalyStudySettings, GeometricSettings
    from aelab.data.mvtec import make_mvtec_like
    from aelab.pipeline import RunConfig, run_all

    root = make_mvtec_like(tmp_path / "bottle", n_train=30, n_test_good=6, n_per_defect=2)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = run_all(RunConfig(data=str(root), out=str(tmp_path / "run"), preset="tiny", channels=1,
                                methods="supervised", device="cpu",
                                anomaly=AnomalyStudySettings(epochs=2, geometric=GeometricSettings(epochs=1, width=4))))
    finally:
        torch.set_num_threads(n)
    stages = json.loads((run / "stages.json").read_text())
    assert stages["anomaly"]["status"] == "done", stages["anomaly"]
    summary = json.loads((run / "anomaly" / "summary.json").read_text())
    assert summary["normal"] == "MVTec AD layout bottle/train/good" and summary["data_dir"] == str(root)
    assert (summary["n_normal_test"], summary["n_anomalous"]) == (6, 6)
    assert set(summary["noskip"]["per_defect_auroc"]) == {"blob", "missing", "scratch"}
    assert 0 <= summary["noskip"]["aupro"] <= 1
    report = json.loads((run / "report.json").read_text())
    section3 = next(s for s in report["sections"] if s["id"] == "3")
    assert section3["skipped_reason"] is None
    # Study 1 has no labelled images here: it does not run, and the run still ends with its report.
    assert stages["supervised"]["status"] == "skipped" and "no dev/labelled folder" in stages["supervised"]["reason"]
    assert (run / "report.html").is_file()

"""aelab.results: the typed stage results write and read the run folder's files through RunLayout."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

from aelab.layout import RunLayout
from aelab.results import (
    AnomalyStudyResult,
    AnomalySummary,
    ChosenMethod,
    ClassificationResult,
    ClusterStudyResult,
    MethodResult,
    MethodRow,
    RunStages,
    StageRecord,
)


def test_results_import_without_torch_or_training_code():
    code = ("import sys, aelab.results, aelab.layout\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('aelab.train', 'aelab.models', "
            "'aelab.cluster'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_stages_json_round_trip_keeps_the_format(tmp_path):
    lay = RunLayout(tmp_path)
    stages = RunStages({"_meta": {"aelab_version": "0.1.0"}})
    stages["data"] = StageRecord("done", None, 0.5, {"data": "d", "demo": True}).to_dict()
    stages["cluster"] = StageRecord("skipped", "no model", 0.0).to_dict()
    stages.write(lay)
    raw = json.loads(lay.stages.read_text())
    assert raw["data"] == {"status": "done", "reason": None, "seconds": 0.5, "result": {"data": "d", "demo": True}}
    back = RunStages.read(lay)
    assert back == raw and back.names() == ["data", "cluster"] and back.meta == {"aelab_version": "0.1.0"}
    assert back.skipped("data") is None and back.skipped("cluster") == "no model"
    assert back.skipped("anomaly") == "this stage has not run yet" and back.result("cluster") == {}
    assert back.total_seconds() == 0.5


def test_cluster_result_keeps_the_method_and_method_ari_keys():
    res = ClusterStudyResult("embed", ["2", "5", "8"], 200, {"ekm": "cluster_ekm"}, {"ekm": 0.9})
    flat = res.to_dict()
    assert flat == {"embed": "embed", "classes": ["2", "5", "8"], "n_embedded": 200, "ekm": "cluster_ekm",
                    "ekm_ari": 0.9}
    assert ClusterStudyResult.from_dict(flat) == res


def test_methods_csv_and_chosen_json_round_trip(tmp_path):
    lay = RunLayout(tmp_path)
    rows = [MethodRow("supervised", "sup", False, "20", 0.9, 50, None, 1.5, "supervised"),
            MethodRow("fixmatch", "semi", True, note="not run: no unlabelled folder")]
    MethodRow.write(lay, rows)
    with open(lay.methods_csv, newline="") as fh:
        raw = list(csv.reader(fh))
    assert raw[0] == ["method", "description", "uses_unlabelled", "labels_per_class", "val_acc", "n_val", "test_acc",
                      "seconds", "run", "note"]
    assert raw[1] == ["supervised", "sup", "False", "20", "0.9", "50", "", "1.5", "supervised", ""]
    back = MethodRow.read(lay)
    assert back[0].labels_per_class == 20 and back[0].test_acc is None and back[1].note.startswith("not run")
    ChosenMethod("supervised", "best", "hold-out", 0.9, 50, {"images": "grey"}).write(lay)
    assert list(json.loads(lay.chosen_json.read_text())) == ["method", "reason", "val_acc", "n_val", "validation",
                                                             "settings"]
    assert ChosenMethod.read(lay).settings == {"images": "grey"}
    ChosenMethod(None, "no method ran", "hold-out").write(lay)
    assert "val_acc" not in json.loads(lay.chosen_json.read_text())
    assert MethodRow.read(RunLayout(tmp_path / "none")) is None


def test_stage_results_round_trip():
    row = MethodResult("course", 0.8, 50, "20", 0.79, 3.0, "course", "course/predict/predictions.csv")
    assert MethodResult.from_dict(row.to_dict()) == row
    pred = ClassificationResult("course", "why", model="course")
    assert "predictions" not in pred.to_dict() and ClassificationResult.from_dict(pred.to_dict()) == pred


def test_anomaly_summary_writes_what_the_report_reads(tmp_path):
    lay = RunLayout(tmp_path)
    m = {"auroc": 0.9, "n_normal": 6, "n_anomalous": 4}
    summary = AnomalySummary("anomaly/normal", {"normal": "n", "anomalous": "a"},
                             {"noskip": m, "skip": {**m, "auroc": 0.8}, "geometric": {**m, "auroc": 0.95}},
                             ["anomaly/noskip_eval/figures/roc_curve.png"], "reconstruction", 6, 4)
    path = summary.write(lay)
    raw = json.loads(path.read_text())
    assert list(raw) == ["normal", "normal_dir", "anomalous_dir", "noskip", "skip", "geometric", "n_normal_test",
                         "n_anomalous", "figures", "default_method", "better"]
    assert raw["better"] == "geometric"
    assert AnomalySummary.read(lay) == summary and AnomalySummary.read(RunLayout(tmp_path / "x")) is None
    stage = AnomalyStudyResult.from_summary(summary, path).to_dict()
    assert stage == {"summary": str(path), "auroc": 0.9, "auroc_skip": 0.8, "auroc_geometric": 0.95,
                     "default_method": "reconstruction"}


def test_a_stage_plan_is_cut_short_below_ten_epochs_or_its_maximum(tmp_path):
    from aelab.results import StagePlan

    assert StagePlan(45.0, 12.8, 3, 100).cut_short  # 400 labels per class: 3 epochs in 45 s
    assert not StagePlan(360.0, 18.0, 20, 30).cut_short
    assert not StagePlan(60.0, 6.0, 10, 100).cut_short  # ten epochs are enough not to be named
    assert not StagePlan(60.0, 6.0, 8, 8).cut_short  # every configured epoch ran
    assert not StagePlan(90.0, 13.1, 7, 8).cut_short  # VICReg's pretraining: 7 of its 8
    assert StagePlan(90.0, 15.1, 6, 15).cut_short  # the denoising pretraining: 6 of its 15
    assert StagePlan(60.0, 30.0, 2, 8).cut_short
    assert StagePlan.read(tmp_path) is None  # no budget.json: no budget, or an older aelab
    StagePlan(45.0, 12.8, 3, 100).write(tmp_path)
    assert StagePlan.read(tmp_path) == StagePlan(45.0, 12.8, 3, 100)

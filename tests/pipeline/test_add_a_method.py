"""docs/architecture.md, "How to add a study-1 method", followed once: a toy method registered in this test only
runs as a stage of `aelab run`, appears in study1/methods.csv and in the report's table 1b."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from aelab.layout import RunLayout
from aelab.results import MethodResult
from aelab.train.methods import METHODS, Method

DESCRIPTION = "toy: every image gets the most common labelled class"


def run_majority(cfg, data: Path, layout: RunLayout, pretrained: Path | None = None) -> MethodResult:
    """Step 1 of the recipe: the method's run function (trains into its folder, predicts the test images)."""
    from aelab.data import image_ids, list_images, read_labels_csv, resolve_layout, scan_labelled
    from aelab.runs import write_csv

    lay = resolve_layout(data)
    lab = scan_labelled(lay.require("labelled"))
    majority = Counter(lab.labels.tolist()).most_common(1)[0][0]
    result = MethodResult("majority", float(np.mean(lab.labels == majority)), len(lab.labels), "6")
    ids = image_ids(list_images(lay.test))
    path = layout.method_predictions("majority")
    write_csv(path, ["id", "label"], [(i, lab.classes[majority]) for i in ids])
    truth = read_labels_csv(lay.test_labels)
    result.test_acc = float(np.mean([truth[i] == lab.classes[majority] for i in ids]))
    result.predictions = str(path)
    return result


def test_a_registered_method_runs_and_reaches_methods_csv_and_the_report(demo_root, tmp_path, monkeypatch):
    from aelab.pipeline import RunConfig, run_all, shared_stages, stages_for

    # Step 2 of the recipe: one entry in the registry (here only for this test).
    monkeypatch.setitem(METHODS, "majority", Method("majority", DESCRIPTION, False, run_majority, rank=50))
    data = tmp_path / "data"
    shutil.copytree(demo_root, data, ignore=shutil.ignore_patterns("anomaly"))  # study 3 skips: the test stays fast
    cfg = RunConfig(data=str(data), out=str(tmp_path / "run"), methods="majority,label-spreading", preset="tiny",
                    device="cpu")
    assert [n for n, _ in stages_for(cfg)][:3] == ["data", "majority", "label-spreading"]
    assert "majority" not in shared_stages()  # rank 0 alone runs it under --devices N
    run = run_all(cfg)

    stages = json.loads((run / "stages.json").read_text())
    assert stages["majority"]["status"] == "done" and stages["majority"]["result"]["method"] == "majority"
    with open(run / "study1" / "methods.csv", newline="", encoding="utf-8") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert list(rows) == ["majority", "label-spreading"]
    assert rows["majority"]["description"] == DESCRIPTION and rows["majority"]["uses_unlabelled"] == "False"
    assert float(rows["majority"]["test_acc"]) == stages["majority"]["result"]["test_acc"]
    report = json.loads((run / "report.json").read_text())
    section = next(s for s in report["sections"] if s["id"] == "1b")
    table = next(b for b in section["blocks"] if b["type"] == "table")
    shown = {row[0]: row for row in table["rows"]}
    assert shown["majority"][1] == DESCRIPTION and shown["majority"][6] == float(rows["majority"]["test_acc"])
    # label-spreading beats guessing the majority class on the validation images unless they tie
    chosen = json.loads((run / "study1" / "chosen.json").read_text())["method"]
    assert chosen in ("majority", "label-spreading")
    assert (run / "predictions.csv").read_bytes() == RunLayout(run).method_predictions(chosen).read_bytes()

"""Tests for aelab/report/build.py (and the study1/headline/appendix parts): the report of a run
folder, built from fixture run folders written by the test (conftest.py)."""

from __future__ import annotations

import csv
import json
import re
import sys

import pytest
from pypdf import PdfReader

from aelab.report.build import build_report, make_report

METHOD_HEADER = ["method", "description", "uses unlabelled", "labels per class", "validation accuracy", "n_val",
                 "test accuracy", "seconds"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, make_run_folder):
    """A fixture run folder with methods.csv and model.json; treat it as read-only."""
    return make_run_folder(tmp_path_factory.mktemp("build") / "run")


def _section(report, sid):
    return next(s for s in report.sections if s.id == sid)


def _blocks(section, kind):
    return [b for b in section.blocks if b.kind == kind]


def test_sections_and_headline_links(run):
    report = make_report(run)
    assert [s.id for s in report.sections] == ["1a", "1b", "2a", "2b", "3", "A"]
    (highlights,) = report.headline
    assert [i["section"] for i in highlights.items] == ["1b", "1b", "2b", "3"]
    assert {i["section"] for i in highlights.items} <= {s.id for s in report.sections}
    assert not any(k.startswith("time") for k in report.header)  # stage times moved to the appendix
    times = _blocks(_section(report, "A"), "table")[0]
    stages = json.loads((run / "stages.json").read_text())
    assert [r[0] for r in times.rows] == [k for k in stages if not k.startswith("_")]


def test_1b_table_equals_methods_csv(run):
    methods = list(csv.DictReader(open(run / "study1" / "methods.csv", encoding="utf-8")))
    section = _section(make_report(run), "1b")
    table = _blocks(section, "table")[0]
    assert table.columns == METHOD_HEADER
    for row, m in zip(table.rows, methods):
        assert row[0] == m["method"] and row[3] == int(m["labels_per_class"]) and row[5] == int(m["n_val"])
        assert row[4] == float(m["val_acc"]) and row[6] == float(m["test_acc"])
    # What the unlabelled images add: best method that uses them minus supervised-only, in points.
    users = [m for m in methods if m["uses_unlabelled"] == "true"]
    best = max(users, key=lambda m: float(m["test_acc"]))
    base = next(m for m in methods if m["method"] == "supervised-only")
    gain_test = 100 * (float(best["test_acc"]) - float(base["test_acc"]))
    gain_val = 100 * (float(best["val_acc"]) - float(base["val_acc"]))
    assert table.rows[-1][0] == "what the unlabelled images add"
    assert table.rows[-1][6] == f"{gain_test:+.1f} points" and table.rows[-1][4] == f"{gain_val:+.1f} points"
    text = " ".join(p.text for p in _blocks(section, "paragraph"))
    assert "stratified hold-out" in text and "50 images (n_val)" in text
    assert "predictions.csv was written with fixmatch" in text
    items = make_report(run).headline[0].items
    assert items[0]["value"] == f"{100 * float(best['test_acc']):.1f}%"
    assert items[1]["value"] == f"{gain_test:+.1f} points"


def test_without_test_labels_the_headline_says_validation(tmp_path, make_run_folder):
    run = make_run_folder(tmp_path / "run")
    rows = list(csv.reader(open(run / "study1" / "methods.csv", encoding="utf-8")))
    for r in rows[1:]:
        r[6] = ""
    with open(run / "study1" / "methods.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    report = make_report(run)
    assert report.headline[0].items[0]["label"] == "Best validation (no test labels) accuracy"
    assert report.headline[0].items[0]["value"] == "98.0%"
    assert _blocks(_section(report, "1b"), "table")[0].rows[0][6] is None


def test_without_model_json_1a_says_architecture_not_recorded(tmp_path, make_run_folder):
    run = make_run_folder(tmp_path / "run", model_json=False)
    (para,) = _section(make_report(run), "1a").blocks
    assert para.text.startswith("Architecture not recorded")


def test_1a_comes_from_model_json(run):
    info = json.loads((run / "study1" / "fixmatch" / "model.json").read_text())
    section = _section(make_report(run), "1a")
    assert f"It has {info['parameters']:,} parameters" in section.blocks[0].text
    table = _blocks(section, "table")[0]
    assert [r[0] for r in table.rows] == [b["name"] for b in info["blocks"]]
    assert [r[3] for r in table.rows] == [b["parameters"] for b in info["blocks"]]


def test_report_reads_files_only(tmp_path, make_run_folder, monkeypatch):
    """No checkpoint exists in the fixture, and loading one or importing training code would fail."""
    import torch

    run = make_run_folder(tmp_path / "run")
    for name in ("aelab.train", "aelab.pipeline", "aelab.cli"):
        monkeypatch.setitem(sys.modules, name, None)  # "import aelab.train" now raises ImportError

    def no_load(*args, **kwargs):
        raise AssertionError("the report loaded a file with torch.load")

    monkeypatch.setattr(torch, "load", no_load)
    paths = build_report(run)
    assert paths["pdf"].stat().st_size > 0
    assert not list(run.rglob("*.ckpt"))


def test_code_listings_only_from_public_names(run):
    import inspect

    from aelab.cluster import ekm_weights

    appendix = _section(make_report(run), "A")
    codes = _blocks(appendix, "code")
    captions = [c.caption for c in codes]
    assert captions == ["aelab/models/blocks.py: aelab.models.ResidualBlock",
                        "aelab/models/autoencoder.py: aelab.models.ResUNetAutoencoder",
                        "aelab/cluster/core.py: aelab.cluster.ekm_weights",
                        "aelab/cluster/core.py: aelab.cluster.centroid_step"]
    # read from the source file: the same text as the imported function's source
    assert codes[2].text == inspect.getsource(ekm_weights)
    assert not _blocks(_section(make_report(run), "2a"), "code")  # code is in the appendix only


def test_a_listing_needs_a_public_name_the_package_exports(tmp_path):
    from aelab.report.appendix import listing

    pkg = tmp_path / "aelab" / "toy"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from aelab.toy.core import step\n")
    (pkg / "core.py").write_text("import os\n\n\n@staticmethod\ndef step(x):\n    return x\n\n\n"
                                 "def hidden(x):\n    return x\n\n\ndef _private(x):\n    return x\n")
    code = listing("aelab.toy", "step", root=tmp_path / "aelab")
    assert code.caption == "aelab/toy/core.py: aelab.toy.step"
    assert code.text == "@staticmethod\ndef step(x):\n    return x\n"  # decorators included, nothing after
    assert listing("aelab.toy", "hidden", root=tmp_path / "aelab") is None  # defined, but not exported
    assert listing("aelab.toy", "_private", root=tmp_path / "aelab") is None
    assert listing("aelab.gone", "step", root=tmp_path / "aelab") is None  # no such package installed


def test_building_a_report_imports_no_torch_and_no_training_code(run, tmp_path):
    """The report reads files only: importing aelab.report and building a report loads neither torch nor
    aelab.train, aelab.models or aelab.cluster (checked in a fresh interpreter)."""
    import shutil
    import subprocess

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    code = ("import sys, aelab.report\n"
            "from aelab.report.build import build_report\n"
            f"build_report({str(copy)!r})\n"
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.split('.')[:2] in "
            "(['aelab', 'train'], ['aelab', 'models'], ['aelab', 'cluster']))\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
    assert (copy / "report.pdf").stat().st_size > 0


HOSTILE = ("![x](http://evil.example/x.png)", "[c](javascript:alert(1))", "<img src=x onerror=alert(1)>",
           "caf\udce9")


def test_hostile_class_names_stay_text(tmp_path, make_run_folder):
    from markdown_it import MarkdownIt

    run = make_run_folder(tmp_path / "run", classes=HOSTILE[:3])
    (run / "anomaly" / "summary.json").write_text(json.dumps(
        {**json.loads((run / "anomaly" / "summary.json").read_text()), "normal": HOSTILE[3]}, ensure_ascii=True))
    paths = build_report(run)
    md = paths["md"].read_text(encoding="utf-8")
    html = MarkdownIt("commonmark").enable("table").render(md)
    images = re.findall(r"<img [^>]*src=\"([^\"]*)\"", html)
    assert images and all(not re.match(r"[a-z]+:", s) and (run / s).is_file() for s in images)
    assert all(h.startswith("#") for h in re.findall(r"<a [^>]*href=\"([^\"]*)\"", html))
    assert "onerror" not in re.sub(r"&lt;img src=x onerror=alert\(1\)&gt;", "", html)
    assert "caf\\\\xe9" in md  # undecodable bytes written as an escape (Markdown-escaped), not a crash
    # The names themselves still read as written (HTML-escaped in report.html, literal in the PDF).
    page_html = paths["html"].read_text(encoding="utf-8")
    assert "&lt;img src=x onerror=alert(1)&gt;" in page_html and "<img src=x" not in page_html
    assert "caf\\xe9" in page_html
    pdf_text = " ".join(" ".join(p.extract_text() for p in PdfReader(paths["pdf"]).pages).split())
    assert HOSTILE[0] in pdf_text and HOSTILE[1] in pdf_text


def test_not_a_run_folder_is_a_one_line_error(tmp_path):
    from aelab.errors import AelabError

    with pytest.raises(AelabError, match="not an aelab run folder"):
        build_report(tmp_path)


def test_a_method_that_did_not_run_shows_its_note(tmp_path, make_run_folder):
    run = make_run_folder(tmp_path / "run")
    rows = list(csv.reader(open(run / "study1" / "methods.csv", encoding="utf-8")))
    rows[0].append("note")
    for r in rows[1:]:
        r.append("")
    fixmatch = next(r for r in rows if r[0] == "fixmatch")
    fixmatch[4] = fixmatch[6] = ""
    fixmatch[-1] = "not run: it needs a folder of unlabelled images"
    with open(run / "study1" / "methods.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    report = make_report(run)
    table = _blocks(_section(report, "1b"), "table")[0]
    assert table.columns[-1] == "note" and table.rows[2][-1] == fixmatch[-1]
    # The best method that ran and uses the unlabelled images is now the course method (0.866).
    assert table.rows[-1][6] == f"{100 * (0.866 - 0.951):+.1f} points"
    items = report.headline[0].items
    assert items[0]["value"] == "95.1%" and items[1]["value"] == "-8.5 points"


def test_1a_and_the_appendix_describe_a_photo_cnn_as_what_it_is(tmp_path, make_run_folder):
    from aelab.models import build_model, preset_config
    from aelab.models.summary import describe_model

    run = make_run_folder(tmp_path / "run")
    info = describe_model(build_model(preset_config("tiny", arch="cnn", stem=8, num_classes=3)))
    (run / "study1" / "fixmatch" / "model.json").write_text(json.dumps(info))
    report = make_report(run)
    section = _section(report, "1a")
    text = section.blocks[0].text
    assert "no autoencoder" in section.title and text.startswith("Plain convolutional network without a decoder")
    assert "arch=cnn" in text and "skip_connections" not in text and "dropout" not in text
    assert f"It has {info['parameters']:,} parameters" in text
    listed = " ".join(str(getattr(b, "text", "")) + str(getattr(b, "code", "")) for b in _section(report, "A").blocks)
    # both networks: the course rows, the pretraining and the reconstruction detector still train the U-Net
    assert all(f"class {name}" in listed for name in ("PlainCNN", "ConvBlock", "ResidualBlock", "ResUNetAutoencoder"))


def test_1b_says_which_network_each_row_trained_from_its_model_json(tmp_path, make_run_folder):
    from aelab.models import build_model, preset_config
    from aelab.models.summary import describe_model

    run = make_run_folder(tmp_path / "run")
    cnn = describe_model(build_model(preset_config("tiny", arch="cnn", num_classes=3)))
    unet = describe_model(build_model(preset_config("tiny", num_classes=3)))
    (run / "study1" / "fixmatch" / "model.json").write_text(json.dumps(cnn))
    (run / "study1" / "supervised" / "model.json").write_text(json.dumps(cnn))
    (run / "study1" / "course" / "model.json").write_text(json.dumps(unet))
    chosen = json.loads((run / "study1" / "chosen.json").read_text())
    chosen["settings"] = {"arch": "auto"}
    (run / "study1" / "chosen.json").write_text(json.dumps(chosen))
    texts = [b.text for b in _blocks(_section(make_report(run), "1b"), "paragraph") if "Networks:" in b.text]
    assert len(texts) == 1
    assert "trained a plain CNN without a decoder" in texts[0] and "course trained the residual U-Net" in texts[0]
    assert "--arch auto" in texts[0]


def test_a_stage_the_budget_cut_short_is_named_in_1b_and_in_the_headline(tmp_path, make_run_folder):
    from aelab.results import StagePlan

    run = make_run_folder(tmp_path / "run")
    StagePlan(45.0, 12.8, 3, 100).write(run / "study1" / "supervised")  # 400 labels per class: 3 epochs fitted
    StagePlan(360.0, 18.0, 20, 30).write(run / "study1" / "fixmatch")  # 20 of 30: a full enough run
    chosen = json.loads((run / "study1" / "chosen.json").read_text())
    chosen["settings"] = {"budget_minutes": 12.0, "budget_shares": {"study1/supervised": 1, "study1/fixmatch": 8}}
    (run / "study1" / "chosen.json").write_text(json.dumps(chosen))
    report = make_report(run)
    texts = [b.text for b in _blocks(_section(report, "1b"), "paragraph") if "Cut short" in b.text]
    assert len(texts) == 1
    assert "study1/supervised ran 3 of its 100 epochs in its 0.8-minute share" in texts[0]
    assert "fixmatch" not in texts[0]
    (gain,) = [i for i in report.headline[0].items if i["label"] == "What the unlabelled images add"]
    assert ("Cut short by the time budget (study1/supervised ran 3 of its 100 epochs in its 0.8-minute share)"
            in gain["detail"])
    # a run of the Python API records no budget shares: the planned stages are found in the folder
    StagePlan(90.0, 16.1, 6, 15).write(run / "pretrain")
    chosen["settings"] = None
    (run / "study1" / "chosen.json").write_text(json.dumps(chosen))
    (text,) = [b.text for b in _blocks(_section(make_report(run), "1b"), "paragraph") if "Cut short" in b.text]
    assert "pretrain ran 6 of its 15 epochs in its 1.5-minute share" in text
    assert "supervised" not in text  # its folder is one level down in this fixture
    (run / "pretrain" / "budget.json").unlink()
    # with the stages each row depends on recorded (aelab run), the 1b paragraph names the rows, and the headline
    # looks at every stage of its two rows: here the course row's pretraining
    StagePlan(90.0, 16.1, 6, 15).write(run / "pretrain")
    StagePlan(45.0, 0.4, 100, 100).write(run / "study1" / "supervised")
    chosen["settings"] = {"method_stages": {"supervised-only": ["study1/supervised"],
                                            "course": ["pretrain", "study1/course"], "fixmatch": ["study1/fixmatch"]}}
    (run / "study1" / "chosen.json").write_text(json.dumps(chosen))
    report = make_report(run)
    (text,) = [b.text for b in _blocks(_section(report, "1b"), "paragraph") if "Cut short" in b.text]
    assert "pretrain ran 6 of its 15 epochs in its 1.5-minute share (rows course)" in text
    (gain,) = [i for i in report.headline[0].items if i["label"] == "What the unlabelled images add"]
    assert "Cut short" not in gain["detail"]  # fixmatch against supervised-only: neither depends on the pretraining
    (run / "pretrain" / "budget.json").unlink()
    StagePlan(45.0, 12.8, 3, 100).write(run / "study1" / "supervised")
    # with many labelled images the report says the supervised share grew (study_settings' budget_note)
    chosen["settings"] = {"budget_minutes": 12.0, "budget_shares": {"study1/supervised": 8, "study1/fixmatch": 8},
                          "budget_note": "With 4,000 labelled images the share of the supervised-only row grew."}
    (run / "study1" / "chosen.json").write_text(json.dumps(chosen))
    texts = [b.text for b in _blocks(_section(make_report(run), "1b"), "paragraph")]
    assert any("study1/supervised 6.0, study1/fixmatch 6.0 minutes" in t for t in texts)
    assert any("With 4,000 labelled images the share of the supervised-only row grew." in t for t in texts)
    assert not any("fold here" in t for t in texts)  # the default budget raises no cap
    # a budget above the default raised the epoch caps (study_settings' epoch_scale): the sentence says by how much
    chosen["settings"].update(budget_minutes=60.0, epoch_scale=5.0, epoch_caps={"fixmatch_epochs": 150})
    (run / "study1" / "chosen.json").write_text(json.dumps(chosen))
    texts = [b.text for b in _blocks(_section(make_report(run), "1b"), "paragraph")]
    assert any("raises in proportion: 5-fold here (fixmatch_epochs 150)" in t for t in texts)
    # without a cut-short stage neither says so
    StagePlan(45.0, 0.4, 100, 100).write(run / "study1" / "supervised")
    report = make_report(run)
    assert not [b for b in _blocks(_section(report, "1b"), "paragraph") if "Cut short" in b.text]
    assert not any("Cut short" in i["detail"] for i in report.headline[0].items)

"""The CLI as a user (or an attacker) meets it: nothing overwritten, one line per error, no traceback."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from aelab.cli.main import main
from aelab.data import Preprocessing
from aelab.models import build_model, preset_config
from aelab.train import save_checkpoint


def _one_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("aelab: error:")]
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def _model(path, classes=("cat", "dog")):
    cfg = preset_config("tiny", num_classes=len(classes))
    save_checkpoint(path, model_config=cfg.to_dict(), preprocessing=Preprocessing(32, 3).to_dict(),
                    classes=list(classes), state_dict=build_model(cfg).state_dict())
    return path


def _images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("L", (8, 8), 20 * i).save(os.path.join(os.fsencode(folder), os.fsencode(name)), format="PNG")
    return folder


VERBS = {
    "pretrain": lambda t: ["pretrain", "--data", str(t)],
    "finetune": lambda t: ["finetune", "--data", str(t)],
    "predict": lambda t: ["predict", "--model", str(t / "m.ckpt"), "--images", str(t / "imgs")],
    "embed": lambda t: ["embed", "--model", str(t / "m.ckpt"), "--images", str(t / "imgs")],
    "cluster": lambda t: ["cluster", str(t / "emb.csv"), "--n_clusters", "2", "--target_ratio", "1:1"],
    "anomaly fit": lambda t: ["anomaly", "fit", "--normal", str(t / "imgs")],
    "anomaly score": lambda t: ["anomaly", "score", "--model", str(t / "m.ckpt"), "--images", str(t / "imgs")],
    "anomaly evaluate": lambda t: ["anomaly", "evaluate", "--model", str(t / "m.ckpt"), "--normal", str(t / "imgs")],
}


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_refuses_a_non_empty_out_and_leaves_it_untouched(verb, tmp_path, capsys):
    _model(tmp_path / "m.ckpt")
    _images(tmp_path / "imgs", ["1.png", "2.png", "3.png", "4.png"])
    rows = [["filename", "label", "f1", "f2"]] + [[f"{i}.png", "", str(i % 2), str(i)] for i in range(8)]
    csv.writer(open(tmp_path / "emb.csv", "w", newline="")).writerows(rows)
    out = tmp_path / "results"
    out.mkdir()
    precious = {"metrics.csv": "mine\n", "best.ckpt": "mine", "predictions.csv": "mine", "clusters.csv": "mine",
                "detector.ckpt": "mine", "anomaly_scores.csv": "mine", "embeddings.csv": "mine"}
    for name, text in precious.items():
        (out / name).write_text(text)
    assert main([*VERBS[verb](tmp_path), "--out", str(out)]) == 2
    assert "not empty" in _one_line(capsys)
    assert {p.name: p.read_text() for p in out.iterdir()} == precious


def test_run_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["run", "--out", str(tmp_path), "--preset", "tiny"]) == 2
    assert "not an aelab run folder" in _one_line(capsys)
    assert os.listdir(tmp_path) == ["notes.txt"]


@pytest.mark.parametrize("flags, message", [
    (["--val_fraction", "1.5"], "--val_fraction must be"),
    (["--val_fraction", "-0.5"], "--val_fraction must be"),
    (["--epochs", "0"], "--epochs must be an integer >= 1"),
    (["--patience", "-1"], "--patience must be"),
    (["--batch_size", "0"], "--batch_size must be"),
    (["--lr", "-1"], "--lr must be a number > 0"),
    (["--device", "tpu"], "--device must be one of"),
    (["--precision", "8-bit"], "--precision must be one of"),
    (["--devices", "0"], "--devices must be"),
    (["--seed", "-1"], "--seed must be an integer from 0"),
])
def test_invalid_options_are_one_line_before_any_folder_exists(flags, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(tmp_path), "--out", str(out), *flags]) == 2
    assert message in _one_line(capsys)
    assert not out.exists()


def test_the_python_api_checks_the_same_options(tmp_path):
    from aelab.errors import AelabError
    from aelab.train import FinetuneConfig, PredictConfig

    with pytest.raises(AelabError, match="--epochs"):
        FinetuneConfig(epochs=0)
    with pytest.raises(AelabError, match="--batch_size"):
        PredictConfig(batch_size=0)


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "f")]) == 2
    assert "is a file" in _one_line(capsys)


def test_read_only_out_is_one_line(tmp_path, capsys, monkeypatch):
    import aelab.runs

    real = os.open

    def denied(path, flags, *args):  # as a read-only folder answers (root ignores chmod, so simulate it)
        if str(path).endswith(aelab.runs.LOCK_NAME):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, flags, *args)

    monkeypatch.setattr(aelab.runs.os, "open", denied)
    _model(tmp_path / "m.ckpt")
    _images(tmp_path / "imgs", ["1.png"])
    assert main(["predict", "--model", str(tmp_path / "m.ckpt"), "--images", str(tmp_path / "imgs"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "Permission denied" in _one_line(capsys)


def test_predict_with_a_missing_labels_file_is_an_error(tmp_path, capsys):
    _model(tmp_path / "m.ckpt")
    _images(tmp_path / "imgs", ["1.png", "2.png"])
    out = tmp_path / "o"
    assert main(["predict", "--model", str(tmp_path / "m.ckpt"), "--images", str(tmp_path / "imgs"),
                 "--labels", str(tmp_path / "missing.csv"), "--out", str(out)]) == 2
    assert "labels file not found" in _one_line(capsys)
    assert not out.exists()


def test_predict_labels_matching_nothing_warns(tmp_path):
    _model(tmp_path / "m.ckpt")
    _images(tmp_path / "imgs", ["1.png", "2.png"])
    (tmp_path / "labels.csv").write_text("id,label\nx,cat\ny,dog\n")
    with pytest.warns(UserWarning, match="no image matches an id"):
        assert main(["predict", "--model", str(tmp_path / "m.ckpt"), "--images", str(tmp_path / "imgs"),
                     "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "o")]) == 0
    assert "accuracy" not in json.loads((tmp_path / "o" / "metrics.json").read_text())


def test_one_non_numeric_file_keeps_the_labels_matching(tmp_path):
    # "notes.png" turns every id from "1" into "1.png"; labels keyed "1", "2" still match by stem.
    _model(tmp_path / "m.ckpt")
    _images(tmp_path / "imgs", ["1.png", "2.png", "notes.png"])
    (tmp_path / "labels.csv").write_text("id,label\n1,cat\n2,dog\n")
    with pytest.warns(UserWarning, match="1 of 3 images have no label"):
        assert main(["predict", "--model", str(tmp_path / "m.ckpt"), "--images", str(tmp_path / "imgs"),
                     "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "o")]) == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["n_labelled"] == 2
    preds = {r["id"]: r["label"] for r in csv.DictReader(open(tmp_path / "o" / "predictions.csv"))}
    assert metrics["accuracy"] == np.mean([preds["1.png"] == "cat", preds["2.png"] == "dog"])


def test_latin1_labels_file_is_one_line(tmp_path, capsys):
    _model(tmp_path / "m.ckpt")
    _images(tmp_path / "imgs", ["1.png"])
    (tmp_path / "labels.csv").write_bytes("id,label\n1,caf\xe9\n".encode("latin-1"))
    assert main(["predict", "--model", str(tmp_path / "m.ckpt"), "--images", str(tmp_path / "imgs"),
                 "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "o")]) == 2
    line = _one_line(capsys)
    assert "not UTF-8" in line and "labels.csv" in line


def test_hostile_file_and_class_names_end_in_safe_csvs(tmp_path):
    names = ['=HYPERLINK("x","y").png', "caf\udce9.png", "+1+cmd.png", "@a.png", "price $12_$x12.png"]
    _model(tmp_path / "m.ckpt", classes=("=evil()", "thr\udce9e"))
    _images(tmp_path / "imgs", names)
    assert main(["predict", "--model", str(tmp_path / "m.ckpt"), "--images", str(tmp_path / "imgs"),
                 "--probabilities", "--out", str(tmp_path / "o")]) == 0
    for name in ("predictions.csv", "probabilities.csv"):
        rows = list(csv.reader(open(tmp_path / "o" / name, encoding="utf-8", newline="")))  # valid UTF-8
        cells = [c for r in rows for c in r if not c.replace(".", "").replace("-", "").isdigit()]
        assert not any(c.startswith(("=", "+", "-", "@", "\t", "\r")) for c in cells), cells
    header = next(csv.reader(open(tmp_path / "o" / "probabilities.csv", encoding="utf-8")))
    assert header == ["id", "'=evil()", "thr\\xe9e"]
    ids = [r["id"] for r in csv.DictReader(open(tmp_path / "o" / "predictions.csv", encoding="utf-8"))]
    assert "caf\\xe9.png" in ids and "'=HYPERLINK(\"x\",\"y\").png" in ids and "price $12_$x12.png" in ids


def test_invalid_stages_json_on_resume_and_report_is_one_line(tmp_path, capsys):
    (tmp_path / "stages.json").write_text('{"data": ')
    assert main(["report", str(tmp_path)]) == 2
    assert "stages.json" in _one_line(capsys)
    assert main(["run", "--out", str(tmp_path), "--preset", "tiny"]) == 2
    assert "stages.json" in _one_line(capsys)


def test_edited_config_yaml_on_report_is_one_line(tmp_path, capsys):
    (tmp_path / "stages.json").write_text("{}")
    (tmp_path / "config.yaml").write_text("preset: [tiny\n")
    assert main(["report", str(tmp_path)]) == 2
    assert "config.yaml" in _one_line(capsys)


def test_report_of_a_run_with_a_damaged_figure_is_one_line(tmp_path, capsys):
    import json

    from aelab.cli.main import main

    run = tmp_path / "run"
    (run / "cluster_ekm" / "figures").mkdir(parents=True)
    (run / "stages.json").write_text(json.dumps({"cluster": {"status": "done", "result": {}}}))
    (run / "cluster_ekm" / "metrics.json").write_text(json.dumps({"panels": [], "ari": 0.5}))
    (run / "cluster_ekm" / "figures" / "clusterings.png").write_bytes(b"not a png")  # truncated or overwritten
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is damaged" in err[0] and "clusterings.png" in err[0]


def test_run_nests_the_cluster_and_anomaly_settings(monkeypatch, capsys):
    """`aelab run --cluster.X/--anomaly.X` reach the nested settings; the flat names of 0.1 are gone."""
    import aelab.cli.run_cmds as run_cmds

    seen = {}
    monkeypatch.setattr(run_cmds, "run_all", lambda cfg: seen.setdefault("cfg", cfg))
    assert main(["run", "--cluster.classes", "1,4,7", "--anomaly.epochs", "3", "--anomaly.score", "mse"]) == 0
    cfg = seen.pop("cfg")
    assert (cfg.cluster.classes, cfg.cluster.ratio) == ("1,4,7", "2:1:1")
    assert (cfg.anomaly.epochs, cfg.anomaly.score) == (3, "mse")
    with pytest.raises(SystemExit):
        main(["run", "--cluster_classes", "3,4,5"])
    assert "unrecognized arguments: --cluster_classes" in capsys.readouterr().err
    assert main(["run", "--anomaly.epochs", "0"]) == 2  # nested settings are checked like the others, by their flag
    assert "--anomaly.epochs must be an integer >= 1" in capsys.readouterr().err
    assert main(["run", "--anomaly.geometric.score", "mse"]) == 2
    assert "--anomaly.geometric.score must be one of dirichlet, transform, knn" in capsys.readouterr().err


def test_a_negative_seed_is_refused_before_any_folder_by_every_verb(tmp_path, capsys):
    rows = [["filename", "label", "f1", "f2"]] + [[f"{i}.png", "", str(i % 2), str(i)] for i in range(8)]
    with open(tmp_path / "emb.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    out = tmp_path / "o"
    assert main(["cluster", str(tmp_path / "emb.csv"), "--n_clusters", "2", "--target_ratio", "1:1", "--seed", "-1",
                 "--out", str(out)]) == 2
    assert "--seed must be an integer from 0" in _one_line(capsys)
    assert not out.exists()  # it used to leave config.yaml behind
    assert main(["demo-data", str(out), "--seed", "-1"]) == 2
    assert "--seed must be" in _one_line(capsys)
    assert not out.exists()


def test_an_empty_config_file_says_so(tmp_path, capsys):
    for text in ("", "\n", "# only a comment\n"):
        (tmp_path / "c.yaml").write_text(text)
        assert main(["predict", "--config", str(tmp_path / "c.yaml")]) == 2
        assert f"--config {tmp_path / 'c.yaml'} is empty" in _one_line(capsys)


def test_a_yaml_alias_bomb_in_config_is_refused_quickly(tmp_path, capsys):
    import time

    from tests.test_runs import _alias_bomb

    (tmp_path / "c.yaml").write_text("seed: 1\n" + _alias_bomb())
    t0 = time.perf_counter()
    assert main(["predict", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "expand to more than" in _one_line(capsys)
    assert time.perf_counter() - t0 < 5.0


def test_predict_skips_and_lists_a_self_referencing_link(tmp_path, capsys):
    _model(tmp_path / "m.ckpt")
    _images(tmp_path / "imgs", ["1.png", "2.png"])
    os.symlink("3.png", tmp_path / "imgs" / "3.png")  # points at itself: "Too many levels of symbolic links"
    with pytest.warns(UserWarning, match=r"skipped 1 of 3 unreadable.*3\.png"):
        assert main(["predict", "--model", str(tmp_path / "m.ckpt"), "--images", str(tmp_path / "imgs"),
                     "--out", str(tmp_path / "o")]) == 0
    ids = [r["id"] for r in csv.DictReader(open(tmp_path / "o" / "predictions.csv"))]
    assert ids == ["1", "2"]
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["n_skipped"] == 1


def test_two_images_sharing_one_label_id_warn_naming_them(tmp_path):
    _model(tmp_path / "m.ckpt")
    _images(tmp_path / "imgs", ["1.png", "1.jpg", "2.png"])
    (tmp_path / "labels.csv").write_text("id,label\n1,cat\n2,dog\n")
    with pytest.warns(UserWarning, match=r"1\.jpg, 1\.png all take the label of id '1'"):
        assert main(["predict", "--model", str(tmp_path / "m.ckpt"), "--images", str(tmp_path / "imgs"),
                     "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "o")]) == 0


def test_a_test_label_the_model_does_not_know_warns_naming_the_ids(tmp_path, recwarn):
    _model(tmp_path / "m.ckpt")  # classes cat, dog
    _images(tmp_path / "imgs", ["1.png", "2.png", "3.png"])
    (tmp_path / "labels.csv").write_text("id,label\n1,cat\n2,seven\n3,dog\n")
    assert main(["predict", "--model", str(tmp_path / "m.ckpt"), "--images", str(tmp_path / "imgs"),
                 "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "o")]) == 0
    (msg,) = [str(w.message) for w in recwarn if "does not know" in str(w.message)]
    assert "'seven'" in msg and "ids 2 count as errors" in msg
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["n_labelled"] == 3  # still scored, as an error


def test_a_full_disk_while_pretraining_is_one_line(tmp_path, capsys, monkeypatch):
    import torch

    from aelab.data import make_demo_data
    from tests.test_runs import _torch_disk_full

    data = make_demo_data(tmp_path / "data", seed=0, labelled_per_class=2, n_unlabelled=16, n_test=0,
                          n_anomaly_normal=0, n_anomalous=0).root
    monkeypatch.setattr(torch, "save", _torch_disk_full)
    out = tmp_path / "RUN"
    assert main(["pretrain", "--data", str(data), "--out", str(out), "--epochs", "1", "--preset", "tiny",
                 "--device", "cpu"]) == 2
    line = _one_line(capsys)
    assert line == f"aelab: error: no space left on device writing {out / 'last.ckpt'}", line


@pytest.mark.parametrize("args, words", [
    (["finetune", "--arch", "cnn", "--method", "course"], "no decoder"),
    (["finetune", "--arch", "resnet"], "--arch must be one of auto, unet, cnn"),
    (["run", "--arch", "resnet"], "--arch must be one of auto, unet, cnn"),
])
def test_a_network_that_cannot_serve_is_refused_in_one_line(tmp_path, capsys, args, words):
    _images(tmp_path / "data" / "dev" / "labelled" / "a", ["1.png", "2.png"])
    out = tmp_path / "o"
    assert main([*args, "--data", str(tmp_path / "data"), "--out", str(out), "--device", "cpu"]) == 2
    assert words in _one_line(capsys)
    assert not out.exists()

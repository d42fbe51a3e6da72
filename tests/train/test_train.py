"""Training, checkpoints, resume, prediction and embedding on small demo data (CPU)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from aelab.data import Preprocessing, make_demo_data
from aelab.models import build_model, preset_config
from aelab.train import (
    EmbedConfig,
    FinetuneConfig,
    PredictConfig,
    PretrainConfig,
    embed,
    finetune,
    load_checkpoint,
    load_model,
    predict,
    pretrain,
    save_checkpoint,
)

TINY = dict(preset="tiny", device="cpu", batch_size=32)


def interrupted(monkeypatch, run, epochs: int = 2) -> None:
    """Call ``run`` and stop it with a KeyboardInterrupt right after its ``epochs``-th epoch is logged (before that
    epoch's checkpoint), as Ctrl-C would."""
    from aelab.runs import MetricsLogger

    original, calls = MetricsLogger.log, {"n": 0}

    def interrupting_log(self, row):
        original(self, row)
        calls["n"] += 1
        if calls["n"] == epochs:
            raise KeyboardInterrupt

    monkeypatch.setattr(MetricsLogger, "log", interrupting_log)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(MetricsLogger, "log", original)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train") / "demo"
    make_demo_data(root, seed=1, labelled_per_class=8, n_unlabelled=160, n_test=60, n_anomaly_normal=10, n_anomalous=10)
    return root


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    return pretrain(PretrainConfig(data=str(data), epochs=2, out=str(tmp_path_factory.mktemp("pre")), **TINY))


def test_pretrain_writes_run_folder_and_loadable_checkpoint(pretrained):
    for name in ("config.yaml", "metrics.csv", "best.ckpt", "last.ckpt"):
        assert (pretrained / name).is_file(), name
    rows = list(csv.DictReader(open(pretrained / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert float(rows[-1]["val_mse"]) < float(rows[0]["train_loss"])  # it learned something
    # A plain dict of tensors and plain values: loads without unpickling code.
    ckpt = torch.load(pretrained / "best.ckpt", weights_only=True)
    assert ckpt["format"] == "aelab-checkpoint-v1"
    assert ckpt["preprocessing"]["image_size"] == 32 and ckpt["model_config"]["width"] == 8
    assert ckpt["config"]["epochs"] == 2 and ckpt["config"]["preset"] == "tiny"


def test_resume_reaches_the_same_weights(data, tmp_path, monkeypatch):
    cfg = dict(data=str(data), epochs=3, patience=10, **TINY)
    full = pretrain(PretrainConfig(out=str(tmp_path / "full"), **cfg))

    # Interrupt the second run right after its second epoch is logged (before that epoch's checkpoint).
    interrupted(monkeypatch, lambda: pretrain(PretrainConfig(out=str(tmp_path / "cut"), **cfg)))
    assert load_checkpoint(tmp_path / "cut", which="last")["epoch"] == 0

    resumed = pretrain(PretrainConfig(resume=str(tmp_path / "cut")))
    a = torch.load(full / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "last.ckpt", weights_only=True)
    assert b["epoch"] == a["epoch"] == 2
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, msg=k)
    rows = list(csv.DictReader(open(resumed / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]


def test_finetune_keeps_the_pretrained_preprocessing_and_encoder(pretrained, data, tmp_path):
    run = finetune(FinetuneConfig(init_from=str(pretrained), data=str(data), epochs=1, augment="none",
                                  freeze_encoder=True, out=str(tmp_path / "ft"), **TINY))
    pre, ft = load_checkpoint(pretrained), load_checkpoint(run)
    assert ft["preprocessing"] == pre["preprocessing"]
    # The frozen encoder is exactly the pretrained one, BatchNorm statistics included.
    for k, v in pre["state_dict"].items():
        if k.startswith(("encoders.", "bottleneck.")):
            torch.testing.assert_close(ft["state_dict"][k], v, msg=k)
    assert ft["classes"] == [str(d) for d in range(10)]
    assert ft["model_config"]["num_classes"] == 10
    # Validation/prediction input equals the training input for the same image (no augmentation, no noise).
    prep = Preprocessing.from_dict(ft["preprocessing"])
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(prep.model_input(x), prep.normalize(prep.target(x)))
    assert prep.target(x).max() <= 1.0


def test_best_checkpoint_is_the_epoch_with_the_highest_validation_accuracy(pretrained, data, tmp_path):
    run = finetune(FinetuneConfig(init_from=str(pretrained), data=str(data), epochs=4, patience=10,
                                  out=str(tmp_path / "ft"), **TINY))
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    accs = [float(r["val_acc"]) for r in rows]
    best = load_checkpoint(run)
    # The scored metric (course report defect 5), the last epoch on ties (a small validation set saturates).
    assert best["epoch"] == len(accs) - 1 - int(np.argmax(accs[::-1]))
    assert best["metrics"]["val_acc"] == max(accs)


@pytest.mark.parametrize("method", ["course", "fixmatch"])
def test_finetune_resume_reaches_the_same_weights(pretrained, data, tmp_path, monkeypatch, method):
    """FixMatch also restores what its class thresholds remember about each unlabelled image."""
    from aelab.runs import MetricsLogger

    cfg = dict(init_from=str(pretrained), data=str(data), epochs=3, patience=10, augment="course", method=method,
               **TINY)
    if method == "fixmatch":
        cfg["threshold"] = 0.4  # the tiny net is never 95 % sure in 3 epochs: let the thresholds learn something
    full = finetune(FinetuneConfig(out=str(tmp_path / "full"), **cfg))
    original = MetricsLogger.log

    def interrupting_log(self, row):
        original(self, row)
        if int(row["epoch"]) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(MetricsLogger, "log", interrupting_log)
    with pytest.raises(KeyboardInterrupt):
        finetune(FinetuneConfig(out=str(tmp_path / "cut"), **cfg))
    monkeypatch.setattr(MetricsLogger, "log", original)
    resumed = finetune(FinetuneConfig(resume=str(tmp_path / "cut")))
    a = torch.load(full / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(resumed / "last.ckpt", weights_only=True)["state_dict"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], msg=k)
    if method == "fixmatch":
        remembered = torch.load(full / "last.ckpt", weights_only=True)["train_state"]["curriculum.latest"]
        assert (remembered >= 0).any() and (remembered < 0).any()  # some images confidently pseudo-labelled, some not
        state = torch.load(resumed / "last.ckpt", weights_only=True)["train_state"]
        assert torch.equal(state["curriculum.latest"], remembered)


def _checkpoint_with_classes(path, classes):
    cfg = preset_config("tiny", num_classes=len(classes))
    model = build_model(cfg)
    save_checkpoint(path, model_config=cfg.to_dict(), preprocessing=Preprocessing(32, 3).to_dict(), classes=classes,
                    state_dict=model.state_dict())
    return path


def test_predictions_csv_has_natural_order_and_integer_ids(tmp_path):
    ckpt = _checkpoint_with_classes(tmp_path / "m.ckpt", ["cat", "dog"])
    test = tmp_path / "test"
    test.mkdir()
    for name in ("10.png", "2.png", "1.png"):
        Image.new("RGB", (20, 20), (int(name.split(".")[0]) * 20, 0, 0)).save(test / name)
    (test / "3.png").write_bytes(b"")  # zero bytes: skipped, and the others keep their ids
    with pytest.warns(UserWarning, match="skipped 1"):
        run = predict(PredictConfig(model=str(ckpt), images=str(test), out=str(tmp_path / "p"), probabilities=True,
                                    device="cpu"))
    rows = list(csv.reader(open(run / "predictions.csv")))
    assert rows[0] == ["id", "label"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "10"]
    # Each row is that file's own prediction (not shifted by the skipped file or the sort).
    from aelab.data import load_images
    from aelab.train import batched_forward

    model, ck = load_model(ckpt)
    for image_id, label in rows[1:]:
        x = load_images([test / f"{image_id}.png"], 32, 3).images
        logits = batched_forward(model, Preprocessing.from_dict(ck["preprocessing"]), x, want=("logits",)).logits
        assert label == ["cat", "dog"][int(logits.argmax())]
    probs = list(csv.reader(open(run / "probabilities.csv")))
    assert probs[0] == ["id", "cat", "dog"]
    assert all(abs(float(r[1]) + float(r[2]) - 1) < 1e-4 for r in probs[1:])


def test_prediction_ids_are_file_names_when_stems_are_not_integers(tmp_path):
    ckpt = _checkpoint_with_classes(tmp_path / "m.ckpt", ["a", "b"])
    test = tmp_path / "t"
    test.mkdir()
    for name in ("img10.png", "img9.jpg", "7.png"):
        Image.new("L", (8, 8), 99).save(test / name)
    run = predict(PredictConfig(model=str(ckpt), images=str(test), out=str(tmp_path / "p"), device="cpu"))
    ids = [r["id"] for r in csv.DictReader(open(run / "predictions.csv"))]
    assert ids == ["7.png", "img9.jpg", "img10.png"]


def test_embed_writes_npy_and_labelled_csv(pretrained, data, tmp_path):
    run = embed(EmbedConfig(model=str(pretrained), data=str(data), out=str(tmp_path / "e"), pooling="mean",
                            device="cpu"))
    emb = np.load(run / "embeddings.npy")
    rows = list(csv.DictReader(open(run / "embeddings.csv")))
    assert list(rows[0]) == ["filename", "label"]
    assert emb.shape == (len(rows), 32) and emb.dtype == np.float32  # tiny: 8 * 2**2 channels, mean-pooled
    assert len(rows) == 80 + 60  # labelled + test
    truth = {r["id"]: r["label"] for r in csv.DictReader(open(data / "test_labels.csv"))}
    for r in rows:
        parts = r["filename"].split("/")
        if parts[:2] == ["dev", "labelled"]:
            assert r["label"] == parts[2]  # the class folder
        else:
            assert parts[0] == "test" and r["label"] == truth[parts[1].split(".")[0]]


def test_cli_errors_are_one_line(tmp_path, capsys):
    from aelab.cli.main import main

    (tmp_path / "flat").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "flat" / "a.png")
    assert main(["finetune", "--labelled", str(tmp_path / "flat"), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no class subfolders" in err[0] and str(tmp_path / "flat") in err[0]
    assert main(["predict", "--model", str(tmp_path / "missing.ckpt"), "--images", str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["pretrain", "--unlabelled", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.slow
def test_end_to_end_cli_accuracy_well_above_chance(tmp_path):
    """demo-data -> pretrain -> finetune -> predict through the CLI; 10 classes, chance is 0.1."""
    from aelab.cli.main import main

    root, runs = tmp_path / "demo", tmp_path / "runs"
    assert main(["demo-data", str(root), "--labelled_per_class", "20", "--n_unlabelled", "400", "--n_test", "200"]) == 0
    common = ["--preset", "small", "--device", "cpu", "--seed", "0"]
    assert main(["pretrain", "--data", str(root), "--epochs", "2", "--out", str(runs / "pre"), *common]) == 0
    assert main(["finetune", "--data", str(root), "--init-from", str(runs / "pre"), "--epochs", "15",
                 "--augment", "light", "--out", str(runs / "ft"), *common]) == 0
    assert main(["predict", "--data", str(root), "--model", str(runs / "ft"), "--out", str(runs / "pred")]) == 0
    metrics = json.loads((runs / "pred" / "metrics.json").read_text())
    assert metrics["n_labelled"] == 200
    assert metrics["accuracy"] > 0.3, metrics


def test_config_file_then_flags_override_it(data, tmp_path):
    """`--config FILE.yaml` sets values; flags after it win; the resolved config is saved in the run."""
    import yaml

    from aelab.cli.main import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1\npreset: tiny\ndevice: cpu\nbatch_size: 16\nnoise_factor: 0.3\n")
    args = ["pretrain", "--config", str(cfg), "--data", str(data), "--batch-size", "64", "--out", str(tmp_path / "r")]
    assert main(args) == 0
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert (saved["epochs"], saved["preset"], saved["batch_size"], saved["noise_factor"]) == (1, "tiny", 64, 0.3)
    assert torch.load(tmp_path / "r" / "best.ckpt", weights_only=True)["config"]["noise_factor"] == 0.3


def test_a_time_budget_sets_the_epochs_from_the_first_one_and_the_schedule_ends_with_them(data, tmp_path, monkeypatch,
                                                                                         capsys):
    import types

    import aelab.train.trainer as trainer
    from aelab.results import StagePlan

    clock = iter(range(0, 10_000, 30))  # the trainer's clock moves 30 s per reading: each epoch "takes" 30 s
    monkeypatch.setattr(trainer, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    run = finetune(FinetuneConfig(data=str(data), epochs=20, budget=1.6, patience=20, out=str(tmp_path / "b"), **TINY))
    last = torch.load(run / "last.ckpt", weights_only=True)
    assert last["fit_state"]["planned_epochs"] == 3  # 96 s of budget / 30 s per epoch
    assert len(last["fit_state"]["history"]) == 3
    assert last["scheduler"]["T_max"] == 3  # the cosine schedule ends with the last planned epoch
    # the plan, in the run folder for the report: 3 of 20 epochs is cut short, and the user is told so
    assert StagePlan.read(run) == StagePlan(96.0, 30.0, 3, 20) and StagePlan.read(run).cut_short
    assert "only 3 of its 20 epochs fit in its 1.6-minute time budget" in capsys.readouterr().err
    clock = iter(range(0, 10_000, 30))
    near = finetune(FinetuneConfig(data=str(data), epochs=20, budget=1.3, patience=20, out=str(tmp_path / "r"), **TINY))
    # 78 s / 30 s = 2.6 epochs: the nearest whole number, 3 (90 s, 12 s over), not 2 (60 s, 18 s unused)
    saved = torch.load(near / "last.ckpt", weights_only=True)["fit_state"]
    assert saved["planned_epochs"] == 3
    # the cosine schedule over the 3 planned epochs, from the second one on: (1 + cos(pi t / 3)) / 2 of the rate
    rates = [row["lr"] / saved["history"][0]["lr"] for row in saved["history"]]
    assert rates == pytest.approx([1.0, 0.75, 0.25])
    free = finetune(FinetuneConfig(data=str(data), epochs=4, budget=None, patience=20, out=str(tmp_path / "n"), **TINY))
    assert len(torch.load(free / "last.ckpt", weights_only=True)["fit_state"]["history"]) == 4
    assert StagePlan.read(free) is None  # no budget, no plan


def test_the_budget_replans_at_the_second_epochs_speed_when_the_first_was_slow(data, tmp_path, monkeypatch):
    """The first epoch carries one-time costs: 60 s, then 30 s each. 150 s planned from the first is 3 epochs
    (2.5 rounds up); at the second one's speed 2 + (150 - 90) / 30 = 4, and the cosine continues in closed form."""
    import math
    import types

    import aelab.train.trainer as trainer
    from aelab.results import StagePlan

    clock = iter([0, 60] + list(range(60, 10_000, 30)))  # (start, end) readings: 60 s, then 30 s per epoch
    monkeypatch.setattr(trainer, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    run = finetune(FinetuneConfig(data=str(data), epochs=20, budget=2.5, patience=20, out=str(tmp_path / "b"), **TINY))
    saved = torch.load(run / "last.ckpt", weights_only=True)
    assert saved["fit_state"]["planned_epochs"] == 4 and len(saved["fit_state"]["history"]) == 4
    assert StagePlan.read(run) == StagePlan(150.0, 60.0, 4, 20)
    rates = [row["lr"] / saved["fit_state"]["history"][0]["lr"] for row in saved["fit_state"]["history"]]
    # epoch 2 on the 3-epoch plan, epochs 3-4 on the 4-epoch cosine's closed form: (1 + cos(pi t / T)) / 2
    expected = [1.0, (1 + math.cos(math.pi / 3)) / 2] + [(1 + math.cos(math.pi * t / 4)) / 2 for t in (2, 3)]
    assert rates == pytest.approx(expected)


def test_a_photo_model_with_stem_and_pool_head_predicts_from_its_checkpoint(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for c, colour in enumerate([(200, 40, 40), (40, 40, 200)]):  # red and blue photos: colour, so "photo"
        for i in range(8):
            folder = root / "dev" / "labelled" / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            img = np.clip(rng.normal(colour, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i}.png")
    (root / "test").mkdir()
    for i in range(6):
        img = np.clip(rng.normal([(200, 40, 40), (40, 40, 200)][i % 2], 30, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "test" / f"{i}.png")
    run = finetune(FinetuneConfig(data=str(root), epochs=3, out=str(tmp_path / "ft"), **{**TINY, "batch_size": 4}))
    ckpt = torch.load(run / "best.ckpt", weights_only=True)
    assert ckpt["model_config"]["stem"] == 24 and ckpt["model_config"]["head"] == "pool"
    # supervised training keeps the U-Net on photos (aelab.data.kind.PHOTO_ARCH_METHODS: FixMatch only)
    assert ckpt["model_config"]["arch"] == "unet"
    assert json.loads((run / "model.json").read_text())["class"] == "ResUNetAutoencoder"
    assert ckpt["preprocessing"]["mean"][0] > ckpt["preprocessing"]["mean"][1]  # fitted: red is brighter than green
    out = predict(PredictConfig(model=str(run), data=str(root), out=str(tmp_path / "p"), device="cpu"))
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == "id,label" and len(rows) == 7


def test_finetune_reads_the_init_checkpoint_once_and_decides_the_image_kind_once(pretrained, data, tmp_path,
                                                                                  monkeypatch):
    import importlib

    import aelab.data.kind as kind

    ft = importlib.import_module("aelab.train.finetune")  # the package's `finetune` is the function
    loads, kinds = [], []
    load, image_kind = ft.load_checkpoint, kind.image_kind
    monkeypatch.setattr(ft, "load_checkpoint", lambda path, *a, **k: (loads.append(str(path)), load(path, *a, **k))[1])
    monkeypatch.setattr(kind, "image_kind", lambda images, *a, **k: (kinds.append(1), image_kind(images, *a, **k))[1])
    finetune(FinetuneConfig(init_from=str(pretrained), data=str(data), epochs=1, method="fixmatch",
                            out=str(tmp_path / "ft"), **TINY))  # auto augment and auto strong augment
    assert loads == [str(pretrained)] and len(kinds) == 1
    kinds.clear()
    finetune(FinetuneConfig(data=str(data), epochs=1, out=str(tmp_path / "rand"), **TINY))  # auto head, stem, augment
    assert len(kinds) == 1


def _stripes(root, n_per_class, rng, labels_csv=None):
    """Colour photos of two classes, horizontal and vertical stripes, in random colours and phases."""
    rows = []
    for i in range(2 * n_per_class):
        c = i % 2
        phase, colour = rng.integers(0, 8), rng.integers(60, 255, 3)
        wave = (np.arange(32) + phase) % 8 < 4
        mask = np.repeat(wave[:, None], 32, 1) if c == 0 else np.repeat(wave[None, :], 32, 0)
        img = np.clip(mask[..., None] * colour + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
        folder = root / f"c{c}" if labels_csv is None else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i}.png")
        rows.append(f"{i},c{c}")
    if labels_csv is not None:
        labels_csv.write_text("id,label\n" + "\n".join(rows) + "\n")


def test_the_photo_cnn_learns_and_predicts_unseen_photos_above_chance(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "stripes"
    _stripes(root / "dev" / "labelled", 16, rng)
    _stripes(root / "test", 20, rng, labels_csv=root / "test_labels.csv")
    run = finetune(FinetuneConfig(data=str(root), arch="cnn", epochs=20, patience=20, out=str(tmp_path / "ft"),
                                  **{**TINY, "batch_size": 8}))
    ckpt = torch.load(run / "best.ckpt", weights_only=True)
    assert ckpt["model_config"]["arch"] == "cnn" and ckpt["model_config"]["width"] == 8  # the preset's cnn width
    assert json.loads((run / "model.json").read_text())["class"] == "PlainCNN"
    from aelab.train.predict import predict_result

    res = predict_result(PredictConfig(model=str(run), data=str(root), out=str(tmp_path / "p"), device="cpu"))
    assert res.metrics["accuracy"] >= 0.8  # 40 unseen photos of 2 classes; chance is 0.5
    for pooling in ("flatten", "mean"):  # its embedding is already pooled: both give the last block's 16 channels
        out = embed(EmbedConfig(model=str(run), data=str(root), pooling=pooling, out=str(tmp_path / pooling),
                                device="cpu"))
        assert np.load(out / "embeddings.npy").shape == (32 + 40, 16)


def test_grey_images_keep_the_unet_and_the_cnn_refuses_to_reconstruct(data, pretrained, tmp_path):
    from aelab.errors import AelabError

    run = finetune(FinetuneConfig(data=str(data), epochs=1, out=str(tmp_path / "grey"), **TINY))
    assert torch.load(run / "best.ckpt", weights_only=True)["model_config"]["arch"] == "unet"
    with pytest.raises(AelabError, match="no decoder"):  # refused before any folder is made
        finetune(FinetuneConfig(data=str(data), method="course", arch="cnn", out=str(tmp_path / "c"), **TINY))
    assert not (tmp_path / "c").exists()
    with pytest.raises(AelabError, match="holds a unet network"):
        finetune(FinetuneConfig(data=str(data), init_from=str(pretrained), arch="cnn", out=str(tmp_path / "i"),
                                **TINY))
    # the course method from random weights with arch auto gets the U-Net, whatever the images
    run = finetune(FinetuneConfig(data=str(data), method="course", epochs=1, out=str(tmp_path / "cu"), **TINY))
    assert torch.load(run / "best.ckpt", weights_only=True)["model_config"]["arch"] == "unet"
    cnn = finetune(FinetuneConfig(data=str(data), arch="cnn", epochs=1, out=str(tmp_path / "gc"), **TINY))
    assert torch.load(cnn / "best.ckpt", weights_only=True)["model_config"]["head"] == "pool"  # auto head
    with pytest.raises(AelabError, match=r"is the U-Net's \(arch unet\)"):
        finetune(FinetuneConfig(data=str(data), arch="cnn", head="bn-mlp", out=str(tmp_path / "h"), **TINY))


def test_a_photo_cnn_run_resumes_to_the_same_weights_and_freezes_its_blocks(tmp_path, monkeypatch):
    from aelab.data.kind import PHOTO_KMEANS_STEM, PHOTO_STEM

    rng = np.random.default_rng(1)
    root = tmp_path / "stripes"
    _stripes(root / "dev" / "labelled", 6, rng)
    _stripes(root / "dev" / "unlabelled", 8, rng, labels_csv=tmp_path / "unused.csv")
    # FixMatch on photos gets the CNN (arch auto); with an explicit U-Net head, the U-Net, not a refusal
    once = dict(data=str(root), method="fixmatch", epochs=1, **{**TINY, "batch_size": 4})
    fm = finetune(FinetuneConfig(out=str(tmp_path / "fm"), **once))
    fm_config = torch.load(fm / "best.ckpt", weights_only=True)["model_config"]
    assert (fm_config["arch"], fm_config["stem_kind"], fm_config["stem"]) == ("cnn", "whiten", PHOTO_STEM)
    mlp = finetune(FinetuneConfig(out=str(tmp_path / "mlp"), head="bn-mlp", **once))
    assert torch.load(mlp / "best.ckpt", weights_only=True)["model_config"]["arch"] == "unet"
    # --stem_kind kmeans: the k-means first layer, fitted on the photos and rebuilt from the checkpoint
    from aelab.models.whiten import KMeansStem
    from aelab.train.checkpoint import load_model, resolve_checkpoint

    km = finetune(FinetuneConfig(out=str(tmp_path / "km"), stem_kind="kmeans", **once))
    km_ckpt = torch.load(km / "best.ckpt", weights_only=True)
    assert (km_ckpt["model_config"]["stem_kind"], km_ckpt["model_config"]["stem"]) == ("kmeans", PHOTO_KMEANS_STEM)
    assert km_ckpt["state_dict"]["stem.centroids"].abs().sum() > 0
    model, _ = load_model(resolve_checkpoint(km))
    assert isinstance(model.stem, KMeansStem)
    assert torch.equal(model.stem.centroids, km_ckpt["state_dict"]["stem.centroids"])
    settings = dict(data=str(root), arch="cnn", epochs=3, patience=3, **{**TINY, "batch_size": 4})
    whole = finetune(FinetuneConfig(out=str(tmp_path / "whole"), **settings))
    interrupted(monkeypatch, lambda: finetune(FinetuneConfig(out=str(tmp_path / "cut"), **settings)))
    resumed = finetune(FinetuneConfig(resume=str(tmp_path / "cut")))
    a = torch.load(whole / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "last.ckpt", weights_only=True)
    assert a["model_config"] == b["model_config"] and b["model_config"]["arch"] == "cnn"
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, msg=k)

    frozen = finetune(FinetuneConfig(init_from=str(whole), freeze_encoder=True, out=str(tmp_path / "frozen"),
                                     **{**settings, "epochs": 1, "arch": "auto"}))
    f = torch.load(frozen / "last.ckpt", weights_only=True)
    assert f["model_config"]["arch"] == "cnn"  # the checkpoint's network
    for k, v in a["state_dict"].items():
        if k.startswith(("encoders.", "stem.")):  # the blocks, BatchNorm statistics included, stay as they were
            torch.testing.assert_close(f["state_dict"][k], v, msg=k)
    assert not torch.equal(f["state_dict"]["head.weight"], a["state_dict"]["head.weight"])  # the head trained


def test_study_1_passes_the_first_layer_to_the_rows_trained_from_random_weights(tmp_path):
    """``aelab run --stem_kind kmeans`` reaches the supervised and fixmatch rows; the default stays whitening."""
    from aelab.data.kind import PHOTO_KMEANS_STEM
    from aelab.errors import AelabError
    from aelab.layout import RunLayout
    from aelab.train.study import ClassificationStudyConfig, run_method

    rng = np.random.default_rng(2)
    root = tmp_path / "stripes"
    _stripes(root / "dev" / "labelled", 6, rng)
    _stripes(root / "dev" / "unlabelled", 8, rng, labels_csv=tmp_path / "unused.csv")
    assert ClassificationStudyConfig().stem_kind == FinetuneConfig().stem_kind == "whiten"
    cfg = ClassificationStudyConfig(methods="supervised,fixmatch", preset="tiny", stem_kind="kmeans",
                                    finetune_epochs=1, fixmatch_epochs=1, budget=None, device="cpu")
    for method in cfg.method_list():
        row = run_method(method, cfg, root, RunLayout(tmp_path / "run"))
        config = torch.load(f"{row.run}/best.ckpt", weights_only=True)["model_config"]
        assert (config["stem_kind"], config["stem"]) == ("kmeans", PHOTO_KMEANS_STEM), method
    with pytest.raises(AelabError, match="stem_kind"):
        ClassificationStudyConfig(stem_kind="pca")

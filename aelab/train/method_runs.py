"""How each built-in method of study 1 runs: ``run(cfg, data, layout, pretrained) -> MethodResult``.

``cfg`` is a `aelab.train.study.ClassificationStudyConfig`; each function trains into
``layout.method_run(<name>)``, predicts the test folder when the data have one and returns the method's
row. The registry (`aelab.train.methods`) names them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aelab.errors import NoUnlabelledImages
from aelab.layout import RunLayout
from aelab.results import MethodResult
from aelab.runs import atomic_write, write_csv

if TYPE_CHECKING:
    from aelab.data import DataLayout
    from aelab.data.decode import ImageSet

__all__ = ["StudyImages", "pretrain_denoise", "run_course", "run_course_noaug", "run_fixmatch", "run_kmeans_features",
           "run_label_spreading", "run_supervised", "run_vicreg", "save_probabilities", "stage_minutes",
           "score_test", "study_images"]


def engine(cfg) -> dict:
    """The engine options of ``cfg`` every training stage takes."""
    return cfg.engine().options()


def _labelled(data: Path):
    """The labelled folder of ``data``, scanned (paths and labels; nothing decoded)."""
    from aelab.data import resolve_layout, scan_labelled

    return scan_labelled(resolve_layout(data).require("labelled"))


def stage_minutes(cfg, stage: str, data: Path) -> float | None:
    """``cfg.minutes(stage)`` with the labelled images ``data`` holds (the supervised share grows with them:
    `aelab.train.methods.budget_shares`)."""
    return None if cfg.budget is None else cfg.minutes(stage, len(_labelled(data).paths))


def labels_per_class(data: Path) -> str:
    lab = _labelled(data)
    counts = np.bincount(lab.labels, minlength=len(lab.classes))
    return str(int(counts[0])) if counts.min() == counts.max() else f"{int(counts.min())}-{int(counts.max())}"


def require_unlabelled(data: Path, method: str) -> None:
    from aelab.data import resolve_layout

    if resolve_layout(data).unlabelled is None:
        raise NoUnlabelledImages(f"method {method} learns from unlabelled images, but {data} has no dev/unlabelled "
                                 "folder")


def pretrain_denoise(cfg, data: Path, out: Path) -> Path:
    """The course report's denoising pretraining on the unlabelled images (shared by ``course`` and
    ``course-noaug``)."""
    from aelab.train.pretrain import PretrainConfig, pretrain

    return pretrain(PretrainConfig(data=str(data), preset=cfg.preset, channels=cfg.channels, image_size=cfg.image_size,
                                   epochs=cfg.epochs("pretrain_epochs"), out=str(out),
                                   budget=stage_minutes(cfg, "pretrain", data), **engine(cfg)))


def finetune_and_predict(name: str, cfg, data: Path, layout: RunLayout, **settings) -> MethodResult:
    """Fine-tune (`aelab.train.finetune`) with ``settings`` into ``layout.method_run(name)``, then predict the test
    folder into ``layout.predict_run(name)``."""
    from aelab.data import resolve_layout
    from aelab.train.finetune import FinetuneConfig, finetune_result
    from aelab.train.predict import PredictConfig, predict_result

    t0 = time.perf_counter()
    ft = FinetuneConfig(data=str(data), preset=cfg.preset, channels=cfg.channels, image_size=cfg.image_size,
                        val_fraction=cfg.val_fraction, out=str(layout.method_run(name)),
                        budget=stage_minutes(cfg, name, data),
                        **settings,
                        **engine(cfg))
    trained = finetune_result(ft)
    result = MethodResult(name, trained.val_acc, trained.n_val, labels_per_class(data), run=str(trained.run_dir))
    if resolve_layout(data).test is not None:
        pred = predict_result(PredictConfig(model=str(trained.run_dir), data=str(data),
                                            out=str(layout.predict_run(name)), **engine(cfg)))
        result.test_acc = pred.metrics.get("accuracy")
        result.predictions = str(pred.predictions)
    result.seconds = round(time.perf_counter() - t0, 2)
    return result


def score_test(out: MethodResult, lay, classes: list[str], test, query_pred, path: Path) -> None:
    """Write a classical reference's ``predictions.csv`` and its test accuracy when the data have test labels."""
    from aelab.data import image_ids, read_labels_csv

    names = [classes[p] for p in query_pred]
    write_csv(path, ["id", "label"], zip(image_ids(test.paths), names))
    out.predictions = str(path)
    if lay.test_labels is not None:
        truth = read_labels_csv(lay.test_labels)
        pairs = [(truth[i], classes[p]) for i, p in zip(image_ids(test.paths), query_pred) if i in truth]
        out.test_acc = float(np.mean([t == p for t, p in pairs])) if pairs else None


@dataclass
class StudyImages:
    """The images every study-1 method sees, decoded at one size: the labelled ones with the shared split, the
    unlabelled ones and the test folder (None where the data have none)."""

    layout: DataLayout
    classes: list[str]
    images: np.ndarray
    labels: np.ndarray
    names: list[str]  # of the labelled images, relative to the labelled folder
    train_idx: np.ndarray
    val_idx: np.ndarray
    unlabelled: np.ndarray | None
    test: ImageSet | None


def study_images(cfg, data: Path, prep=None, unlabelled: bool = True) -> StudyImages:
    """Decode the study's images with ``prep`` (default: the preset's size and ``cfg.channels``) and split the
    labelled ones as the networks do (`split_indices` with ``cfg.val_fraction`` and ``cfg.seed``); the unlabelled
    images only when ``unlabelled``."""
    from aelab.data import Preprocessing, load_images, resolve_layout, scan_labelled
    from aelab.models import preset_config
    from aelab.train.loaders import split_indices

    if prep is None:
        mc = preset_config(cfg.preset, image_size=cfg.image_size, in_channels=cfg.channels)
        prep = Preprocessing(image_size=mc.image_size, channels=mc.in_channels)
    lay = resolve_layout(data)
    lab = scan_labelled(lay.require("labelled"))
    images = load_images(lab.paths, prep.image_size, prep.channels, strict=cfg.strict)
    kept = {Path(p).resolve() for p in images.paths}
    keep = [Path(p).resolve() in kept for p in lab.paths]
    labels = lab.labels[keep]
    # names as listed (not resolved: a folder of links names its images, not their targets)
    names = [Path(os.path.relpath(p, lay.labelled)).as_posix() for p, k in zip(lab.paths, keep) if k]
    unl = None
    if unlabelled and lay.unlabelled is not None:
        unl = prep.load(lay.unlabelled, strict=cfg.strict).images
    test = prep.load(lay.test, strict=cfg.strict) if lay.test is not None else None
    train_idx, val_idx = split_indices(len(labels), cfg.val_fraction, cfg.seed, labels)
    return StudyImages(lay, list(lab.classes), images.images, labels, names, train_idx, val_idx, unl, test)


def save_probabilities(path: Path, val: np.ndarray, test: np.ndarray | None, s: StudyImages) -> None:
    """``probabilities.npz``: validation and test class probabilities, with what identifies the images they are
    of (the validation images' names, the test ids, the class names), so a later method can check it combines like
    with like."""
    from aelab.data import image_ids

    arrays = dict(val=np.asarray(val, np.float32), val_names=np.array([s.names[i] for i in s.val_idx]),
                  classes=np.array(s.classes))
    if test is not None and s.test is not None:
        arrays.update(test=np.asarray(test, np.float32), test_ids=np.array(image_ids(s.test.paths)))
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


def _all_classes(proba: np.ndarray, s: StudyImages) -> np.ndarray:
    """``proba`` with a zero column for each class after the last one with labelled images (an empty folder)."""
    return np.pad(proba, ((0, 0), (0, len(s.classes) - proba.shape[1])))


def classical(cfg, data: Path, layout: RunLayout, name: str, baseline_fn) -> MethodResult:
    """A classical reference row: ``baseline_fn`` (the signature of `label_spreading_baseline`) on the
    decoded images at the preset's size, the same split as the networks; writes its ``predictions.csv`` (and its
    ``probabilities.npz`` when the reference gives probabilities)."""
    t0 = time.perf_counter()
    s = study_images(cfg, data)
    res = baseline_fn(s.images, s.labels, s.train_idx, s.val_idx, s.unlabelled,
                      None if s.test is None else s.test.images, seed=cfg.seed)
    out = MethodResult(name, float(np.mean(res.val_pred == s.labels[s.val_idx])), int(len(s.val_idx)),
                       labels_per_class(data))
    if s.test is not None:
        score_test(out, s.layout, s.classes, s.test, res.query_pred, layout.method_predictions(name))
    if res.val_proba is not None:
        layout.method_run(name).mkdir(parents=True, exist_ok=True)
        save_probabilities(layout.method_probabilities(name), _all_classes(res.val_proba, s),
                           None if res.query_proba is None else _all_classes(res.query_proba, s), s)
    out.seconds = round(time.perf_counter() - t0, 2)
    return out


def run_label_spreading(cfg, data: Path, layout: RunLayout, pretrained: Path | None = None) -> MethodResult:
    from aelab.train.baselines import label_spreading_baseline

    return classical(cfg, data, layout, "label-spreading", label_spreading_baseline)


def run_kmeans_features(cfg, data: Path, layout: RunLayout, pretrained: Path | None = None) -> MethodResult:
    from aelab.train.baselines import kmeans_features_baseline

    require_unlabelled(data, "kmeans-features")
    return classical(cfg, data, layout, "kmeans-features",
                     partial(kmeans_features_baseline, n_centroids=cfg.kmeans_features_centroids,
                             learner=cfg.kmeans_features_learner, augment=cfg.kmeans_features_augment,
                             pooling=cfg.kmeans_features_pooling, grid=cfg.kmeans_features_grid))


def _course(name: str, augment: str, cfg, data: Path, layout: RunLayout, pretrained: Path | None) -> MethodResult:
    if pretrained is None:
        pretrained = pretrain_denoise(cfg, data, layout.stage("pretrain"))
    return finetune_and_predict(name, cfg, data, layout, method="course",
                                init_from=str(pretrained), augment=augment, epochs=cfg.epochs("finetune_epochs"))


def run_course(cfg, data: Path, layout: RunLayout, pretrained: Path | None = None) -> MethodResult:
    return _course("course", cfg.course_augment, cfg, data, layout, pretrained)


def run_course_noaug(cfg, data: Path, layout: RunLayout, pretrained: Path | None = None) -> MethodResult:
    return _course("course-noaug", "none", cfg, data, layout, pretrained)


def run_supervised(cfg, data: Path, layout: RunLayout, pretrained: Path | None = None) -> MethodResult:
    return finetune_and_predict("supervised", cfg, data, layout, method="supervised", arch=cfg.arch,
                                stem_kind=cfg.stem_kind, epochs=cfg.epochs("finetune_epochs"),
                                patience=cfg.epochs("finetune_epochs"),
                                augment=cfg.supervised_augment)


def run_fixmatch(cfg, data: Path, layout: RunLayout, pretrained: Path | None = None) -> MethodResult:
    require_unlabelled(data, "fixmatch")
    return finetune_and_predict("fixmatch", cfg, data, layout, method="fixmatch", arch=cfg.arch,
                                stem_kind=cfg.stem_kind, epochs=cfg.epochs("fixmatch_epochs"),
                                class_thresholds=cfg.fixmatch_class_thresholds)


def run_vicreg(cfg, data: Path, layout: RunLayout, pretrained: Path | None = None) -> MethodResult:
    """VICReg pretraining on the unlabelled images (``vicreg_pretrain``), then a supervised fine-tune."""
    from aelab.train.pretrain import PretrainConfig, pretrain

    require_unlabelled(data, "vicreg")
    t0 = time.perf_counter()
    pre = pretrain(PretrainConfig(data=str(data), objective="vicreg", preset=cfg.preset, channels=cfg.channels,
                                  image_size=cfg.image_size, epochs=cfg.epochs("vicreg_epochs"), batch_size=128,
                                  patience=cfg.epochs("vicreg_epochs"), out=str(layout.stage("vicreg_pretrain")),
                                  budget=stage_minutes(cfg, "vicreg_pretrain", data), **engine(cfg)))
    res = finetune_and_predict("vicreg", cfg, data, layout, method="supervised",
                               init_from=str(pre), epochs=cfg.epochs("finetune_epochs"),
                               patience=cfg.epochs("finetune_epochs"),
                               augment=cfg.supervised_augment)
    res.seconds = round(time.perf_counter() - t0, 2)
    return res

"""``aelab anomaly fit``: the detector settings, the fit verb's config and result, and `anomaly_fit`.

Study 3 as library code (with `aelab.anomaly.score` and `aelab.anomaly.evaluate`): each verb takes a typed
config and returns a typed result; the CLI only parses flags into these configs, and ``aelab run`` composes the
same functions, passing results rather than re-reading files. Where the images come from (folders, the course
layout, MVTec AD) is `aelab.data.anomaly_sets`.

Example:
    >>> fit = anomaly_fit(AnomalyFitConfig(data="mvtec/bottle", out="runs/bottle"))      # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aelab.anomaly.base import DETECTOR_FILE, BaseDetector
from aelab.anomaly.detector import ReconstructionDetector
from aelab.anomaly.geometric import GeometricDetector
from aelab.anomaly.methods import default_method
from aelab.data.anomaly_sets import fit_normal_folder, mvtec_data, relative_names
from aelab.progress import info
from aelab.runs import save_config, to_plain, write_csv, write_json
from aelab.train.options import RunOptions

__all__ = ["DETECTOR_KEYS", "GEOMETRIC_KEYS", "SHARED_KEYS", "AnomalyFitConfig", "DetectorSettings", "FitResult",
           "GeometricSettings", "anomaly_fit", "make_detector", "write_skipped"]

_SIGNATURE = inspect.signature(ReconstructionDetector.__init__).parameters
# Parameters of ReconstructionDetector that `anomaly fit` passes through (random_state comes from --seed).
DETECTOR_KEYS: tuple[str, ...] = tuple(n for n in _SIGNATURE if n not in ("self", "random_state"))

_GEOMETRIC = inspect.signature(GeometricDetector.__init__).parameters
# Parameters of GeometricDetector set by `GeometricSettings` (the rest are shared with the reconstruction detector).
GEOMETRIC_KEYS: tuple[str, ...] = ("width", "flips", "shift", "heads", "augment", "score", "knn", "epochs",
                                   "batch_size", "lr", "weight_decay", "patience")
# Shared by both detectors: taken from the top-level settings.
SHARED_KEYS: tuple[str, ...] = ("image_size", "channels", "contamination", "threshold", "threshold_rule",
                                "val_fraction")


def _default(name: str):
    """The detector's default for ``name``: the one source of every detector option's default."""
    return _SIGNATURE[name].default


def _gdefault(name: str):
    return _GEOMETRIC[name].default


def rules_of(detector: type[BaseDetector]) -> dict:
    """A detector's own parameter rules (its ``_parameter_constraints`` and its base's): the settings that
    build it check the same rules (`aelab.train.options.rules_for`)."""
    return {**BaseDetector._parameter_constraints, **detector._parameter_constraints}


@dataclass
class GeometricSettings:
    """The geometric detector's own settings (``--geometric.NAME``; defaults = ``GeometricDetector()``'s).

    Attributes:
        width: channels of the CNN's first block (then 2x and 4x).
        flips: add a horizontal flip to the 4 rotations (8 transformations).
        shift: also translate by this many pixels in x and y (3 x 3 grid: 9 times the transformations); 0 = none.
        heads: joint (one softmax over all transformations) or separate (one per rotation, flip, x and y shift).
        augment: random translation of up to this many pixels while training.
        score: dirichlet (minus the log-density of the network's outputs under Dirichlet distributions fitted to
            the normal images'), transform (minus the mean log-probability of the right transformation), knn
            (feature kNN distance) or transform+knn (both, each divided by its spread over the held-out normal images).
        knn: neighbours of the knn score.
        epochs: maximum number of epochs.
        batch_size: images per step.
        lr: SGD learning rate (Nesterov momentum 0.9, cosine-annealed).
        weight_decay: SGD weight decay.
        patience: stop after this many epochs without a lower held-out score.
    """

    _parameter_constraints = rules_of(GeometricDetector)

    width: int = _gdefault("width")
    flips: bool = _gdefault("flips")
    shift: int = _gdefault("shift")
    heads: str = _gdefault("heads")
    augment: int = _gdefault("augment")
    score: str = _gdefault("score")
    knn: int = _gdefault("knn")
    epochs: int = _gdefault("epochs")
    batch_size: int = _gdefault("batch_size")
    lr: float = _gdefault("lr")
    weight_decay: float = _gdefault("weight_decay")
    patience: int = _gdefault("patience")


@dataclass
class DetectorSettings:
    """How the reconstruction detector is trained and how it scores (defaults = ``ReconstructionDetector()``'s).

    Shared by ``aelab anomaly fit`` and study 3 of ``aelab run`` (``--anomaly.NAME``).

    Attributes:
        method: auto, reconstruction or geometric (`aelab.anomaly.methods`): auto = reconstruction for grayscale
            images and the MVTec AD layout, geometric (transformation prediction, image scores only) for colour photos.
        geometric: the geometric detector's settings (``--geometric.NAME``); the threshold options below serve both.
        width: override the preset's first-block width.
        depth: number of poolings (4: a 2x2 bottleneck at 32x32; benchmarks/README.md); none = the preset's.
        skip_connections: keep the U-Net skips (the course report's network; they let anomalies be copied through).
        score: per-pixel map: mse, mae, ssim (1 - SSIM), gms (1 - gradient magnitude similarity), maps joined
            by + (each divided by its held-out normal median, e.g. mse+gms) or combined.
        reduction: map to image score: mean, max or topk (mean of the top_k share of pixels).
        top_k: share of pixels averaged by the topk reduction.
        smoothing: Gaussian sigma in pixels applied to the map before the reduction (0 = none).
        ssim_window: odd SSIM window side (7 suits 28-64 pixel images).
        contamination: the false-alarm rate to stay under (alpha of the conformal threshold).
        threshold: a manual threshold instead of the rule.
        threshold_rule: auto (conformal, or f1 with --val_anomalous), conformal, quantile, f1 or manual.
        epochs: maximum number of epochs.
        batch_size: images per step.
        lr: AdamW learning rate (cosine-annealed to 0 over the epochs).
        weight_decay: AdamW weight decay.
        corruption: structured (patches, strokes and blobs pasted into training images, restored to the clean
            image) or none.
        noise_factor: std of Gaussian input noise while training (0 = none).
        val_fraction: share of normal images held out for early stopping and the threshold.
        patience: stop after this many epochs without a lower held-out MSE.
    """

    _parameter_constraints = rules_of(ReconstructionDetector)

    width: int | None = _default("width")
    depth: int | None = _default("depth")
    skip_connections: bool = _default("skip_connections")
    score: str = _default("score")
    reduction: str = _default("reduction")
    top_k: float = _default("top_k")
    smoothing: float = _default("smoothing")
    ssim_window: int = _default("ssim_window")
    contamination: float = _default("contamination")
    threshold: float | None = _default("threshold")
    threshold_rule: str = _default("threshold_rule")
    epochs: int = _default("epochs")
    batch_size: int = _default("batch_size")
    lr: float = _default("lr")
    weight_decay: float = _default("weight_decay")
    corruption: str = _default("corruption")
    noise_factor: float = _default("noise_factor")
    val_fraction: float = _default("val_fraction")
    patience: int = _default("patience")
    method: str = "auto"
    geometric: GeometricSettings = field(default_factory=GeometricSettings)


@dataclass
class AnomalyFitConfig(RunOptions, DetectorSettings):
    """Settings of ``aelab anomaly fit``: the normal images, the network's input, and the detector
    (`DetectorSettings`); ``--seed`` is the detector's ``random_state``.

    Attributes:
        data: a root in the MVTec AD layout (uses ROOT/train/good) or in the course layout (uses ROOT/anomaly/normal).
        normal: folder of normal images only (overrides --data).
        val_anomalous: optional folder of known anomalies; the threshold then maximises F1 on them and the held-out
            normals.
        recursive: look for images in subfolders too.
        preset: network size: tiny (tests), small (CPU default) or course (the course report's network, for GPUs).
        image_size: override the preset's square input size.
        channels: 1 (grayscale) or 3 (RGB); normal and scored images are all converted to this; none = 3.
    """

    data: str | None = None
    normal: str | None = None
    val_anomalous: str | None = None
    recursive: bool = False
    preset: str = _default("preset")
    image_size: int | None = _default("image_size")
    channels: int | None = _default("channels")


@dataclass
class FitResult:
    """A fitted detector and where it was written.

    Attributes:
        detector: the fitted `ReconstructionDetector` or `GeometricDetector` (threshold set).
        run_dir: the run folder (``detector.ckpt``, ``threshold.json``, ``split.csv``, ...).
        normal_dir: the folder of normal images it was fitted on.
        threshold: the summary written to ``threshold.json``.
    """

    detector: ReconstructionDetector | GeometricDetector
    run_dir: Path
    normal_dir: Path
    threshold: dict = field(default_factory=dict)

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / DETECTOR_FILE


def write_skipped(run_dir: Path, skipped) -> None:
    """``skipped.csv`` (``filename,reason``) when some files could not be read."""
    if skipped:
        write_csv(run_dir / "skipped.csv", ["filename", "reason"], [(str(p), r) for p, r in skipped])


def anomaly_fit(cfg: AnomalyFitConfig) -> FitResult:
    """Fit a detector (``cfg.method``) on normal images; write the run folder.

    The folder holds ``config.yaml``, ``metrics.csv``, ``best.ckpt``/``last.ckpt`` (training),
    ``detector.ckpt`` (the detector with its threshold), ``threshold.json`` (rule, value, and for
    the conformal rule the expected false-alarm rate and its 95 % interval), ``split.csv``
    (``filename,split``: which normal images trained the model and which were held out) and
    ``skipped.csv`` when some files could not be read.
    """
    from aelab.train.engine import shared_run_dir

    normal = fit_normal_folder(cfg.data, cfg.normal)
    # Under --devices N the N processes start here; rank 0 creates the folder and alone writes files.
    fabric = cfg.engine().fabric()
    run_dir = shared_run_dir(fabric, cfg.out, "anomaly")
    if fabric.global_rank == 0:
        save_config(run_dir, cfg)
    method = default_method(cfg.method, normal, mvtec=cfg.normal is None and mvtec_data(cfg.data) is not None,
                            channels=cfg.channels, recursive=cfg.recursive)
    info(f"[anomaly] fitting a {method} detector on normal images in {normal} -> {run_dir}")
    det = make_detector(cfg, method)
    det.fit(str(normal), anomalies=None if cfg.val_anomalous is None else str(cfg.val_anomalous),
            engine=cfg.engine(), run_dir=str(run_dir), recursive=cfg.recursive)
    if fabric.global_rank != 0:
        return FitResult(det, run_dir, normal, {})
    det.save(run_dir / DETECTOR_FILE)
    th = det.threshold_info_
    interval = th.false_alarm_interval()
    summary = dict(
        th.to_dict(), false_alarm_interval=None if interval is None else list(interval), method=det.method,
        score=det.score,
        reduction=getattr(det, "reduction", None), contamination=det.contamination,
        held_out_false_alarm_rate=float(np.mean(det.val_scores_ > det.threshold_)),
        n_train=len(det.train_files_), n_held_out=len(det.val_files_), n_skipped=len(det.skipped_),
        best_epoch=det.best_epoch_ + 1, score_medians=getattr(det, "score_medians_", None),
    )
    write_json(run_dir / "threshold.json", to_plain(summary))
    rows = [(f, "train") for f in relative_names(det.train_files_, normal)]
    rows += [(f, "held_out") for f in relative_names(det.val_files_, normal)]
    write_csv(run_dir / "split.csv", ["filename", "split"], rows)
    write_skipped(run_dir, det.skipped_)
    rate = th.expected_false_alarm_rate
    expected = "" if rate is None else f", expected false-alarm rate {rate:.3f}"
    info(f"[anomaly] threshold {det.threshold_:.5g} ({th.rule}{expected}); detector -> {run_dir / DETECTOR_FILE}")
    return FitResult(det, run_dir, normal, summary)


def make_detector(cfg: AnomalyFitConfig, method: str) -> BaseDetector:
    """The unfitted detector of ``method`` (reconstruction or geometric) with the settings of ``cfg``."""
    if method == "geometric":
        g = cfg.geometric
        shared = {k: getattr(cfg, k) for k in SHARED_KEYS}
        return GeometricDetector(**shared, **{k: getattr(g, k) for k in GEOMETRIC_KEYS}, random_state=cfg.seed)
    return ReconstructionDetector(**{k: getattr(cfg, k) for k in DETECTOR_KEYS}, random_state=cfg.seed)

"""Study 3 as library code: fit, score and evaluate a reconstruction detector on folders.

Each workflow takes a typed config and returns a typed result; the CLI (``aelab anomaly
fit|score|evaluate``) only parses flags into these configs, and ``aelab run`` composes the same
functions (`aelab.pipeline_anomaly`), passing results rather than re-reading files.

Data come from explicit folders, from a root in the course layout (``ROOT/anomaly/normal`` and
``ROOT/anomaly/anomalous``) or from a root in the MVTec AD layout (``ROOT/train/good``,
``ROOT/test/<good or defect>``, ``ROOT/ground_truth/<defect>/<name>_mask.png``; see
`aelab.data.mvtec`); with masks, ``evaluate`` adds pixel AUROC and PRO.

Example:
    >>> fit = anomaly_fit(AnomalyFitConfig(data="mvtec/bottle", out="runs/bottle"))      # doctest: +SKIP
    >>> ev = anomaly_evaluate(AnomalyEvaluateConfig(data="mvtec/bottle"), detector=fit.detector)  # doctest: +SKIP
    >>> ev.metrics.auroc, ev.metrics.pixel_auroc                                          # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aelab.anomaly import sharding
from aelab.anomaly.detector import DETECTOR_FILE, ReconstructionDetector
from aelab.anomaly.geometric import GeometricDetector
from aelab.anomaly.methods import default_method, load_detector
from aelab.anomaly.metrics import AnomalyEvaluation, evaluate_scores
from aelab.errors import AelabError, DataError
from aelab.progress import info
from aelab.runs import atomic_save_image, atomic_save_npy, save_config, to_plain, write_csv, write_json
from aelab.train.options import RunOptions

__all__ = [
    "DETECTOR_KEYS",
    "AnomalyEvaluateConfig",
    "AnomalyFitConfig",
    "AnomalyScoreConfig",
    "EvaluateResult",
    "FitResult",
    "ScoreRunResult",
    "DetectorSettings",
    "GeometricSettings",
    "anomaly_evaluate",
    "anomaly_fit",
    "anomaly_score",
]

_SIGNATURE = inspect.signature(ReconstructionDetector.__init__).parameters
# Parameters of ReconstructionDetector that `anomaly fit` passes through (all but run_dir).
DETECTOR_KEYS: tuple[str, ...] = tuple(n for n in _SIGNATURE if n not in ("self", "run_dir"))


_GEOMETRIC = inspect.signature(GeometricDetector.__init__).parameters
# Parameters of GeometricDetector set by `GeometricSettings` (the rest are shared with the reconstruction detector).
GEOMETRIC_KEYS: tuple[str, ...] = ("width", "flips", "shift", "heads", "augment", "score", "knn", "epochs",
                                   "batch_size", "lr", "weight_decay", "patience")
# Shared by both detectors: taken from the top-level settings.
SHARED_KEYS: tuple[str, ...] = ("image_size", "channels", "contamination", "threshold", "threshold_rule", "val_fraction",
                                "recursive", "strict", "seed", "device", "devices", "precision")


def _default(name: str):
    """The detector's default for ``name``: the one source of every detector option's default."""
    return _SIGNATURE[name].default


def _gdefault(name: str):
    return _GEOMETRIC[name].default


@dataclass
class GeometricSettings:
    """The geometric detector's own settings (``--geometric.NAME``; defaults = ``GeometricDetector()``'s).

    Attributes:
        width: channels of the CNN's first block (then 2x and 4x).
        flips: add a horizontal flip to the 4 rotations (8 transformations).
        shift: also translate by this many pixels in x and y (3 x 3 grid: 9 times the transformations); 0 = none.
        heads: joint (one softmax over all transformations) or separate (one per rotation, flip, x and y shift).
        augment: random translation of up to this many pixels while training.
        score: transform (minus the mean log-probability of the right transformation) or knn (feature kNN distance).
        knn: neighbours of the knn score.
        epochs: maximum number of epochs.
        batch_size: images per step.
        lr: SGD learning rate (Nesterov momentum 0.9, cosine-annealed).
        weight_decay: SGD weight decay.
        patience: stop after this many epochs without a lower held-out score.
    """

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
        corruption: structured (patches, strokes and blobs pasted into training images, restored to the clean image) or none.
        noise_factor: std of Gaussian input noise while training (0 = none).
        val_fraction: share of normal images held out for early stopping and the threshold.
        patience: stop after this many epochs without a lower held-out MSE.
    """

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
    """Settings of ``aelab anomaly fit``: the normal images, the network's input, and the detector (`DetectorSettings`).

    Attributes:
        data: a root in the MVTec AD layout (uses ROOT/train/good) or in the course layout (uses ROOT/anomaly/normal).
        normal: folder of normal images only (overrides --data).
        val_anomalous: optional folder of known anomalies; the threshold then maximises F1 on them and the held-out normals.
        recursive: look for images in subfolders too.
        preset: network size: tiny (tests), small (CPU default) or course (the course report's network, for GPUs).
        image_size: override the preset's square input size.
        channels: 1 (grayscale) or 3 (RGB); normal and scored images are all converted to this; none = 3.
    """

    data: str | None = None
    normal: str | None = None
    val_anomalous: str | None = None
    recursive: bool = _default("recursive")
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


def _mvtec(root: str | None):
    """The `MVTecData` of ``root`` when it is in the MVTec AD layout, else ``None``."""
    if root is None:
        return None
    from aelab.data.mvtec import is_mvtec, read_mvtec

    return read_mvtec(root) if is_mvtec(root) else None


def _layout_part(data: str | None, part: str):
    if data is None:
        return None
    from aelab.data import resolve_layout

    return getattr(resolve_layout(data), part)


def _relative(paths, base: Path) -> list[str]:
    base = Path(base).absolute()
    return [Path(p).absolute().relative_to(base).as_posix() if Path(p).absolute().is_relative_to(base) else str(p) for p in paths]


def _write_skipped(run_dir: Path, skipped) -> None:
    if skipped:
        write_csv(run_dir / "skipped.csv", ["filename", "reason"], [(str(p), r) for p, r in skipped])


def _fit_normal_dir(cfg: AnomalyFitConfig) -> Path:
    if cfg.normal is not None:
        return Path(cfg.normal)
    if cfg.data is not None and _mvtec(cfg.data) is not None:
        return Path(cfg.data) / "train" / "good"
    normal = _layout_part(cfg.data, "anomaly_normal")
    if normal is None:
        where = f"{cfg.data} has neither train/good (MVTec AD) nor anomaly/normal; " if cfg.data else ""
        raise DataError(f"{where}pass --normal DIR (normal images only) or --data ROOT (MVTec AD layout or ROOT/anomaly/normal/)")
    return Path(normal)


def anomaly_fit(cfg: AnomalyFitConfig) -> FitResult:
    """Fit a reconstruction detector on normal images; write the run folder.

    The folder holds ``config.yaml``, ``metrics.csv``, ``best.ckpt``/``last.ckpt`` (training),
    ``detector.ckpt`` (the detector with its threshold), ``threshold.json`` (rule, value, and for
    the conformal rule the expected false-alarm rate and its 95 % interval), ``split.csv``
    (``filename,split``: which normal images trained the model and which were held out) and
    ``skipped.csv`` when some files could not be read.
    """
    from aelab.train.engine import make_fabric, shared_run_dir

    normal = _fit_normal_dir(cfg)
    # Under --devices N the N processes start here; rank 0 creates the folder and alone writes files.
    fabric = make_fabric(cfg.device, cfg.devices, cfg.precision, num_nodes=cfg.num_nodes)
    run_dir = shared_run_dir(fabric, cfg.out, "anomaly")
    if fabric.global_rank == 0:
        save_config(run_dir, cfg)
    method = default_method(cfg.method, normal, mvtec=cfg.normal is None and _mvtec(cfg.data) is not None,
                            channels=cfg.channels, recursive=cfg.recursive)
    info(f"[anomaly] fitting a {method} detector on normal images in {normal} -> {run_dir}")
    det = make_detector(cfg, method, run_dir=str(run_dir))
    det.fit(str(normal), anomalies=None if cfg.val_anomalous is None else str(cfg.val_anomalous))
    if fabric.global_rank != 0:
        return FitResult(det, run_dir, normal, {})
    det.save(run_dir / DETECTOR_FILE)
    th = det.threshold_info_
    interval = th.false_alarm_interval()
    summary = dict(
        th.to_dict(), false_alarm_interval=None if interval is None else list(interval), method=det.method, score=det.score,
        reduction=getattr(det, "reduction", None), contamination=det.contamination,
        held_out_false_alarm_rate=float(np.mean(det.val_scores_ > det.threshold_)),
        n_train=len(det.train_files_), n_held_out=len(det.val_files_), n_skipped=len(det.skipped_),
        best_epoch=det.best_epoch_ + 1, score_medians=getattr(det, "score_medians_", None),
    )
    write_json(run_dir / "threshold.json", to_plain(summary))
    rows = [(f, "train") for f in _relative(det.train_files_, normal)]
    rows += [(f, "held_out") for f in _relative(det.val_files_, normal)]
    write_csv(run_dir / "split.csv", ["filename", "split"], rows)
    _write_skipped(run_dir, det.skipped_)
    expected = "" if th.expected_false_alarm_rate is None else f", expected false-alarm rate {th.expected_false_alarm_rate:.3f}"
    info(f"[anomaly] threshold {det.threshold_:.5g} ({th.rule}{expected}); detector -> {run_dir / DETECTOR_FILE}")
    return FitResult(det, run_dir, normal, summary)


def make_detector(cfg: AnomalyFitConfig, method: str, run_dir: str | None = None):
    """The unfitted detector of ``method`` (reconstruction or geometric) with the settings of ``cfg``."""
    if method == "geometric":
        g = cfg.geometric
        return GeometricDetector(**{k: getattr(cfg, k) for k in SHARED_KEYS}, **{k: getattr(g, k) for k in GEOMETRIC_KEYS},
                                 run_dir=run_dir)
    return ReconstructionDetector(**{k: getattr(cfg, k) for k in DETECTOR_KEYS}, run_dir=run_dir)


def _load_detector(model: str | None, cfg, detector=None):
    if detector is None:
        if model is None:
            raise AelabError("no model: pass --model RUN (an `aelab anomaly fit` run folder) or its detector.ckpt")
        detector = load_detector(model, device=cfg.device)
    detector.strict, detector.recursive = cfg.strict, cfg.recursive
    if cfg.threshold is not None:
        detector.set_threshold(cfg.threshold, rule="manual")
    return detector


@dataclass
class AnomalyScoreConfig(RunOptions):
    """Settings of ``aelab anomaly score``.

    Attributes:
        model: an `aelab anomaly fit` run folder, or its detector.ckpt.
        images: folder of images to score.
        recursive: look for images in subfolders too.
        threshold: override the stored threshold.
        top: how many of the most anomalous images to show in figures/most_anomalous.png.
        maps: write each image's anomaly map to maps/ (a .npy array and a .png heat map).
        batch_size: images per forward pass; under --devices N each process scores whole batches.
    """

    model: str | None = None
    images: str | None = None
    recursive: bool = False
    threshold: float | None = None
    top: int = 8
    maps: bool = True
    batch_size: int = 256


@dataclass
class ScoreRunResult:
    """What ``anomaly score`` wrote: the run folder, counts, and the maps' folder and colour scale."""

    run_dir: Path
    n_images: int
    n_anomalies: int
    maps_dir: Path | None = None
    map_scale: float | None = None


def _maps(det: ReconstructionDetector, images: np.ndarray, chunk: int) -> np.ndarray:
    return np.concatenate([det.anomaly_map(images[i : i + chunk]) for i in range(0, len(images), chunk)])


def _sharded_scores(fabric, det: ReconstructionDetector, data, batch_size: int, maps: bool):
    """``(ScoreResult, maps or None)`` of all images, scored across the processes (see `aelab.anomaly.sharding`)."""
    from aelab.anomaly.inputs import ScoreResult
    from aelab.anomaly.sharding import per_image

    def scored(a: int, b: int):
        s, loss = det._score(data.images[a:b], batch_size)
        return s, np.full(len(s), np.nan) if loss is None else loss  # no reconstruction: no loss

    n = len(data.images)
    scores, loss = per_image(fabric, scored, n, batch_size)
    th = det.threshold_info_
    res = ScoreResult(scores, loss, th.normalize(scores), th.predict(scores), data.paths, data.skipped)
    maps = maps and det.has_maps
    amaps = per_image(fabric, lambda a, b: (_maps(det, data.images[a:b], batch_size),), n, batch_size)[0] if maps else None
    return res, amaps


def _case_figure(det, images: np.ndarray, labels: list[str], path: Path, title: str, masks: np.ndarray | None = None) -> Path:
    """image | reconstruction | map | overlay rows for a detector with maps, else a grid of the images."""
    from aelab.anomaly.figures import image_panels, reconstruction_panels

    if not det.has_maps:
        return image_panels(images, labels, path, title=title)
    rec = det.reconstruct(images)
    return reconstruction_panels(rec.images, rec.reconstruction, rec.error_map, labels, path, title=title, masks=masks)


def _write_maps(maps: np.ndarray, names: list[str], out: Path) -> float:
    """``out/<name>.npy`` (the map) and ``out/<name>.png`` (heat map on one colour scale for all
    images: 0 to the 99.9th percentile of all map values here; returned, and kept in summary.json)."""
    from PIL import Image

    from aelab.anomaly.figures import heatmap_rgb

    scale = float(np.quantile(maps, 0.999)) or 1.0
    for name, amap in zip(names, maps):
        stem = out / Path(name).with_suffix("")
        atomic_save_npy(stem.with_suffix(".npy"), amap.astype(np.float32))  # never through a link (issue 22)
        atomic_save_image(Image.fromarray(heatmap_rgb(amap, scale)), stem.with_suffix(".png"))
    return scale


def anomaly_score(cfg: AnomalyScoreConfig, detector: ReconstructionDetector | None = None) -> ScoreRunResult:
    """Score a folder: ``anomaly_scores.csv`` (``filename,score,normalized_score,is_anomaly``,
    highest first), ``maps/`` (per image ``<name>.npy`` and a ``<name>.png`` heat map; not for a
    detector without maps, the geometric one), ``figures/most_anomalous.png`` (image |
    reconstruction | map | overlay of the ``top`` highest; the images alone without maps) and
    ``summary.json``. ``detector``: use this fitted detector instead of ``--model``.
    """
    det = _load_detector(cfg.model, cfg, detector)
    if cfg.images is None:
        raise AelabError("no images: pass --images DIR")
    fabric = sharding.launch(cfg)  # under --devices N the other processes start here (all checks done)
    if fabric is not None:
        det.device = str(fabric.device)
    data = sharding.images_once(fabric, det, cfg.images)
    res, maps = _sharded_scores(fabric, det, data, cfg.batch_size, cfg.maps)
    run_dir = sharding.run_dir_once(fabric, cfg.out, "anomaly-score")
    if not sharding.is_writer(fabric):
        return ScoreRunResult(run_dir, len(res.scores), int(res.is_anomaly.sum()))
    save_config(run_dir, cfg)
    names = _relative(data.paths, Path(cfg.images))
    order = np.argsort(-res.scores, kind="stable")  # ties keep the natural file order
    write_csv(
        run_dir / "anomaly_scores.csv", ["filename", "score", "normalized_score", "is_anomaly"],
        ((names[i], float(res.scores[i]), float(res.normalized[i]), int(res.is_anomaly[i])) for i in order),
    )
    scale = _write_maps(maps, names, run_dir / "maps") if maps is not None else None
    top = order[: max(cfg.top, 0)]
    if len(top):
        labels = [f"{names[i]}\n{det.score} {res.scores[i]:.4g}" for i in top]
        _case_figure(det, data.images[top], labels, run_dir / "figures" / "most_anomalous.png",
                     title=f"most anomalous (threshold {det.threshold_:.4g})")
    _write_skipped(run_dir, data.skipped)
    n_anom = int(res.is_anomaly.sum())
    write_json(run_dir / "summary.json", dict(
        model=str(cfg.model), images=str(cfg.images), n_images=len(names), n_anomalies=n_anom,
        n_skipped=len(data.skipped), threshold=det.threshold_, threshold_rule=det.threshold_info_.rule, score=det.score,
        reduction=getattr(det, "reduction", None), method=det.method, map_scale=scale,
    ))
    info(f"[anomaly] {n_anom} of {len(names)} images above the threshold -> {run_dir / 'anomaly_scores.csv'}")
    return ScoreRunResult(run_dir, len(names), n_anom, run_dir / "maps" if maps is not None else None, scale)


@dataclass
class AnomalyEvaluateConfig(RunOptions):
    """Settings of ``aelab anomaly evaluate``.

    Attributes:
        model: an `aelab anomaly fit` run folder, or its detector.ckpt.
        data: a root in the MVTec AD layout (ROOT/test/good, ROOT/test/<defect>, masks in ROOT/ground_truth) or
            in the course layout (ROOT/anomaly/normal and ROOT/anomaly/anomalous).
        normal: folder of normal images (overrides --data); images the model was trained on are left out.
        anomalous: folder of anomalous images (overrides --data).
        recursive: look for images in subfolders too.
        threshold: override the stored threshold.
        cases: best and worst cases of each group shown in the panels.
        batch_size: images per forward pass; under --devices N each process scores whole batches.
    """

    model: str | None = None
    data: str | None = None
    normal: str | None = None
    anomalous: str | None = None
    recursive: bool = False
    threshold: float | None = None
    cases: int = 3
    batch_size: int = 256


@dataclass
class EvaluateResult:
    """``anomaly evaluate``'s result: the metrics, the run folder and its figures (name -> file)."""

    metrics: AnomalyEvaluation
    run_dir: Path
    figures: dict[str, Path] = field(default_factory=dict)
    n_normal_excluded_trained: int = 0


@dataclass
class _EvalSet:
    paths: list[Path]
    labels: list[int]
    defects: list[str]
    names: list[str]
    masks: list[Path | None] | None = None
    source: dict = field(default_factory=dict)


def _eval_set(cfg: AnomalyEvaluateConfig, det: ReconstructionDetector) -> tuple[_EvalSet, int]:
    """The labelled images to evaluate on, without normal images the detector was trained on."""
    from aelab.data import list_images

    trained = {str(Path(p).resolve()) for p in (det.train_files_ or [])}
    mv = _mvtec(cfg.data) if cfg.normal is None and cfg.anomalous is None else None
    if mv is not None:
        items = list(zip(mv.test, mv.labels, mv.masks))
        base = Path(cfg.data) / "test"
        source = dict(layout="mvtec", data=str(cfg.data))
    else:
        normal_dir = cfg.normal or _layout_part(cfg.data, "anomaly_normal")
        anom_dir = cfg.anomalous or _layout_part(cfg.data, "anomaly_anomalous")
        if normal_dir is None or anom_dir is None:
            raise DataError("evaluate needs --normal DIR and --anomalous DIR, or --data ROOT in the MVTec AD layout "
                            "or with ROOT/anomaly/normal and ROOT/anomaly/anomalous")
        items = [(p, "good", None) for p in list_images(normal_dir, recursive=cfg.recursive)]
        items += [(p, "anomalous", None) for p in list_images(anom_dir, recursive=cfg.recursive)]
        base = Path(normal_dir).parent if Path(normal_dir).parent == Path(anom_dir).parent else None
        source = dict(layout="folders", normal_dir=str(normal_dir), anomalous_dir=str(anom_dir))
    kept = [it for it in items if it[1] != "good" or str(Path(it[0]).resolve()) not in trained]
    n_excluded = len(items) - len(kept)
    if not any(it[1] == "good" for it in kept):
        raise DataError("no normal test images left (all were used to train the detector, or there are none)")
    paths = [Path(p) for p, _, _ in kept]
    names = _relative(paths, base) if base is not None else [p.name for p in paths]
    masks = [m for _, _, m in kept] if mv is not None and mv.has_masks else None
    return _EvalSet(paths, [int(d != "good") for _, d, _ in kept], [d for _, d, _ in kept], names, masks, source), n_excluded


def _evaluate_masks(maps: np.ndarray | None, eset: _EvalSet, keep: list[int]) -> np.ndarray | None:
    if maps is None:
        return None
    from aelab.data.mvtec import load_masks

    return load_masks([eset.masks[i] for i in keep], maps.shape[-1])


def _evaluation_figures(det, data_images, res, eset_sel: dict, masks, fig: Path, k: int) -> dict[str, Path]:
    from aelab.anomaly.figures import roc_figure, score_histogram

    y, names = eset_sel["labels"], eset_sel["names"]
    normal, anom = res.scores[y == 0], res.scores[y == 1]
    out = {"score_histogram": score_histogram(normal, anom, det.threshold_, fig / "score_histogram.png", score_name=f"{det.score} score"),
           "roc_curve": roc_figure(normal, anom, fig / "roc_curve.png", threshold=det.threshold_)}
    for group, sign in (("normal", 1), ("anomalous", -1)):
        # Best normal = lowest score, worst = highest; best anomaly = highest score, worst = lowest.
        members = np.flatnonzero(y == (group == "anomalous"))
        order = members[np.argsort(sign * res.scores[members], kind="stable")]
        idx = np.r_[order[:k], order[-k:]] if len(order) > 2 * k else order
        labels = [f"{names[i]}\n{res.scores[i]:.4g}" for i in idx]
        out[f"cases_{group}"] = _case_figure(
            det, data_images[idx], labels, fig / f"cases_{group}.png",
            title=f"{group}: best (top {min(k, len(order))}) to worst (bottom), by {det.score} score",
            masks=None if masks is None else masks[idx])
    return out


def anomaly_evaluate(cfg: AnomalyEvaluateConfig, detector: ReconstructionDetector | None = None) -> EvaluateResult:
    """Evaluate a detector on labelled normal and anomalous images.

    Writes ``metrics.json`` (`AnomalyEvaluation`: image AUROC, AP, F1, precision, recall,
    false-alarm rate at the stored threshold with its expected value and 95 % interval for the
    conformal rule, mean losses, counts; with MVTec masks ``pixel_auroc`` and ``aupro``; per
    defect type AUROC), ``scores.csv`` and ``figures/``: ``score_histogram.png``,
    ``roc_curve.png``, ``cases_normal.png``, ``cases_anomalous.png`` (image | reconstruction |
    map | overlay of the best and worst cases). Normal images the detector was trained on are
    excluded. ``detector``: use this fitted detector instead of ``--model``.
    """
    det = _load_detector(cfg.model, cfg, detector)
    eset, n_excluded = _eval_set(cfg, det)
    fabric = sharding.launch(cfg)  # under --devices N the other processes start here (all checks done)
    if fabric is not None:
        det.device = str(fabric.device)
    data = sharding.images_once(fabric, det, eset.paths)
    where = {str(p): i for i, p in enumerate(eset.paths)}
    keep = [where[str(p)] for p in data.paths]
    y = np.array([eset.labels[i] for i in keep])
    if y.min() == y.max():
        raise DataError("evaluate needs readable normal and anomalous images")
    res, maps = _sharded_scores(fabric, det, data, cfg.batch_size, eset.masks is not None)
    masks = _evaluate_masks(maps, eset, keep)
    defects = [eset.defects[i] for i in keep]
    loss = res.loss if det.has_maps else None  # the geometric detector reconstructs nothing: no losses
    metrics = evaluate_scores(res.scores, y, det.threshold_info_, loss=loss, score=det.score, maps=maps, masks=masks,
                              defects=defects if len(set(defects) - {"good"}) > 1 else None)
    run_dir = sharding.run_dir_once(fabric, cfg.out, "anomaly-evaluate")
    if not sharding.is_writer(fabric):
        return EvaluateResult(metrics, run_dir, {}, n_excluded)  # only rank 0 writes
    save_config(run_dir, cfg)
    names = [eset.names[i] for i in keep]
    write_json(run_dir / "metrics.json", to_plain(dict(
        metrics.to_dict(), method=det.method, model=str(cfg.model), **eset.source, n_normal_excluded_trained=n_excluded,
        n_skipped=len(data.skipped), train_files_known=det.train_files_ is not None)))
    rows = sorted(zip(names, defects, res.scores, res.normalized, res.is_anomaly), key=lambda r: -r[2])
    write_csv(run_dir / "scores.csv", ["filename", "group", "defect", "score", "normalized_score", "is_anomaly"],
              [(n, "normal" if d == "good" else "anomalous", "" if d in ("good", "anomalous") else d, float(s), float(z), int(a))
               for n, d, s, z, a in rows])
    figures = _evaluation_figures(det, data.images, res, {"labels": y, "names": names}, masks, run_dir / "figures", max(cfg.cases, 1))
    _write_skipped(run_dir, data.skipped)
    pixel = "" if metrics.pixel_auroc is None else f"  pixel AUROC {metrics.pixel_auroc:.4f}  PRO {metrics.aupro:.4f}"
    expected = "" if metrics.false_alarm_interval is None else (
        f" (expected {metrics.expected_false_alarm_rate:.3f}, 95 % interval "
        f"{metrics.false_alarm_interval[0]:.3f}-{metrics.false_alarm_interval[1]:.3f})")
    info(f"[anomaly] AUROC {metrics.auroc:.4f}  AP {metrics.average_precision:.4f}  F1 {metrics.f1:.4f}{pixel} "
         f"at threshold {det.threshold_:.4g}; false alarms {metrics.false_alarm_rate:.3f}{expected} -> {run_dir}")
    return EvaluateResult(metrics, run_dir, figures, n_excluded)

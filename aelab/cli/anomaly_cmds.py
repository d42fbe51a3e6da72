"""Anomaly verbs: ``aelab anomaly fit``, ``aelab anomaly score``, ``aelab anomaly evaluate``.

Each verb is a settings dataclass (a `RunOptions`) plus a function taking it, like
``aelab.train.pretrain``. The fitted detector lives in the fit run folder as ``detector.ckpt``
(weights, preprocessing, threshold, score kind, normal medians, the train/held-out file lists);
``score`` and ``evaluate`` read it from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aelab.errors import AelabError, DataError
from aelab.progress import info
from aelab.runs import new_run_dir, save_config, to_plain, write_csv, write_json
from aelab.train.options import RunOptions

__all__ = ["AnomalyFitConfig", "anomaly_fit", "AnomalyScoreConfig", "anomaly_score", "AnomalyEvaluateConfig", "anomaly_evaluate"]

# Settings of ReconstructionDetector that `anomaly fit` passes through unchanged.
_DETECTOR_KEYS = (
    "preset", "image_size", "channels", "width", "depth", "skip_connections", "score", "ssim_window",
    "contamination", "threshold", "epochs", "batch_size", "lr", "weight_decay", "noise_factor",
    "val_fraction", "patience", "recursive", "strict", "seed", "device", "devices", "precision",
)


def _layout_part(data: str | None, part: str):
    if data is None:
        return None
    from aelab.data import resolve_layout

    return getattr(resolve_layout(data), part)


def _relative(paths, base: Path) -> list[str]:
    base = Path(base).absolute()
    return [Path(p).relative_to(base).as_posix() if Path(p).is_relative_to(base) else str(p) for p in paths]


def _write_skipped(run_dir: Path, skipped) -> None:
    if skipped:
        write_csv(run_dir / "skipped.csv", ["filename", "reason"], [(str(p), r) for p, r in skipped])


def _load_detector(model: str | None, cfg):
    from aelab.anomaly import ReconstructionDetector

    if model is None:
        raise AelabError("no model: pass --model RUN (an `aelab anomaly fit` run folder) or its detector.ckpt")
    det = ReconstructionDetector.load(model, device=cfg.device)
    det.strict, det.recursive = cfg.strict, cfg.recursive
    if cfg.threshold is not None:
        det.set_threshold(cfg.threshold, rule="manual")
    return det


@dataclass
class AnomalyFitConfig(RunOptions):
    """Settings of ``aelab anomaly fit`` (defaults fit a digit class in about a minute on a CPU).

    Attributes:
        data: root folder in the seed layout (uses ROOT/anomaly/normal).
        normal: folder of normal images only (overrides --data).
        val_anomalous: optional folder of known anomalies; the threshold then maximises F1 on them and the held-out normals.
        recursive: look for images in subfolders too.
        preset: network size: tiny (tests), small (CPU default) or seed (the report's network, for GPUs).
        image_size: override the preset's square input size.
        channels: 1 (grayscale) or 3 (RGB); normal and scored images are all converted to this.
        width: override the preset's first-block width.
        depth: number of poolings (default 4: a 2x2 bottleneck at 32x32 reconstructs other classes worse; benchmarks/README.md); none = the preset's.
        skip_connections: keep the U-Net skips (the seed's network; they let anomalies be copied through).
        score: per-image score: mse, mae, ssim (1 - mean SSIM) or combined (normalised RMSE and SSIM).
        ssim_window: odd SSIM window side (7 suits 28-64 pixel images).
        contamination: expected false-alarm share: the threshold is the (1 - contamination) quantile of held-out normal scores.
        threshold: a manual threshold instead of the rule.
        epochs: maximum number of epochs.
        batch_size: images per step.
        lr: AdamW learning rate (cosine-annealed to 0 over the epochs).
        weight_decay: AdamW weight decay.
        noise_factor: std of Gaussian input noise while training (0 = plain autoencoder).
        val_fraction: share of normal images held out for early stopping and the threshold.
        patience: stop after this many epochs without a lower held-out MSE.
    """

    data: str | None = None
    normal: str | None = None
    val_anomalous: str | None = None
    recursive: bool = False
    preset: str = "small"
    image_size: int | None = None
    channels: int = 3
    width: int | None = None
    depth: int | None = 4
    skip_connections: bool = False
    score: str = "ssim"
    ssim_window: int = 7
    contamination: float = 0.01
    threshold: float | None = None
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    noise_factor: float = 0.0
    val_fraction: float = 0.2
    patience: int = 5


def anomaly_fit(cfg: AnomalyFitConfig) -> Path:
    """Fit a reconstruction detector on normal images; write the run folder.

    The folder holds ``config.yaml``, ``metrics.csv``, ``best.ckpt``/``last.ckpt`` (training),
    ``detector.ckpt`` (the detector with its threshold), ``threshold.json``, ``split.csv``
    (``filename,split``: which normal images trained the model and which were held out) and
    ``skipped.csv`` when some files could not be read. Returns the run folder.
    """
    from aelab.anomaly import ReconstructionDetector

    normal = cfg.normal or _layout_part(cfg.data, "anomaly_normal")
    if normal is None:
        where = f"{cfg.data}/anomaly/normal not found; " if cfg.data else ""
        raise DataError(f"{where}pass --normal DIR (normal images only) or --data ROOT with ROOT/anomaly/normal/")
    run_dir = new_run_dir(cfg.out, "anomaly")
    save_config(run_dir, cfg)
    info(f"[anomaly] fitting on normal images in {normal} -> {run_dir}")
    det = ReconstructionDetector(**{k: getattr(cfg, k) for k in _DETECTOR_KEYS}, run_dir=str(run_dir))
    det.fit(str(normal), anomalies=None if cfg.val_anomalous is None else str(cfg.val_anomalous))
    det.save(run_dir / "detector.ckpt")
    th = det.threshold_info_
    summary = dict(
        th.to_dict(), score=det.score, ssim_window=det.ssim_window, contamination=det.contamination,
        held_out_false_alarm_rate=float(np.mean(det.val_scores_ > det.threshold_)),
        n_train=len(det.train_files_), n_held_out=len(det.val_files_), n_skipped=len(det.skipped_),
        best_epoch=det.best_epoch_ + 1, score_medians=det.score_medians_,
    )
    write_json(run_dir / "threshold.json", summary)
    rows = [(f, "train") for f in _relative(det.train_files_, Path(normal))]
    rows += [(f, "held_out") for f in _relative(det.val_files_, Path(normal))]
    write_csv(run_dir / "split.csv", ["filename", "split"], rows)
    _write_skipped(run_dir, det.skipped_)
    info(f"[anomaly] threshold {det.threshold_:.5g} ({th.rule}); detector -> {run_dir / 'detector.ckpt'}")
    return run_dir


@dataclass
class AnomalyScoreConfig(RunOptions):
    """Settings of ``aelab anomaly score``.

    Attributes:
        model: an `aelab anomaly fit` run folder, or its detector.ckpt.
        images: folder of images to score.
        recursive: look for images in subfolders too.
        threshold: override the stored threshold.
        top: how many of the most anomalous images to show in figures/most_anomalous.png.
    """

    model: str | None = None
    images: str | None = None
    recursive: bool = False
    threshold: float | None = None
    top: int = 8


def anomaly_score(cfg: AnomalyScoreConfig) -> Path:
    """Write ``anomaly_scores.csv`` (``filename,score,normalized_score,is_anomaly``, highest first).

    ``normalized_score`` is ``score / (score + threshold)`` (0.5 at the threshold); ``is_anomaly``
    is 1 above the threshold. Also ``figures/most_anomalous.png`` (image | reconstruction | error
    map of the ``top`` highest scores) and ``summary.json``. Returns the run folder.
    """
    from aelab.anomaly.figures import reconstruction_panels

    det = _load_detector(cfg.model, cfg)
    if cfg.images is None:
        raise AelabError("no images: pass --images DIR")
    data = det.as_images(cfg.images)
    res = det.score_images(data)
    run_dir = new_run_dir(cfg.out, "anomaly-score")
    save_config(run_dir, cfg)
    names = _relative(data.paths, Path(cfg.images))
    order = np.argsort(-res.scores, kind="stable")  # ties keep the natural file order
    write_csv(
        run_dir / "anomaly_scores.csv", ["filename", "score", "normalized_score", "is_anomaly"],
        ((names[i], float(res.scores[i]), float(res.normalized[i]), int(res.is_anomaly[i])) for i in order),
    )
    top = order[: max(cfg.top, 0)]
    if len(top):
        rec = det.reconstruct(data.images[top])
        labels = [f"{names[i]}\n{det.score} {res.scores[i]:.4g}" for i in top]
        reconstruction_panels(rec.images, rec.reconstruction, rec.error_map, labels,
                              run_dir / "figures" / "most_anomalous.png", title=f"most anomalous (threshold {det.threshold_:.4g})")
    _write_skipped(run_dir, data.skipped)
    write_json(run_dir / "summary.json", dict(
        model=str(cfg.model), images=str(cfg.images), n_images=len(names), n_anomalies=int(res.is_anomaly.sum()),
        n_skipped=len(data.skipped), threshold=det.threshold_, threshold_rule=det.threshold_info_.rule, score=det.score,
    ))
    info(f"[anomaly] {int(res.is_anomaly.sum())} of {len(names)} images above the threshold -> {run_dir / 'anomaly_scores.csv'}")
    return run_dir


@dataclass
class AnomalyEvaluateConfig(RunOptions):
    """Settings of ``aelab anomaly evaluate``.

    Attributes:
        model: an `aelab anomaly fit` run folder, or its detector.ckpt.
        data: root folder in the seed layout (uses ROOT/anomaly/normal and ROOT/anomaly/anomalous).
        normal: folder of normal images (overrides --data); images the model was trained on are left out.
        anomalous: folder of anomalous images (overrides --data).
        recursive: look for images in subfolders too.
        threshold: override the stored threshold.
        cases: best and worst cases of each group shown in the panels.
    """

    model: str | None = None
    data: str | None = None
    normal: str | None = None
    anomalous: str | None = None
    recursive: bool = False
    threshold: float | None = None
    cases: int = 3


def _panel(det, images: np.ndarray, scores: np.ndarray, names: list[str], idx: np.ndarray, path: Path, title: str) -> None:
    from aelab.anomaly.figures import reconstruction_panels

    rec = det.reconstruct(images[idx])
    labels = [f"{names[i]}\n{scores[i]:.4g}" for i in idx]
    reconstruction_panels(rec.images, rec.reconstruction, rec.error_map, labels, path, title=title)


def anomaly_evaluate(cfg: AnomalyEvaluateConfig) -> Path:
    """Evaluate a detector on labelled normal and anomalous folders.

    Writes ``metrics.json`` (``auroc``, ``average_precision``, ``f1``, ``precision``, ``recall``,
    ``false_alarm_rate`` at the stored threshold, ``normal_loss``/``anomaly_loss`` = mean per-image
    MSE, counts), ``scores.csv`` and ``figures/``: ``score_histogram.png``, ``roc_curve.png``,
    ``cases_normal.png`` and ``cases_anomalous.png`` (image | reconstruction | error map of the
    best and worst cases). Normal images the detector was trained on are excluded (with
    ``--data`` from the same folder as the fit, the held-out normals remain; those also chose the
    threshold). Returns the run folder.
    """
    from aelab.anomaly import anomaly_metrics
    from aelab.anomaly.figures import roc_figure, score_histogram
    from aelab.data import list_images

    det = _load_detector(cfg.model, cfg)
    normal_dir = cfg.normal or _layout_part(cfg.data, "anomaly_normal")
    anom_dir = cfg.anomalous or _layout_part(cfg.data, "anomaly_anomalous")
    if normal_dir is None or anom_dir is None:
        raise DataError("evaluate needs --normal DIR and --anomalous DIR (or --data ROOT with ROOT/anomaly/normal and ROOT/anomaly/anomalous)")
    trained = {str(Path(p).resolve()) for p in (det.train_files_ or [])}
    normal_paths = list_images(normal_dir, recursive=cfg.recursive)
    kept = [p for p in normal_paths if str(Path(p).resolve()) not in trained]
    if not kept:
        raise DataError(f"every normal image in {normal_dir} was used to train the detector; pass --normal with other images")
    groups = {}
    for group, paths, base in (("normal", kept, normal_dir), ("anomalous", list_images(anom_dir, recursive=cfg.recursive), anom_dir)):
        data = det.as_images(paths)
        groups[group] = (data, det.score_images(data), _relative(data.paths, Path(base)))
    (nd, nres, nnames), (ad, ares, anames) = groups["normal"], groups["anomalous"]
    metrics = anomaly_metrics(nres.scores, ares.scores, det.threshold_, normal_loss=nres.loss, anomalous_loss=ares.loss)
    metrics.update(
        score=det.score, threshold_rule=det.threshold_info_.rule, model=str(cfg.model), normal_dir=str(normal_dir),
        anomalous_dir=str(anom_dir), n_normal_excluded_trained=len(normal_paths) - len(kept),
        n_skipped=len(nd.skipped) + len(ad.skipped), train_files_known=det.train_files_ is not None,
    )
    run_dir = new_run_dir(cfg.out, "anomaly-evaluate")
    save_config(run_dir, cfg)
    write_json(run_dir / "metrics.json", to_plain(metrics))
    rows = [(n, "normal", s, z, a) for n, s, z, a in zip(nnames, nres.scores, nres.normalized, nres.is_anomaly)]
    rows += [(n, "anomalous", s, z, a) for n, s, z, a in zip(anames, ares.scores, ares.normalized, ares.is_anomaly)]
    rows.sort(key=lambda r: -r[2])
    write_csv(run_dir / "scores.csv", ["filename", "group", "score", "normalized_score", "is_anomaly"],
              [(n, g, float(s), float(z), int(a)) for n, g, s, z, a in rows])
    fig = run_dir / "figures"
    score_histogram(nres.scores, ares.scores, det.threshold_, fig / "score_histogram.png", score_name=f"{det.score} score")
    roc_figure(nres.scores, ares.scores, fig / "roc_curve.png", threshold=det.threshold_)
    k = max(cfg.cases, 1)
    # Best normal = lowest score, worst = highest; best anomaly = highest score, worst = lowest.
    n_order, a_order = np.argsort(nres.scores, kind="stable"), np.argsort(-ares.scores, kind="stable")
    for group, (data, res, names), order in (("normal", groups["normal"], n_order), ("anomalous", groups["anomalous"], a_order)):
        idx = np.r_[order[:k], order[-k:]] if len(order) > 2 * k else order
        _panel(det, data.images, res.scores, names, idx, fig / f"cases_{group}.png",
               f"{group}: best (top {min(k, len(order))}) to worst (bottom), by {det.score} score")
    _write_skipped(run_dir, list(nd.skipped) + list(ad.skipped))
    info(f"[anomaly] AUROC {metrics['auroc']:.4f}  AP {metrics['average_precision']:.4f}  F1 {metrics['f1']:.4f} "
         f"at threshold {det.threshold_:.4g}; normal loss {metrics['normal_loss']:.5f}, anomaly loss {metrics['anomaly_loss']:.5f} -> {run_dir}")
    return run_dir

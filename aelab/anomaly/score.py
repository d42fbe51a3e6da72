"""``aelab anomaly score``: score a folder with a fitted detector (anomaly_scores.csv, maps, a figure).

Also the scoring helpers ``aelab anomaly evaluate`` shares: loading a detector for scoring, scores and maps
under ``--devices N`` (`aelab.anomaly.sharding`), the case figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aelab.anomaly import sharding
from aelab.anomaly.base import BaseDetector
from aelab.anomaly.fit import write_skipped
from aelab.anomaly.methods import load_detector
from aelab.data.anomaly_sets import relative_names
from aelab.errors import AelabError
from aelab.progress import info
from aelab.runs import atomic_save_image, atomic_save_npy, save_config, write_csv, write_json
from aelab.train.options import RunOptions

__all__ = ["AnomalyScoreConfig", "ScoreRunResult", "anomaly_score", "case_figure", "load_for_scoring",
           "sharded_scores"]


def load_for_scoring(model: str | None, cfg, detector: BaseDetector | None = None) -> BaseDetector:
    """``detector``, else the one saved at ``model`` (on ``cfg.device``), reading folders by ``cfg``'s
    ``strict``/``recursive``, with ``cfg.threshold`` (when set) as a manual threshold."""
    if detector is None:
        if model is None:
            raise AelabError("no model: pass --model RUN (an `aelab anomaly fit` run folder) or its detector.ckpt")
        detector = load_detector(model, device=cfg.device)
    detector.use(strict=cfg.strict, recursive=cfg.recursive)
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

    _parameter_constraints = {"threshold": BaseDetector._parameter_constraints["threshold"]}

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


def _maps(det: BaseDetector, images: np.ndarray, chunk: int) -> np.ndarray:
    return np.concatenate([det.anomaly_map(images[i : i + chunk]) for i in range(0, len(images), chunk)])


def sharded_scores(fabric, det: BaseDetector, data, batch_size: int, maps: bool):
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
    if not maps:
        return res, None
    return res, per_image(fabric, lambda a, b: (_maps(det, data.images[a:b], batch_size),), n, batch_size)[0]


def case_figure(det, images: np.ndarray, labels: list[str], path: Path, title: str,
                masks: np.ndarray | None = None) -> Path:
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


def anomaly_score(cfg: AnomalyScoreConfig, detector: BaseDetector | None = None) -> ScoreRunResult:
    """Score a folder: ``anomaly_scores.csv`` (``filename,score,normalized_score,is_anomaly``,
    highest first), ``maps/`` (per image ``<name>.npy`` and a ``<name>.png`` heat map; not for a
    detector without maps, the geometric one), ``figures/most_anomalous.png`` (image |
    reconstruction | map | overlay of the ``top`` highest; the images alone without maps) and
    ``summary.json``. ``detector``: use this fitted detector instead of ``--model``.
    """
    det = load_for_scoring(cfg.model, cfg, detector)
    if cfg.images is None:
        raise AelabError("no images: pass --images DIR")
    fabric = sharding.launch(cfg)  # under --devices N the other processes start here (all checks done)
    if fabric is not None:
        det.use(device=str(fabric.device))
    data = sharding.images_once(fabric, det, cfg.images)
    res, maps = sharded_scores(fabric, det, data, cfg.batch_size, cfg.maps)
    run_dir = sharding.run_dir_once(fabric, cfg.out, "anomaly-score")
    if not sharding.is_writer(fabric):
        return ScoreRunResult(run_dir, len(res.scores), int(res.is_anomaly.sum()))
    save_config(run_dir, cfg)
    names = relative_names(data.paths, Path(cfg.images))
    order = np.argsort(-res.scores, kind="stable")  # ties keep the natural file order
    write_csv(
        run_dir / "anomaly_scores.csv", ["filename", "score", "normalized_score", "is_anomaly"],
        ((names[i], float(res.scores[i]), float(res.normalized[i]), int(res.is_anomaly[i])) for i in order),
    )
    scale = _write_maps(maps, names, run_dir / "maps") if maps is not None else None
    top = order[: max(cfg.top, 0)]
    if len(top):
        labels = [f"{names[i]}\n{det.score} {res.scores[i]:.4g}" for i in top]
        case_figure(det, data.images[top], labels, run_dir / "figures" / "most_anomalous.png",
                     title=f"most anomalous (threshold {det.threshold_:.4g})")
    write_skipped(run_dir, data.skipped)
    n_anom = int(res.is_anomaly.sum())
    write_json(run_dir / "summary.json", dict(
        model=str(cfg.model), images=str(cfg.images), n_images=len(names), n_anomalies=n_anom,
        n_skipped=len(data.skipped), threshold=det.threshold_, threshold_rule=det.threshold_info_.rule, score=det.score,
        reduction=getattr(det, "reduction", None), method=det.method, map_scale=scale,
    ))
    info(f"[anomaly] {n_anom} of {len(names)} images above the threshold -> {run_dir / 'anomaly_scores.csv'}")
    return ScoreRunResult(run_dir, len(names), n_anom, run_dir / "maps" if maps is not None else None, scale)



"""``aelab anomaly evaluate``: a detector on labelled normal and anomalous images (metrics, scores, figures).

The labelled images come from `aelab.data.anomaly_sets.evaluation_set` (folders, the course layout or MVTec AD,
whose masks add pixel AUROC and PRO).

Example:
    >>> ev = anomaly_evaluate(AnomalyEvaluateConfig(data="mvtec/bottle"), detector=fit.detector)  # doctest: +SKIP
    >>> ev.metrics.auroc, ev.metrics.pixel_auroc                                                 # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aelab.anomaly import sharding
from aelab.anomaly.base import BaseDetector
from aelab.anomaly.fit import write_skipped
from aelab.anomaly.metrics import AnomalyEvaluation, evaluate_scores
from aelab.anomaly.score import case_figure, load_for_scoring, sharded_scores
from aelab.data.anomaly_sets import EvalSet, evaluation_set
from aelab.errors import DataError
from aelab.progress import info
from aelab.runs import save_config, to_plain, write_csv, write_json
from aelab.train.options import RunOptions

__all__ = ["AnomalyEvaluateConfig", "EvaluateResult", "anomaly_evaluate"]


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

    _parameter_constraints = {"threshold": BaseDetector._parameter_constraints["threshold"]}

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


def _evaluate_masks(maps: np.ndarray | None, eset: EvalSet, keep: list[int]) -> np.ndarray | None:
    if maps is None:
        return None
    from aelab.data.mvtec import load_masks

    return load_masks([eset.masks[i] for i in keep], maps.shape[-1])


def _evaluation_figures(det, data_images, res, eset_sel: dict, masks, fig: Path, k: int) -> dict[str, Path]:
    from aelab.anomaly.figures import roc_figure, score_histogram

    y, names = eset_sel["labels"], eset_sel["names"]
    normal, anom = res.scores[y == 0], res.scores[y == 1]
    out = {"score_histogram": score_histogram(normal, anom, det.threshold_, fig / "score_histogram.png",
                                              score_name=f"{det.score} score"),
           "roc_curve": roc_figure(normal, anom, fig / "roc_curve.png", threshold=det.threshold_)}
    for group, sign in (("normal", 1), ("anomalous", -1)):
        # Best normal = lowest score, worst = highest; best anomaly = highest score, worst = lowest.
        members = np.flatnonzero(y == (group == "anomalous"))
        order = members[np.argsort(sign * res.scores[members], kind="stable")]
        idx = np.r_[order[:k], order[-k:]] if len(order) > 2 * k else order
        labels = [f"{names[i]}\n{res.scores[i]:.4g}" for i in idx]
        out[f"cases_{group}"] = case_figure(
            det, data_images[idx], labels, fig / f"cases_{group}.png",
            title=f"{group}: best (top {min(k, len(order))}) to worst (bottom), by {det.score} score",
            masks=None if masks is None else masks[idx])
    return out


def anomaly_evaluate(cfg: AnomalyEvaluateConfig, detector: BaseDetector | None = None) -> EvaluateResult:
    """Evaluate a detector on labelled normal and anomalous images.

    Writes ``metrics.json`` (`AnomalyEvaluation`: image AUROC, AP, F1, precision, recall,
    false-alarm rate at the stored threshold with its expected value and 95 % interval for the
    conformal rule, mean losses, counts; with MVTec masks ``pixel_auroc`` and ``aupro``; per
    defect type AUROC), ``scores.csv`` and ``figures/``: ``score_histogram.png``,
    ``roc_curve.png``, ``cases_normal.png``, ``cases_anomalous.png`` (image | reconstruction |
    map | overlay of the best and worst cases). Normal images the detector was trained on are
    excluded. ``detector``: use this fitted detector instead of ``--model``.
    """
    det = load_for_scoring(cfg.model, cfg, detector)
    eset, n_excluded = evaluation_set(cfg.data, cfg.normal, cfg.anomalous, recursive=cfg.recursive,
                                      exclude=det.train_files_ or ())
    fabric = sharding.launch(cfg)  # under --devices N the other processes start here (all checks done)
    if fabric is not None:
        det.use(device=str(fabric.device))
    data = sharding.images_once(fabric, det, eset.paths)
    where = {str(p): i for i, p in enumerate(eset.paths)}
    keep = [where[str(p)] for p in data.paths]
    y = np.array([eset.labels[i] for i in keep])
    if y.min() == y.max():
        raise DataError("evaluate needs readable normal and anomalous images")
    res, maps = sharded_scores(fabric, det, data, cfg.batch_size, eset.masks is not None)
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
        metrics.to_dict(), method=det.method, model=str(cfg.model), **eset.source,
        n_normal_excluded_trained=n_excluded, n_skipped=len(data.skipped),
        train_files_known=det.train_files_ is not None)))
    rows = sorted(zip(names, defects, res.scores, res.normalized, res.is_anomaly), key=lambda r: -r[2])
    write_csv(run_dir / "scores.csv", ["filename", "group", "defect", "score", "normalized_score", "is_anomaly"],
              [(n, "normal" if d == "good" else "anomalous", "" if d in ("good", "anomalous") else d, float(s),
                float(z), int(a)) for n, d, s, z, a in rows])
    figures = _evaluation_figures(det, data.images, res, {"labels": y, "names": names}, masks, run_dir / "figures",
                                  max(cfg.cases, 1))
    write_skipped(run_dir, data.skipped)
    pixel = "" if metrics.pixel_auroc is None else f"  pixel AUROC {metrics.pixel_auroc:.4f}  PRO {metrics.aupro:.4f}"
    expected = "" if metrics.false_alarm_interval is None else (
        f" (expected {metrics.expected_false_alarm_rate:.3f}, 95 % interval "
        f"{metrics.false_alarm_interval[0]:.3f}-{metrics.false_alarm_interval[1]:.3f})")
    info(f"[anomaly] AUROC {metrics.auroc:.4f}  AP {metrics.average_precision:.4f}  F1 {metrics.f1:.4f}{pixel} "
         f"at threshold {det.threshold_:.4g}; false alarms {metrics.false_alarm_rate:.3f}{expected} -> {run_dir}")
    return EvaluateResult(metrics, run_dir, figures, n_excluded)

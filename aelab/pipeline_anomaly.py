"""Study 3 of ``aelab run``: the reconstruction detector without and with skip connections and the
geometric (transformation-prediction) detector, evaluated on the same images.

Composes `aelab.anomaly.study` (``anomaly_fit`` then ``anomaly_evaluate`` on the fitted detector
it returns) and writes ``anomaly/summary.json``, which the report reads. The data are, in this
order: a root in the MVTec AD layout (``--data ROOT`` itself, or ``ROOT/anomaly``), with masks
giving pixel AUROC and PRO; ``ROOT/anomaly/normal`` + ``ROOT/anomaly/anomalous``; or the labelled
folder of ``normal_class`` (a class name) against ``ROOT/anomaly``. The summary names the
default method for these data (``--anomaly.method``, auto: `aelab.anomaly.methods`) and which
detector ranks better (image AUROC).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from aelab.anomaly.study import DetectorSettings
from aelab.runs import write_json

__all__ = ["AnomalyStudySettings", "run_anomaly_study"]


@dataclass
class AnomalyStudySettings(DetectorSettings):
    """Study 3 of ``aelab run``: which images are normal, and the detectors (`DetectorSettings`; the run fits the
    reconstruction detector without and with skip connections, so ``skip_connections`` is not used, and the
    geometric detector (``--anomaly.geometric.NAME``); ``method`` only names the default, auto = by the data kind; the
    network's preset, image size and channels are the run's ``--preset``, ``--image_size`` and ``--channels``).

    Attributes:
        normal_class: the normal class (a class name) when the data have no anomaly/normal folder; auto = the first class.
    """

    normal_class: str = "auto"

    def detector(self) -> dict:
        """The keyword arguments of `AnomalyFitConfig` these settings fix."""
        out = {k: v for k, v in asdict(self).items() if k not in ("normal_class", "skip_connections", "method", "geometric")}
        return dict(out, geometric=self.geometric)

KEYS = ("normal_loss", "anomaly_loss", "auroc", "average_precision", "f1", "precision", "recall",
        "false_alarm_rate", "threshold", "n_normal", "n_anomalous", "score", "threshold_rule",
        "expected_false_alarm_rate", "false_alarm_interval", "pixel_auroc", "aupro", "per_defect_auroc")
FIGURES = ("score_histogram", "roc_curve", "cases_normal", "cases_anomalous")
VARIANTS = (("noskip", "reconstruction", False), ("skip", "reconstruction", True), ("geometric", "geometric", False))


def _normal_folder(ctx, layout, skip_exc) -> tuple[Path, str]:
    """ROOT/anomaly/normal when present, else the labelled folder of the normal class (a name)."""
    if layout.anomaly_normal is not None:
        return layout.anomaly_normal, "anomaly/normal"
    if layout.labelled is None:
        raise skip_exc("the data have anomalous images but no normal images (no anomaly/normal, no labelled folder)")
    from aelab.data import scan_labelled

    classes = scan_labelled(layout.labelled).classes
    name = classes[0] if ctx.cfg.anomaly.normal_class == "auto" else str(ctx.cfg.anomaly.normal_class)
    folder = layout.labelled / name
    if not folder.is_dir():
        raise skip_exc(f"normal class {name!r} is not a folder of {layout.labelled}")
    return folder, f"labelled class {name}"


def _sources(ctx, skip_exc) -> tuple[dict, dict, str]:
    """Keyword arguments of the fit and evaluate configs, and a description of the normal data."""
    from aelab.data import list_images, resolve_layout
    from aelab.data.mvtec import is_mvtec

    for root in (ctx.data, ctx.data / "anomaly"):
        if is_mvtec(root):
            if len(list_images(root / "train" / "good")) < 10:
                raise skip_exc(f"too few normal images in {root / 'train' / 'good'} (need at least 10)")
            return {"data": str(root)}, {"data": str(root)}, f"MVTec AD layout {root.name}/train/good"
    layout = resolve_layout(ctx.data)
    if layout.anomaly is None or layout.anomaly_anomalous is None:
        raise skip_exc("no anomaly folder in the data (expected ROOT/anomaly/ with anomalous images, or the MVTec AD layout)")
    normal, desc = _normal_folder(ctx, layout, skip_exc)
    if len(list_images(normal)) < 10:
        raise skip_exc(f"too few normal images in {normal} (need at least 10 to fit and hold some out)")
    return {"normal": str(normal)}, {"normal": str(normal), "anomalous": str(layout.anomaly_anomalous)}, desc


def run_anomaly_study(ctx, skip_exc) -> dict:
    from aelab.anomaly.methods import default_method
    from aelab.anomaly.study import (
        AnomalyEvaluateConfig,
        AnomalyFitConfig,
        anomaly_evaluate,
        anomaly_fit,
    )

    fit_src, eval_src, normal_desc = _sources(ctx, skip_exc)
    base = ctx.sub("anomaly")
    summary: dict = {"normal": normal_desc, **{f"{k}_dir": v for k, v in eval_src.items()}}
    figures: list[str] = []
    for variant, method, skips in VARIANTS:
        fit = anomaly_fit(AnomalyFitConfig(
            **fit_src, preset=ctx.cfg.preset, channels=ctx.cfg.channels, image_size=ctx.cfg.image_size, method=method,
            skip_connections=skips, out=str(base / variant), **ctx.cfg.anomaly.detector(), **ctx.engine.options()))
        ev = anomaly_evaluate(AnomalyEvaluateConfig(**eval_src, out=str(base / f"{variant}_eval"), **ctx.engine.options()),
                              detector=fit.detector)
        summary[variant] = dict({k: v for k, v in ev.metrics.to_dict().items() if k in KEYS}, method=method)
        wanted = FIGURES if variant == "noskip" else ("cases_anomalous",) if variant == "skip" else ("roc_curve", "cases_anomalous")
        figures += [p.relative_to(ctx.dir).as_posix() for name, p in ev.figures.items() if name in wanted]
    summary["n_normal_test"] = summary["noskip"]["n_normal"]
    summary["n_anomalous"] = summary["noskip"]["n_anomalous"]
    summary["figures"] = figures
    summary["default_method"] = default_method(ctx.cfg.anomaly.method, fit_src.get("normal", ""), mvtec="data" in fit_src,
                                               channels=ctx.cfg.channels)
    ranks = {"noskip": summary["noskip"]["auroc"], "geometric": summary["geometric"]["auroc"]}
    summary["better"] = max(ranks, key=ranks.get) if ranks["noskip"] != ranks["geometric"] else "tie"
    write_json(base / "summary.json", summary)
    return {"summary": str(base / "summary.json"), "auroc": summary["noskip"]["auroc"], "auroc_skip": summary["skip"]["auroc"],
            "auroc_geometric": summary["geometric"]["auroc"], "default_method": summary["default_method"]}

"""Study 3 of ``aelab run``: the reconstruction detector without and with skip connections and the
geometric (transformation-prediction) detector, evaluated on the same images.

Composes `aelab.anomaly.fit` and `aelab.anomaly.evaluate` (``anomaly_fit`` then ``anomaly_evaluate`` on the
fitted detector
it returns) and writes ``anomaly/summary.json`` (`aelab.results.AnomalySummary`), which the report
reads. The data are, in this order: a root in the MVTec AD layout (``--data ROOT`` itself, or
``ROOT/anomaly``), with masks giving pixel AUROC and PRO; ``ROOT/anomaly/normal`` +
``ROOT/anomaly/anomalous``; or the labelled folder of ``normal_class`` (a class name) against
``ROOT/anomaly``. The summary names the default method for these data (``--anomaly.method``, auto:
`aelab.anomaly.methods`) and which detector ranks better (image AUROC). Data that cannot serve the
study raise `StageSkipped` with the reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aelab.anomaly.fit import DetectorSettings
from aelab.errors import StageSkipped
from aelab.layout import RunLayout
from aelab.results import ANOMALY_VARIANTS, AnomalyStudyResult, AnomalySummary

if TYPE_CHECKING:
    from aelab.train.options import Engine

__all__ = ["AnomalyStudySettings", "run_anomaly_study"]


@dataclass
class AnomalyStudySettings(DetectorSettings):
    """Study 3 of ``aelab run``: which images are normal, and the detectors (`DetectorSettings`; the run fits the
    reconstruction detector without and with skip connections, so ``skip_connections`` is not used, and the
    geometric detector (``--anomaly.geometric.NAME``); ``method`` only names the default, auto = by the data kind;
    the network's preset, image size and channels are the run's ``--preset``, ``--image_size`` and ``--channels``).

    Attributes:
        normal_class: the normal class (a class name) when the data have no anomaly/normal folder; auto = the first
            class.
    """

    normal_class: str = "auto"

    def detector(self) -> dict:
        """The keyword arguments of `AnomalyFitConfig` these settings fix."""
        skip = ("normal_class", "skip_connections", "method", "geometric")
        out = {k: v for k, v in asdict(self).items() if k not in skip}
        return dict(out, geometric=self.geometric)


KEYS = ("normal_loss", "anomaly_loss", "auroc", "average_precision", "f1", "precision", "recall",
        "false_alarm_rate", "threshold", "n_normal", "n_anomalous", "score", "threshold_rule",
        "expected_false_alarm_rate", "false_alarm_interval", "pixel_auroc", "aupro", "per_defect_auroc")
FIGURES = ("score_histogram", "roc_curve", "cases_normal", "cases_anomalous")
#: The figures of each detector the report shows.
SHOWN = {"noskip": FIGURES, "skip": ("cases_anomalous",), "geometric": ("roc_curve", "cases_anomalous")}


def _normal_folder(settings: AnomalyStudySettings, layout) -> tuple[Path, str]:
    """ROOT/anomaly/normal when present, else the labelled folder of the normal class (a name)."""
    if layout.anomaly_normal is not None:
        return layout.anomaly_normal, "anomaly/normal"
    if layout.labelled is None:
        raise StageSkipped("the data have anomalous images but no normal images "
                           "(no anomaly/normal, no labelled folder)")
    from aelab.data import scan_labelled

    classes = scan_labelled(layout.labelled).classes
    name = classes[0] if settings.normal_class == "auto" else str(settings.normal_class)
    folder = layout.labelled / name
    if not folder.is_dir():
        raise StageSkipped(f"normal class {name!r} is not a folder of {layout.labelled}")
    return folder, f"labelled class {name}"


def _sources(data: Path, settings: AnomalyStudySettings) -> tuple[dict, dict, str]:
    """Keyword arguments of the fit and evaluate configs, and a description of the normal data."""
    from aelab.data import list_images, resolve_layout
    from aelab.data.mvtec import is_mvtec

    for root in (data, data / "anomaly"):
        if is_mvtec(root):
            if len(list_images(root / "train" / "good")) < 10:
                raise StageSkipped(f"too few normal images in {root / 'train' / 'good'} (need at least 10)")
            return {"data": str(root)}, {"data": str(root)}, f"MVTec AD layout {root.name}/train/good"
    layout = resolve_layout(data)
    if layout.anomaly is None or layout.anomaly_anomalous is None:
        raise StageSkipped("no anomaly folder in the data (expected ROOT/anomaly/ with anomalous images, "
                           "or the MVTec AD layout)")
    normal, desc = _normal_folder(settings, layout)
    if len(list_images(normal)) < 10:
        raise StageSkipped(f"too few normal images in {normal} (need at least 10 to fit and hold some out)")
    return {"normal": str(normal)}, {"normal": str(normal), "anomalous": str(layout.anomaly_anomalous)}, desc


def run_anomaly_study(cfg: Any, data: Path, layout: RunLayout, engine: Engine) -> AnomalyStudyResult:
    """Fit and evaluate study 3's detectors on ``data`` into ``layout.anomaly``; write its summary.

    Args:
        cfg: the run's settings (`aelab.pipeline.RunConfig`: ``anomaly``, ``preset``, ``channels``, ``image_size``,
            ``device``, ``seed``).
        engine: where the fits and evaluations run (`aelab.train.options.Engine`, one process).
    """
    from aelab.anomaly.evaluate import AnomalyEvaluateConfig, anomaly_evaluate
    from aelab.anomaly.fit import AnomalyFitConfig, anomaly_fit
    from aelab.anomaly.methods import default_method

    fit_src, eval_src, normal_desc = _sources(Path(data), cfg.anomaly)
    variants, figures = {}, []
    for variant, method, skips in ANOMALY_VARIANTS:
        fit = anomaly_fit(AnomalyFitConfig(
            **fit_src, preset=cfg.preset, channels=cfg.channels, image_size=cfg.image_size, method=method,
            skip_connections=skips, out=str(layout.anomaly_fit(variant)), **cfg.anomaly.detector(), **engine.options()))
        ev = anomaly_evaluate(AnomalyEvaluateConfig(**eval_src, out=str(layout.anomaly_eval(variant)),
                                                    **engine.options()), detector=fit.detector)
        variants[variant] = dict({k: v for k, v in ev.metrics.to_dict().items() if k in KEYS}, method=method)
        figures += [layout.relative(p) for name, p in ev.figures.items() if name in SHOWN[variant]]
    default = default_method(cfg.anomaly.method, fit_src.get("normal", ""), mvtec="data" in fit_src,
                             channels=cfg.channels)
    summary = AnomalySummary(normal_desc, eval_src, variants, figures, default,
                             variants["noskip"]["n_normal"], variants["noskip"]["n_anomalous"])
    return AnomalyStudyResult.from_summary(summary, summary.write(layout))

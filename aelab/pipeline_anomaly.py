"""Study 3 of ``aelab run``: anomaly detectors without and with skip connections, evaluated.

Composes ``aelab anomaly fit`` and ``aelab anomaly evaluate`` (their config classes and
functions) and writes ``anomaly/summary.json``, which the report reads.
"""

from __future__ import annotations

import json
from pathlib import Path

from aelab.runs import write_json

__all__ = ["run_anomaly_study"]

KEYS = ("normal_loss", "anomaly_loss", "auroc", "average_precision", "f1", "precision", "recall",
        "false_alarm_rate", "threshold", "n_normal", "n_anomalous", "score", "threshold_rule")


def _normal_folder(ctx, layout, skip_exc) -> tuple[Path, str]:
    """ROOT/anomaly/normal when present, else the labelled folder of the normal class."""
    if layout.anomaly_normal is not None:
        return layout.anomaly_normal, "anomaly/normal"
    if layout.labelled is None:
        raise skip_exc("the data have anomalous images but no normal images (no anomaly/normal, no labelled folder)")
    from aelab.data import scan_labelled

    classes = scan_labelled(layout.labelled).classes
    name = classes[0] if ctx.cfg.normal_class == "auto" else ctx.cfg.normal_class
    folder = layout.labelled / name
    if not folder.is_dir():
        raise skip_exc(f"normal class {name!r} is not a folder of {layout.labelled}")
    return folder, f"labelled class {name}"


def run_anomaly_study(ctx, skip_exc) -> dict:
    from aelab.cli.anomaly_cmds import AnomalyEvaluateConfig, AnomalyFitConfig, anomaly_evaluate, anomaly_fit
    from aelab.data import list_images, resolve_layout

    layout = resolve_layout(ctx.data)
    if layout.anomaly is None or layout.anomaly_anomalous is None:
        raise skip_exc("no anomaly folder in the data (expected ROOT/anomaly/ with anomalous images)")
    normal, normal_desc = _normal_folder(ctx, layout, skip_exc)
    if len(list_images(normal)) < 10:
        raise skip_exc(f"too few normal images in {normal} (need at least 10 to fit and hold some out)")
    base = ctx.sub("anomaly")
    summary: dict = {"normal": normal_desc, "normal_dir": str(normal), "anomalous_dir": str(layout.anomaly_anomalous)}
    for variant, skips in (("noskip", False), ("skip", True)):
        fit = anomaly_fit(AnomalyFitConfig(
            normal=str(normal), preset=ctx.cfg.preset, channels=ctx.cfg.channels, image_size=ctx.cfg.image_size,
            skip_connections=skips,
            epochs=ctx.cfg.anomaly_epochs, out=str(base / variant), **ctx.engine))
        ev = anomaly_evaluate(AnomalyEvaluateConfig(
            model=str(fit), normal=str(normal), anomalous=str(layout.anomaly_anomalous), out=str(base / f"{variant}_eval"),
            device=ctx.cfg.device, seed=ctx.cfg.seed))
        metrics = json.loads((ev / "metrics.json").read_text())
        summary[variant] = {k: metrics.get(k) for k in KEYS}
    summary["n_normal_test"] = summary["noskip"]["n_normal"]
    summary["n_anomalous"] = summary["noskip"]["n_anomalous"]
    figs = ("score_histogram", "roc_curve", "cases_normal", "cases_anomalous")
    summary["figures"] = [f"anomaly/noskip_eval/figures/{f}.png" for f in figs if (base / "noskip_eval" / "figures" / f"{f}.png").is_file()]
    summary["figures"] += [f"anomaly/skip_eval/figures/{f}.png" for f in ("cases_anomalous",) if (base / "skip_eval" / "figures" / f"{f}.png").is_file()]
    write_json(base / "summary.json", summary)
    return {"summary": str(base / "summary.json"), "auroc": summary["noskip"]["auroc"], "auroc_skip": summary["skip"]["auroc"]}

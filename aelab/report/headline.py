"""The report's first screen: one headline result per study, each linking to its section.

1b: the best test accuracy and what the unlabelled images add; 2b: Equilibrium K-Means against
k-means; 3: the anomaly detector's AUROC. Every number is read from the run's files.
"""

from __future__ import annotations

from aelab.layout import RunLayout
from aelab.report.content import Highlights
from aelab.report.study1 import cut_short, describe_cut, pct, points, row_stages, score_key, unlabelled_gain
from aelab.results import AnomalySummary, ChosenMethod, ClusterStudyResult, MethodRow, RunStages

__all__ = ["headline"]


def _item(label: str, value: str, detail: str, section: str) -> dict[str, str]:
    return {"label": label, "value": value, "detail": detail, "section": section}


def _not_run(label: str, reason: str, section: str) -> dict[str, str]:
    return _item(label, "—", f"Not available: {reason}", section)


def _study1(layout: RunLayout, methods: list[MethodRow] | None, stages: RunStages) -> list[dict[str, str]]:
    if not methods:
        return [_not_run("Best test accuracy", stages.skipped("predict") or "no study1/methods.csv in the run folder",
                         "1b")]
    metric = score_key(methods)
    on = "test" if metric == "test_acc" else "validation (no test labels)"
    scored = [m for m in methods if getattr(m, metric) is not None]
    items = []
    if scored:
        best = max(scored, key=lambda m: getattr(m, metric))
        per_class = f", {best.labels_per_class} labels per class" if best.labels_per_class else ""
        items.append(_item(f"Best {on} accuracy", pct(getattr(best, metric)), f"{best.method}{per_class}.", "1b"))
    else:
        items.append(_not_run(f"Best {on} accuracy", "no method in study1/methods.csv has a score", "1b"))
    gain = unlabelled_gain(methods)
    if gain:
        key = metric.split("_")[0]
        settings = ChosenMethod.read(layout).settings
        short = cut_short(layout, list(dict.fromkeys(
            st for m in (gain["best"], gain["base"]) for st in row_stages(m, settings))))
        ran = "; ".join(describe_cut(st, p) for st, p in short.items())
        caveat = f" Cut short by the time budget ({ran}), so the gap partly reflects the budget." if short else ""
        items.append(_item("What the unlabelled images add", points(gain[key]),
                           f"{gain['best'].method} ({pct(getattr(gain['best'], metric))}) against "
                           f"{gain['base'].method} ({pct(getattr(gain['base'], metric))}), {on} accuracy.{caveat}",
                           "1b"))
    return items


def _study2(layout: RunLayout, stages: RunStages) -> dict[str, str]:
    label = "Equilibrium K-Means against k-means"
    reason = stages.skipped("cluster")
    ekm, km = ClusterStudyResult.metrics(layout, "ekm"), ClusterStudyResult.metrics(layout, "kmeans")
    if reason or "ari" not in ekm or "ari" not in km:
        return _not_run(label, reason or "no clustering metrics in the run folder", "2b")
    target = ":".join(f"{t:g}" for t in ekm.get("search", {}).get("target_ratio") or [])
    sizes = (f"cluster sizes {':'.join(map(str, ekm.get('sizes', [])))} against "
             f"{':'.join(map(str, km.get('sizes', [])))}")
    return _item(label + " (ARI)", f"{ekm['ari']:.3f} vs {km['ari']:.3f}",
                 f"Agreement with the classes; {sizes}" + (f" (target ratio {target})." if target else "."), "2b")


def _or_mark(value) -> str:
    return "?" if value is None else str(value)


def _study3(layout: RunLayout, stages: RunStages) -> dict[str, str]:
    label = "Anomaly detection (AUROC)"
    reason = stages.skipped("anomaly")
    summary = AnomalySummary.read(layout)
    variants = summary.variants if summary else {}
    default = "geometric" if summary and summary.default_method == "geometric" else "noskip"
    best = variants.get(default) or variants.get("noskip") or variants.get("skip")
    if reason or not best:
        return _not_run(label, reason or "no anomaly summary in the run folder", "3")
    which = (f" ({summary.default_method} detector, the default for these data)." if summary.default_method else ".")
    return _item(label, f"{best['auroc']:.3f}",
                 f"Normal class {summary.normal}: {_or_mark(summary.n_normal_test)} held-out normal "
                 f"and {_or_mark(summary.n_anomalous)} anomalous images; average precision "
                 f"{best['average_precision']:.3f}" + which, "3")


def headline(layout: RunLayout, stages: RunStages) -> Highlights:
    """The headline results of a run folder (missing studies say why)."""
    items = _study1(layout, MethodRow.read(layout), stages)
    items += [_study2(layout, stages), _study3(layout, stages)]
    return Highlights(items)

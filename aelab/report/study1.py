"""Report sections 1a (the model, from the run's model.json) and 1b (what the labels and the
unlabelled images give: ``study1/methods.csv``, or the three fine-tuning variants of older runs)."""

from __future__ import annotations

from pathlib import Path

from aelab.report.content import Figure, Paragraph, Section, Table
from aelab.report.runfiles import find_model_json, read_json, read_methods, read_rows, skipped

__all__ = ["section_1a", "section_1b", "unlabelled_gain", "score_key", "legacy_results", "LEGACY_LABELS", "pct", "points"]

LEGACY_LABELS = {"finetune_aug": "pretrained + augmentation", "finetune_noaug": "pretrained, no augmentation",
                 "finetune_random": "random weights + augmentation"}


def pct(x: float | None) -> str:
    """``0.9512 -> '95.1%'``; an em dash for no value."""
    return "—" if x is None else f"{100 * x:.1f}%"


def points(delta: float | None) -> str:
    """An accuracy difference in percentage points, with its sign."""
    return "—" if delta is None else f"{100 * delta:+.1f} points"


def model_stage_dirs(run_dir: Path, stages: dict) -> list[str]:
    """Where to look for model.json: the chosen method's folder, the fine-tunes, then every stage."""
    chosen = read_json(run_dir / "study1" / "chosen.json").get("method")
    runs = [m["run"] for m in read_methods(run_dir) or [] if m["method"] == chosen]
    runs.append(stages.get("predict", {}).get("result", {}).get("model") or "")  # older runs: the variant used
    return runs + ["finetune_aug", "finetune_noaug", "finetune_random"] + [s for s in stages if not s.startswith("_")]


def section_1a(run_dir: Path, stages: dict) -> Section:
    """The architecture table and parameter counts from ``<run>/<stage>/model.json``."""
    title = "Autoencoder: the model"
    found = find_model_json(run_dir, model_stage_dirs(run_dir, stages))
    if found is None:
        reason = skipped(stages, "finetune_aug")
        if reason:
            return Section("1a", title, [], reason)
        return Section("1a", title, [Paragraph(
            "Architecture not recorded: no model.json in this run folder (runs of older aelab versions).")])
    stage, info = found
    cfg = info.get("config") or {}
    desc = ", ".join(f"{k}={v}" for k, v in cfg.items())
    kind = ("Residual U-Net autoencoder with a classifier head on the flattened bottleneck"
            if info.get("class") == "ResUNetAutoencoder" else f"Network {info.get('class', '?')}")
    rows = [[b["name"], b["type"], "×".join(map(str, b["output_shape"])) if b.get("output_shape") else None,
             b["parameters"]] for b in info.get("blocks", [])]
    text = f"{kind} ({desc}). It has {info.get('parameters', 0):,} parameters"
    trainable = info.get("trainable_parameters")
    if trainable is not None and trainable != info.get("parameters"):
        text += f", {trainable:,} of them trained"
    return Section("1a", title, [
        Paragraph(text + "."),
        Table(["block", "type", "output (C×H×W)", "parameters"], rows,
              caption=f"Architecture, as recorded by the training stage in {stage}/model.json"),
        Paragraph("The source code of the network is listed in appendix A."),
    ])


def curves(run_dir: Path, series: list[tuple[str, str]], out: Path) -> Path:
    """Pretraining validation MSE and each series' validation accuracy per epoch, as one PNG.

    Args:
        series: ``(label, folder relative to run_dir)`` pairs whose ``metrics.csv`` has ``val_acc``.
    """
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(10, 3.6))
    axes = fig.subplots(1, 2)
    pre = read_rows(run_dir / "pretrain" / "metrics.csv")
    if pre and "val_mse" in pre[0]:
        axes[0].plot([int(r["epoch"]) + 1 for r in pre], [float(r["val_mse"]) for r in pre], marker="o",
                     label="pretrain val MSE")
        axes[0].set_yscale("log")
        axes[0].legend()
    axes[0].set(xlabel="epoch", ylabel="MSE", title="Pretraining (denoising AE)")
    for label, folder in series:
        rows = [r for r in read_rows(run_dir / folder / "metrics.csv") if r.get("val_acc") not in (None, "")]
        if rows:
            axes[1].plot([int(r["epoch"]) + 1 for r in rows], [float(r["val_acc"]) for r in rows], label=label)
    axes[1].set(xlabel="epoch", ylabel="validation accuracy", title="Fine-tuning", ylim=(0, 1))
    if axes[1].lines:
        axes[1].legend()
    fig.tight_layout()
    from aelab.runs import atomic_savefig

    atomic_savefig(fig, out, dpi=110)  # a link at the name is replaced, never followed
    return out


def score_key(methods: list[dict]) -> str:
    """``"test_acc"`` when every method that ran (has a validation accuracy) has a test accuracy."""
    ran = [m for m in methods if m["val_acc"] is not None or m["test_acc"] is not None]
    return "test_acc" if ran and all(m["test_acc"] is not None for m in ran) else "val_acc"


def unlabelled_gain(methods: list[dict]) -> dict | None:
    """What the unlabelled images add: the best method that uses them minus supervised-only.

    "Best" is by test accuracy when every method that ran has one, else by validation accuracy. The
    supervised-only row is the one that does not use the unlabelled images (preferring a method
    named "supervised..."). Returns ``None`` when either side is missing.
    """
    metric = score_key(methods)
    base = [m for m in methods if not m["uses_unlabelled"] and m[metric] is not None]
    base.sort(key=lambda m: not m["method"].lower().startswith("supervised"))
    users = [m for m in methods if m["uses_unlabelled"] and m[metric] is not None]
    if not base or not users:
        return None
    best = max(users, key=lambda m: m[metric])

    def delta(key):
        return None if best[key] is None or base[0][key] is None else best[key] - base[0][key]

    return {"metric": metric, "best": best, "base": base[0], "val": delta("val_acc"), "test": delta("test_acc")}


def _validation_sentence(methods: list[dict], chosen: dict) -> str:
    sizes = sorted({m["n_val"] for m in methods if m["n_val"]})
    protocol = chosen.get("validation") or "held-out labelled images"
    if not sizes:
        return f"Each method chose its checkpoint by accuracy on {protocol}."
    n = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]} to {sizes[-1]}"
    text = f"Each method chose its checkpoint by accuracy on {protocol}: {n} images (n_val)."
    if sizes[0] < 100:
        text += f" With {sizes[0]} images one image moves validation accuracy by {100 / sizes[0]:.1f} points."
    return text


def _settings_sentences(settings: dict) -> list[str]:
    """The kind of images and the augmentation it chose, and the time budget (``study1/chosen.json``'s settings)."""
    out = []
    if settings.get("images"):
        kind = "colour photos" if settings["images"] == "photo" else "grey images (such as digits or documents)"
        flip = "mirror each image left-right at random" if settings["images"] == "photo" else "never mirror an image"
        out.append(f"The images are {kind} by aelab's rule ({settings.get('rule', '')}), so the training augmentations "
                   f"{flip}: {settings.get('weak_augmentation')} for labelled and weak views, "
                   f"{settings.get('strong_augmentation')} for strong views.")
    if settings.get("budget_minutes"):
        shares = settings.get("budget_shares") or {}
        total = sum(shares.values()) or 1
        parts = ", ".join(f"{st} {settings['budget_minutes'] * w / total:.1f}" for st, w in shares.items())
        out.append(f"Study 1's training had a budget of {settings['budget_minutes']:g} minutes, shared among its stages "
                   f"({parts} minutes); each stage ran as many epochs as its first epoch's time allowed within its share "
                   "(at most its configured epochs). The seconds column is what each method spent, prediction included.")
    elif "budget_minutes" in settings:
        out.append("Study 1 ran without a time budget: every stage ran its configured epochs.")
    return out


def _section_1b_methods(run_dir: Path, methods: list[dict]) -> Section:
    rows = [[m["method"], m["description"], "yes" if m["uses_unlabelled"] else "no", m["labels_per_class"],
             m["val_acc"], m["n_val"], m["test_acc"], m["seconds"]] for m in methods]
    gain = unlabelled_gain(methods)
    reading = ""
    if gain:
        best, base = gain["best"]["method"], gain["base"]["method"]
        rows.append(["what the unlabelled images add", f"{best} minus {base}", None, None,
                     points(gain["val"]), None, points(gain["test"]), None])
        on = "test" if gain["metric"] == "test_acc" else "validation"
        reading = (f"On the {on} set the best method that uses the unlabelled images, {best}, reaches "
                   f"{pct(gain['best'][gain['metric']])}; {base} reaches {pct(gain['base'][gain['metric']])} "
                   f"({points(gain[gain['metric'].split('_')[0]])}).")
    chosen = read_json(run_dir / "study1" / "chosen.json")
    columns = ["method", "description", "uses unlabelled", "labels per class", "validation accuracy", "n_val",
               "test accuracy", "seconds"]
    if any(m["note"] for m in methods):  # e.g. why a method did not run (no unlabelled folder)
        columns.append("note")
        rows = [row + [m["note"] or None] for row, m in zip(rows, methods)] + [r + [None] for r in rows[len(methods):]]
    blocks = [Table(columns, rows,
                    caption="Methods on the same data, seed and budget (study1/methods.csv)", reading=reading),
              Paragraph(_validation_sentence(methods, chosen))]
    blocks += [Paragraph(text) for text in _settings_sentences(chosen.get("settings") or {})]
    if chosen.get("method"):
        why = f" ({chosen['reason']})" if chosen.get("reason") else ""
        blocks.append(Paragraph(f"predictions.csv was written with {chosen['method']}{why}."))
    series = [(m["method"], m["run"]) for m in methods if m["run"]]
    if series:
        fig = curves(run_dir, series, run_dir / "figures" / "training_curves.png")
        blocks.append(Figure(str(fig.relative_to(run_dir)), caption="Training curves"))
    return Section("1b", "Few labels: what the unlabelled images add", blocks)


def legacy_results(stages: dict) -> tuple[dict, bool]:
    """Results of the fine-tuning variants of a run without methods.csv, and whether all have test accuracy."""
    res = {n: stages[n]["result"] for n in LEGACY_LABELS if stages.get(n, {}).get("status") == "done"}
    return res, bool(res) and all(r["test"].get("accuracy") is not None for r in res.values())


def section_1b(run_dir: Path, stages: dict) -> Section:
    """Study 1b: the methods table when ``study1/methods.csv`` exists, else the fine-tuning variants."""
    methods = read_methods(run_dir)
    if methods:
        return _section_1b_methods(run_dir, methods)
    return _section_1b_legacy(run_dir, stages)


def _section_1b_legacy(run_dir: Path, stages: dict) -> Section:
    reason = skipped(stages, "finetune_noaug") or skipped(stages, "finetune_aug")
    if reason:
        return Section("1b", "Autoencoder: augmentation and pretraining", [], reason)
    cfg = read_json(run_dir / "finetune_aug" / "predict" / "metrics.json")
    res, has_test = legacy_results(stages)
    rows = [[LEGACY_LABELS[n], r["val_acc"], r["test"].get("accuracy"), r["best_epoch"] + 1] for n, r in res.items()]
    key = "test" if has_test else "validation"

    def acc(n):
        return res[n]["test"].get("accuracy") if has_test else res[n]["val_acc"]

    d_aug = acc("finetune_aug") - acc("finetune_noaug")
    change = f"{'raised' if d_aug > 0 else 'lowered'} accuracy by {abs(100 * d_aug):.1f} points" if d_aug else "did not change accuracy"
    reading = f"On the {key} set, augmentation {change} ({pct(acc('finetune_aug'))} with, {pct(acc('finetune_noaug'))} without)."
    if "finetune_random" in res:
        d_pre = acc("finetune_aug") - acc("finetune_random")
        verb = f"{'added' if d_pre > 0 else 'cost'} {abs(100 * d_pre):.1f} points" if d_pre else "made no difference"
        reading += f" Pretraining {verb} against random weights ({pct(acc('finetune_aug'))} vs {pct(acc('finetune_random'))})."
    fig = curves(run_dir, [(n.replace("finetune_", ""), n) for n in res], run_dir / "figures" / "training_curves.png")
    chosen = stages.get("predict", {}).get("result", {}).get("model")
    blocks = [
        Table(["variant", "validation accuracy", "test accuracy", "best epoch"], rows,
              caption="Same seed and budget for every variant; best checkpoint by validation accuracy", reading=reading),
        Figure(str(fig.relative_to(run_dir)), caption="Training curves", reading=""),
    ]
    if chosen in LEGACY_LABELS:
        blocks.append(Paragraph(f"predictions.csv (id,label) for the {cfg.get('n_images')} test images was written with "
                                f"the {LEGACY_LABELS[chosen]} model, the variant with the higher validation accuracy."))
    return Section("1b", "Autoencoder: augmentation and pretraining", blocks)

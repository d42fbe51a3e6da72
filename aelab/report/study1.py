"""Report sections 1a (the model, from the run's model.json) and 1b (what the labels and the
unlabelled images give: ``study1/methods.csv`` and ``study1/chosen.json``)."""

from __future__ import annotations

from pathlib import Path

from aelab.layout import PLAN_FILE, RunLayout
from aelab.report.content import Figure, Paragraph, Section, Table
from aelab.report.runfiles import find_model_json, read_json, read_rows
from aelab.results import SHORT_EPOCHS, ChosenMethod, MethodRow, RunStages, StagePlan

__all__ = ["section_1a", "section_1b", "unlabelled_gain", "cut_short", "describe_cut", "row_stages", "score_key", "pct",
           "points"]


def pct(x: float | None) -> str:
    """``0.9512 -> '95.1%'``; an em dash for no value."""
    return "—" if x is None else f"{100 * x:.1f}%"


def points(delta: float | None) -> str:
    """An accuracy difference in percentage points, with its sign."""
    return "—" if delta is None else f"{100 * delta:+.1f} points"


def model_stage_dirs(layout: RunLayout, stages: RunStages) -> list[str]:
    """Where to look for model.json: the chosen method's folder, the network study 2 embeds with, then every
    stage."""
    chosen = ChosenMethod.read(layout).method
    runs = [m.run for m in MethodRow.read(layout) or [] if m.method == chosen]
    runs.append(stages.result("predict").get("model") or "")
    return runs + stages.names()


def section_1a(layout: RunLayout, stages: RunStages) -> Section:
    """The architecture table and parameter counts from ``<run>/<stage>/model.json``."""
    title = "Autoencoder: the model"
    found = find_model_json(layout, model_stage_dirs(layout, stages))
    if found is None:
        reason = stages.skipped("predict")
        if reason:
            return Section("1a", title, [], reason)
        return Section("1a", title, [Paragraph(
            "Architecture not recorded: no model.json in this run folder (no network was trained).")])
    stage, info = found
    cfg = dict(info.get("config") or {})
    if info.get("class") == "PlainCNN":
        title = "The model (a plain CNN: no autoencoder)"
        for key in ("skip_connections", "head_hidden", "dropout"):
            cfg.pop(key, None)
    desc = ", ".join(f"{k}={v}" for k, v in cfg.items())
    kind = {"ResUNetAutoencoder": "Residual U-Net autoencoder with a classifier head on the flattened bottleneck",
            "PlainCNN": "Plain convolutional network without a decoder (aelab's network for colour photos), with a "
                        "linear classifier on the average of its last map"}.get(info.get("class"),
                                                                                f"Network {info.get('class', '?')}")
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


def curves(layout: RunLayout, series: list[tuple[str, str]], out: Path) -> Path:
    """Pretraining validation MSE and each series' validation accuracy per epoch, as one PNG.

    Args:
        series: ``(label, folder relative to the run folder)`` pairs whose ``metrics.csv`` has ``val_acc``.
    """
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(10, 3.6))
    axes = fig.subplots(1, 2)
    pre = read_rows(layout.metrics_csv("pretrain"))
    if pre and "val_mse" in pre[0]:
        axes[0].plot([int(r["epoch"]) + 1 for r in pre], [float(r["val_mse"]) for r in pre], marker="o",
                     label="pretrain val MSE")
        axes[0].set_yscale("log")
        axes[0].legend()
    axes[0].set(xlabel="epoch", ylabel="MSE", title="Pretraining (denoising AE)")
    for label, folder in series:
        rows = [r for r in read_rows(layout.metrics_csv(folder)) if r.get("val_acc") not in (None, "")]
        if rows:
            axes[1].plot([int(r["epoch"]) + 1 for r in rows], [float(r["val_acc"]) for r in rows], label=label)
    axes[1].set(xlabel="epoch", ylabel="validation accuracy", title="Fine-tuning", ylim=(0, 1))
    if axes[1].lines:
        axes[1].legend()
    fig.tight_layout()
    from aelab.runs import atomic_savefig

    atomic_savefig(fig, out, dpi=110)  # a link at the name is replaced, never followed
    return out


def score_key(methods: list[MethodRow]) -> str:
    """``"test_acc"`` when every method that ran (has a validation accuracy) has a test accuracy."""
    ran = [m for m in methods if m.val_acc is not None or m.test_acc is not None]
    return "test_acc" if ran and all(m.test_acc is not None for m in ran) else "val_acc"


def unlabelled_gain(methods: list[MethodRow]) -> dict | None:
    """What the unlabelled images add: the best method that uses them minus supervised-only.

    "Best" is by test accuracy when every method that ran has one, else by validation accuracy. The
    supervised-only row is the one that does not use the unlabelled images (preferring a method
    named "supervised..."). Returns ``None`` when either side is missing.
    """
    metric = score_key(methods)
    base = [m for m in methods if not m.uses_unlabelled and getattr(m, metric) is not None]
    base.sort(key=lambda m: not m.method.lower().startswith("supervised"))
    users = [m for m in methods if m.uses_unlabelled and getattr(m, metric) is not None]
    if not base or not users:
        return None
    best = max(users, key=lambda m: getattr(m, metric))

    def delta(key):
        a, b = getattr(best, key), getattr(base[0], key)
        return None if a is None or b is None else a - b

    return {"metric": metric, "best": best, "base": base[0], "val": delta("val_acc"), "test": delta("test_acc")}


def cut_short(layout: RunLayout, stages: list[str]) -> dict[str, StagePlan]:
    """The training stages (folders of the run) that their share of the time budget cut short (`StagePlan`)."""
    plans = {st: StagePlan.read(layout.stage(st)) for st in stages if layout.stage(st).is_dir()}
    return {st: plan for st, plan in plans.items() if plan is not None and plan.cut_short}


def row_stages(method: MethodRow, settings: dict | None) -> list[str]:
    """The training stages a row depends on (``study1/chosen.json``'s ``method_stages``; else its own run folder)."""
    recorded = (settings or {}).get("method_stages") or {}
    return list(recorded.get(method.method) or ([method.run] if method.run else []))


def describe_cut(stage: str, plan: StagePlan) -> str:
    """``pretrain ran 6 of its 15 epochs in its 1.5-minute share``."""
    return (f"{stage} ran {plan.planned_epochs} of its {plan.max_epochs} epochs in its "
            f"{plan.budget_s / 60:.1f}-minute share")


def _cut_short_sentence(layout: RunLayout, settings: dict) -> str | None:
    """Which stages the budget cut short, the rows that depend on them, and what that means for the table
    (``None``: none was)."""
    stages = list(settings.get("budget_shares") or {})  # the budget's order; then any other planned stage
    stages += sorted(p.parent.name for p in layout.root.glob(f"*/{PLAN_FILE}") if p.parent.name not in stages)
    short = cut_short(layout, stages)
    if not short:
        return None
    recorded = settings.get("method_stages") or {}
    parts = []
    for st, plan in short.items():
        rows = [m for m, needs in recorded.items() if st in needs]
        parts.append(describe_cut(st, plan) + (f" (rows {', '.join(rows)})" if rows else ""))
    where = "this stage's share, so the rows that depend on it" if len(short) == 1 else \
        "these stages' shares, so the rows that depend on them"
    return (f"Cut short by the time budget: {'; '.join(parts)}. Fewer than {SHORT_EPOCHS} epochs, and under half "
            f"of the configured ones, fitted in {where} may be far below what their methods reach with more time, "
            "and a difference with them (such as what the unlabelled images add) measures the budget as much as the "
            "method. For a fair table, run again with a larger --budget (or --budget null: every epoch).")


def _validation_sentence(methods: list[MethodRow], chosen: ChosenMethod) -> str:
    sizes = sorted({m.n_val for m in methods if m.n_val})
    protocol = chosen.validation or "held-out labelled images"
    if not sizes:
        return f"Each method chose its checkpoint by accuracy on {protocol}."
    n = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]} to {sizes[-1]}"
    text = f"Each method chose its checkpoint by accuracy on {protocol}: {n} images (n_val)."
    if sizes[0] < 100:
        text += f" With {sizes[0]} images one image moves validation accuracy by {100 / sizes[0]:.1f} points."
    return text


def _raised_caps(settings: dict) -> str:
    """``, which a budget above the default raises ...: 5-fold here (fixmatch_epochs 150, ...)`` where it was above."""
    scale, caps = settings.get("epoch_scale") or 1.0, settings.get("epoch_caps") or {}
    if scale <= 1.0 or not caps:
        return ""
    listed = ", ".join(f"{name} {n}" for name, n in caps.items())
    return f", which a budget above the default raises in proportion: {scale:.3g}-fold here ({listed})"


def _settings_sentences(settings: dict) -> list[str]:
    """The kind of images and the augmentation it chose, and the time budget (``study1/chosen.json``'s settings)."""
    out = []
    if settings.get("images"):
        kind = "colour photos" if settings["images"] == "photo" else "grey images (such as digits or documents)"
        flip = "mirror each image left-right at random" if settings["images"] == "photo" else "never mirror an image"
        out.append(f"The images are {kind} by aelab's rule ({settings.get('rule', '')}), so the training "
                   f"augmentations {flip}: {settings.get('weak_augmentation')} for labelled and weak views, "
                   f"{settings.get('strong_augmentation')} for strong views.")
    if settings.get("budget_minutes"):
        shares = settings.get("budget_shares") or {}
        total = sum(shares.values()) or 1
        parts = ", ".join(f"{st} {settings['budget_minutes'] * w / total:.1f}" for st, w in shares.items())
        out.append(f"Study 1's training had a budget of {settings['budget_minutes']:g} minutes, shared among its "
                   f"stages ({parts} minutes); each stage ran the whole number of epochs nearest to what its "
                   "share allowed at its second epoch's speed (the first's, if only one fitted; at most its "
                   f"configured epochs{_raised_caps(settings)}). The seconds "
                   "column is what each method spent, prediction included.")
        if settings.get("budget_note"):
            out.append(settings["budget_note"])
    elif "budget_minutes" in settings:
        out.append("Study 1 ran without a time budget: every stage ran its configured epochs.")
    return out


_NETWORKS = {"PlainCNN": "a plain CNN without a decoder", "ResUNetAutoencoder": "the residual U-Net autoencoder"}


def _network_sentence(layout: RunLayout, methods: list[MethodRow], settings: dict) -> str | None:
    """Which network each row trained, as its run folder's model.json records it (and the rule, for ``--arch
    auto``)."""
    trained: dict[str, list[str]] = {}
    for m in methods:
        path = layout.model_json(m.run) if m.run else None
        if path is not None and path.is_file():
            cls = read_json(path).get("class")
            trained.setdefault(_NETWORKS.get(cls, f"the network {cls}"), []).append(m.method)
    if not trained:
        return None
    parts = [f"{' and '.join(rows) if len(rows) < 3 else ', '.join(rows[:-1]) + ' and ' + rows[-1]} trained {net}"
             for net, rows in trained.items()]
    text = "Networks: " + "; ".join(parts) + "."
    if settings.get("arch") == "auto" and len(trained) > 1:
        text += (" aelab's rule (--arch auto): FixMatch trains the plain CNN from random weights on colour photos, "
                 "where it learned more from the unlabelled images than the U-Net; every other network is the U-Net.")
    return text


def _table_1b(methods: list[MethodRow]) -> Table:
    rows = [[m.method, m.description, "yes" if m.uses_unlabelled else "no", m.labels_per_class, m.val_acc, m.n_val,
             m.test_acc, m.seconds] for m in methods]
    gain = unlabelled_gain(methods)
    reading = ""
    if gain:
        best, base, metric = gain["best"], gain["base"], gain["metric"]
        rows.append(["what the unlabelled images add", f"{best.method} minus {base.method}", None, None,
                     points(gain["val"]), None, points(gain["test"]), None])
        on = "test" if metric == "test_acc" else "validation"
        reading = (f"On the {on} set the best method that uses the unlabelled images, {best.method}, reaches "
                   f"{pct(getattr(best, metric))}; {base.method} reaches {pct(getattr(base, metric))} "
                   f"({points(gain[metric.split('_')[0]])}).")
    columns = ["method", "description", "uses unlabelled", "labels per class", "validation accuracy", "n_val",
               "test accuracy", "seconds"]
    if any(m.note for m in methods):  # e.g. why a method did not run (no unlabelled folder)
        columns.append("note")
        rows = [row + [m.note or None] for row, m in zip(rows, methods)] + [r + [None] for r in rows[len(methods):]]
    return Table(columns, rows, caption="Methods on the same data, seed and budget (study1/methods.csv)",
                 reading=reading)


def _section_1b_methods(layout: RunLayout, methods: list[MethodRow]) -> Section:
    chosen = ChosenMethod.read(layout)
    blocks = [_table_1b(methods), Paragraph(_validation_sentence(methods, chosen))]
    blocks += [Paragraph(text) for text in _settings_sentences(chosen.settings or {})]
    short = _cut_short_sentence(layout, chosen.settings or {})
    if short:
        blocks.append(Paragraph(short))
    networks = _network_sentence(layout, methods, chosen.settings or {})
    if networks:
        blocks.append(Paragraph(networks))
    if chosen.method:
        why = f" ({chosen.reason})" if chosen.reason else ""
        blocks.append(Paragraph(f"predictions.csv was written with {chosen.method}{why}."))
    series = [(m.method, m.run) for m in methods if m.run]
    if series:
        fig = curves(layout, series, layout.training_curves)
        blocks.append(Figure(layout.relative(fig), caption="Training curves"))
    return Section("1b", "Few labels: what the unlabelled images add", blocks)


def section_1b(layout: RunLayout, stages: RunStages) -> Section:
    """Study 1b: the methods table of ``study1/methods.csv``."""
    methods = MethodRow.read(layout)
    if not methods:
        reason = stages.skipped("predict") or "no study1/methods.csv in the run folder"
        return Section("1b", "Few labels: what the unlabelled images add", [], reason)
    return _section_1b_methods(layout, methods)

"""The loss steps of fine-tuning: supervised, the course report's objective, FixMatch.

`build_classifier_stage` returns a `aelab.train.trainer.Trainer` and the `Task` of ``cfg.method`` (one step,
one validation, FixMatch's per-image memory), so every method runs in the same training stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aelab.errors import AelabError
from aelab.train.loaders import split_indices
from aelab.train.semi import CurriculumThresholds, DistributionAlignment, LabelledStream, fixmatch_unlabelled_loss
from aelab.train.trainer import Rows, Task, TrainData, Trainer, TrainerConfig

__all__ = ["ClassifierStage", "build_classifier_stage", "decoder_modules"]


def decoder_modules(raw_model) -> tuple[nn.Module, ...]:
    """The modules only the reconstruction uses (none for a network without a decoder): a stage that never
    decodes (``decode=False``) freezes them."""
    return raw_model.decoder_modules()


@dataclass
class ClassifierStage:
    """A fine-tuning stage: its trainer, the task of its method, and the number of validation images."""

    trainer: Trainer
    task: Task
    n_val: int


def _trainer_config(cfg) -> TrainerConfig:
    """Best = highest validation accuracy, ties to the later epoch; FixMatch keeps its last epoch.

    FixMatch keeps its final weight average (Sohn et al. evaluate the EMA model at the end of training):
    picking an epoch by 40 validation images (one image = 2.5 points) chose worse weights in
    benchmarks/README.md.
    """
    fixmatch = cfg.method == "fixmatch"
    return TrainerConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size * (cfg.unlabelled_ratio if fixmatch else 1), lr=cfg.lr,
        weight_decay=cfg.weight_decay, seed=cfg.seed, monitor="val_acc", mode="max",
        keep="last" if fixmatch else "best", patience=cfg.patience, tiebreak="later",
        ema_decay=cfg.ema_decay if fixmatch else 0.0, val_batch_size=256, desc="finetune",
        budget_s=None if cfg.budget is None else 60.0 * cfg.budget)


def build_classifier_stage(cfg, fabric, raw_model, prep, data, run_dir: Path) -> ClassifierStage:
    """The training stage of ``cfg.method`` (see `aelab.train.finetune`); ``data.kind`` is the images' kind."""
    from aelab.data import build_augmentation
    from aelab.data.kind import resolve_augment

    train_idx, val_idx = split_indices(len(data.labels), cfg.val_fraction, cfg.seed, data.labels)
    if len(val_idx) == 0:
        raise AelabError("no validation images: each class needs at least 2 labelled images")
    frozen = raw_model.encoder_modules() if cfg.freeze_encoder else ()
    w = cfg.resolved_recon_weight()
    for module in (*frozen, *(decoder_modules(raw_model) if w == 0 else ())):
        module.requires_grad_(False)  # not trained (and, under --devices N, no parameter DDP waits for in vain)
    # Every process validates on all images so that the best epoch is the same everywhere.
    val = Rows(data.images, data.labels, val_idx)
    if cfg.method == "fixmatch":  # an epoch is one pass over the unlabelled images; rows travel as their labels
        train = Rows(data.unlabelled, np.arange(len(data.unlabelled)))
    else:
        train = Rows(data.images, data.labels, train_idx)
    trainer = Trainer(_trainer_config(cfg), raw_model, TrainData(train, val), fabric=fabric, run_dir=run_dir)
    weak = build_augmentation(resolve_augment(cfg.augment, data.images, kind=data.kind), prep.image_size)
    weak = weak.to(fabric.device)
    if cfg.method == "fixmatch":
        strong = build_augmentation(resolve_augment(cfg.strong_augment, data.images, "strong", kind=data.kind),
                                    prep.image_size).to(fabric.device)
        step, train_state = _fixmatch_step(cfg, trainer, prep, data, train_idx, (weak, strong), w)
    else:
        step, train_state = _labelled_step(cfg, trainer.model, prep, weak, frozen, w), None
    validate = _validator(trainer.evaluated, prep, trainer.val_loader, w)
    return ClassifierStage(trainer, Task(step, validate, train_state), int(len(val_idx)))


def _validator(model, prep, val_loader, w: float):
    """Validation accuracy (and the loss terms) of ``model`` on the held-out labelled images."""

    def validate() -> dict[str, float]:
        sums = {"val_ce": 0.0, "val_mse": 0.0}
        correct = n = 0
        for x, y in val_loader:
            out = model(prep.model_input(x), decode=w > 0)
            sums["val_ce"] += float(F.cross_entropy(out.logits.float(), y)) * len(x)
            if w > 0:
                sums["val_mse"] += float(F.mse_loss(out.reconstruction.float(), prep.target(x))) * len(x)
            correct += int((out.logits.argmax(1) == y).sum())
            n += len(x)
        result = {k: v / n for k, v in sums.items() if w > 0 or k != "val_mse"}
        return {**result, "val_acc": correct / n}

    return validate


def _labelled_step(cfg, model, prep, augment, frozen, w: float):
    """``(1 − w)·CE + w·MSE`` on an augmented labelled batch (w = 0: plain cross-entropy, no decoder)."""

    def train_step(batch, _step: int):
        x, y = batch
        for module in frozen:  # a frozen encoder keeps its BatchNorm statistics too
            module.eval()
        clean = augment(prep.target(x))
        inp = clean if cfg.noise_factor == 0 else (clean + cfg.noise_factor * torch.randn_like(clean)).clamp(0, 1)
        out = model(prep.normalize(inp), decode=w > 0)
        ce = F.cross_entropy(out.logits.float(), y)
        if w == 0:
            return {"loss": ce, "ce": ce}
        mse = F.mse_loss(out.reconstruction.float(), clean)
        return {"loss": w * mse + (1 - w) * ce, "mse": mse, "ce": ce}

    return train_step


def _fixmatch_state(cfg, fabric, data, train_idx: np.ndarray):
    """FlexMatch's per-image memory and ReMixMatch's distribution alignment, as asked for (None when off)."""
    curriculum = align = None
    if cfg.class_thresholds:
        curriculum = CurriculumThresholds(len(data.unlabelled), len(data.classes), cfg.threshold,
                                          min(cfg.threshold_floor, cfg.threshold)).to(fabric.device)
    if cfg.distribution_alignment:
        counts = np.bincount(np.asarray(data.labels)[train_idx], minlength=len(data.classes))
        align = DistributionAlignment(torch.as_tensor(counts, dtype=torch.float32)).to(fabric.device)
    state = nn.ModuleDict({k: v for k, v in (("curriculum", curriculum), ("align", align)) if v is not None})
    return curriculum, align, state if len(state) else None


def _fixmatch_step(cfg, trainer: Trainer, prep, data, train_idx: np.ndarray, views, w: float):
    """FixMatch, Sohn et al. (2020) Eqs. (1)–(2): one step = a labelled batch + μ·B unlabelled images.

    The trainer's loader walks the unlabelled images (an epoch is one pass over them); the labelled batch of
    step t is drawn by `LabelledStream` from (seed, rank, t), so a resumed run draws the same ones.
    """
    fabric, model = trainer.fabric, trainer.model
    weak, strong = views
    labelled = LabelledStream(data.images, torch.as_tensor(data.labels), cfg.batch_size, cfg.seed,
                              fabric.global_rank, index=train_idx)
    curriculum, align, state = _fixmatch_state(cfg, fabric, data, train_idx)

    def train_step(batch, step: int):
        x, y = labelled.batch(step)
        x, y = x.to(fabric.device), y.to(fabric.device)
        u = prep.target(batch[0])
        xl = weak(prep.target(x))
        uw, us = weak(u), strong(u)
        n, m = len(xl), len(u)
        if w > 0:  # the weak views are reconstructed too: one pass over all three
            out = model(prep.normalize(torch.cat([xl, uw, us])), decode=True)
            logits_l, logits_w, logits_s = out.logits[:n], out.logits[n:n + m], out.logits[n + m:]
        else:  # the weak views only give pseudo-labels, which take no gradient: 1.5x faster steps on a CPU
            with torch.no_grad():
                logits_w = model(prep.normalize(uw), decode=False).logits
            out = model(prep.normalize(torch.cat([xl, us])), decode=False)
            logits_l, logits_s = out.logits[:n], out.logits[n:]
        ce = F.cross_entropy(logits_l.float(), y)
        lu, mask = fixmatch_unlabelled_loss(logits_w, logits_s, cfg.threshold, align, curriculum, batch[1])
        loss = ce + cfg.unlabelled_weight * lu
        losses = {"ce": ce, "unlabelled": lu, "mask_rate": mask.mean()}
        if w > 0:
            mse = F.mse_loss(out.reconstruction[: n + m].float(), torch.cat([xl, uw]))
            loss, losses["mse"] = (1 - w) * loss + w * mse, mse
        return {"loss": loss, **losses}

    return train_step, state

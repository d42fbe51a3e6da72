"""The loss steps of fine-tuning: supervised, the course report's objective, FixMatch.

`build_classifier_stage` returns the pieces `aelab.train.engine.fit_loop` needs (model, optimizer,
loaders, one ``train_step`` and one ``validate``), so every method runs in the same training stage.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aelab.errors import AelabError
from aelab.train.loaders import make_loader, split_indices
from aelab.train.semi import CurriculumThresholds, DistributionAlignment, LabelledStream, ModelEMA, fixmatch_unlabelled_loss

__all__ = ["build_classifier_stage"]


def _optimiser(cfg, fabric, raw_model):
    if cfg.freeze_encoder:
        for module in (*raw_model.encoders, raw_model.bottleneck):
            module.requires_grad_(False)
    params = [p for p in raw_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
    model, optimizer = fabric.setup(raw_model, optimizer)
    return model, optimizer, scheduler


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


def build_classifier_stage(cfg, fabric, raw_model, prep, data) -> dict[str, Any]:
    """The training-stage pieces for ``cfg.method`` (see `aelab.train.finetune`)."""
    from aelab.data import build_augmentation
    from aelab.data.kind import resolve_augment

    train_idx, val_idx = split_indices(len(data.labels), cfg.val_fraction, cfg.seed, data.labels)
    if len(val_idx) == 0:
        raise AelabError("no validation images: each class needs at least 2 labelled images")
    model, optimizer, scheduler = _optimiser(cfg, fabric, raw_model)
    # Every process validates on all images so that the best epoch is the same everywhere.
    val_loader = fabric.setup_dataloaders(
        make_loader(data.images, data.labels, batch_size=256, index=val_idx), use_distributed_sampler=False)
    augment = build_augmentation(resolve_augment(cfg.augment, data.images), prep.image_size).to(fabric.device)
    frozen = (*raw_model.encoders, raw_model.bottleneck) if cfg.freeze_encoder else ()
    w = cfg.resolved_recon_weight()
    ema = train_state = None
    if cfg.method == "fixmatch":
        ema = ModelEMA(raw_model, cfg.ema_decay).to(fabric.device) if cfg.ema_decay > 0 else None
        strong = build_augmentation(resolve_augment(cfg.strong_augment, data.images, "strong"), prep.image_size)
        strong = strong.to(fabric.device)
        step, loader, train_state = _fixmatch_step(cfg, fabric, model, prep, data, train_idx, augment, strong, w)
    else:
        step = _labelled_step(cfg, model, prep, augment, frozen, w)
        loader = fabric.setup_dataloaders(make_loader(
            data.images, data.labels, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True,
            index=train_idx))
    validate = _validator(ema.module if ema is not None else model, prep, val_loader, w)
    return dict(model=model, raw_model=raw_model, optimizer=optimizer, scheduler=scheduler, train_loader=loader,
                train_step=step, validate=validate, ema=ema, train_state=train_state, n_val=int(len(val_idx)))


def _labelled_step(cfg, model, prep, augment, frozen, w: float):
    """``(1 − w)·CE + w·MSE`` on an augmented labelled batch (w = 0: plain cross-entropy, no decoder)."""

    def train_step(batch):
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


def _fixmatch_step(cfg, fabric, model, prep, data, train_idx: np.ndarray, weak, strong, w: float):
    """FixMatch, Sohn et al. (2020) Eqs. (1)–(2): one step = a labelled batch + μ·B unlabelled images.

    The loader walks the unlabelled images (an epoch is one pass over them); the labelled batch of
    step t is drawn by `LabelledStream` from (seed, rank, t), so a resumed run draws the same ones.
    """
    labelled = LabelledStream(data.images, torch.as_tensor(data.labels), cfg.batch_size, cfg.seed, fabric.global_rank,
                              index=train_idx)
    n_unlabelled = len(data.unlabelled)
    # Row numbers travel with the images (as their "labels") for FlexMatch's per-image memory.
    loader = fabric.setup_dataloaders(make_loader(
        data.unlabelled, np.arange(n_unlabelled), batch_size=cfg.batch_size * cfg.unlabelled_ratio, shuffle=True, seed=cfg.seed,
        drop_last=True))
    curriculum = None
    if cfg.class_thresholds:
        curriculum = CurriculumThresholds(n_unlabelled, len(data.classes), cfg.threshold,
                                          min(cfg.threshold_floor, cfg.threshold))
        curriculum = curriculum.to(fabric.device)
    align = None
    if cfg.distribution_alignment:
        counts = np.bincount(np.asarray(data.labels)[train_idx], minlength=len(data.classes))
        align = DistributionAlignment(torch.as_tensor(counts, dtype=torch.float32)).to(fabric.device)

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

    state = nn.ModuleDict({k: v for k, v in (("curriculum", curriculum), ("align", align)) if v is not None})
    return train_step, loader, state if len(state) else None

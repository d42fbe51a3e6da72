"""Stage 2: fine-tune the autoencoder with a classifier head on the labelled images."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from aelab.errors import AelabError
from aelab.models import ModelConfig, build_model, preset_config
from aelab.progress import info
from aelab.runs import new_run_dir, save_config, set_seed
from aelab.train.checkpoint import load_checkpoint
from aelab.train.engine import fit_loop, make_fabric
from aelab.train.loaders import make_loader, split_indices
from aelab.train.options import RunOptions, require, resolve_sources, restore_for_resume

__all__ = ["FinetuneConfig", "finetune"]


@dataclass
class FinetuneConfig(RunOptions):
    """Fine-tuning settings.

    Attributes:
        init_from: pretrained checkpoint or pretrain run folder to start from; none = random weights.
        data: root folder in the seed layout (uses ROOT/dev/labelled).
        labelled: folder with one subfolder of images per class (overrides --data).
        preset: network when starting from random weights: tiny, small or seed (ignored with --init-from).
        image_size: override the preset's input size (random weights only).
        channels: 1 or 3 (random weights only; with --init-from the checkpoint's preprocessing is used).
        head: classifier head on the flattened bottleneck: bn-mlp (the seed's MLP after a BatchNorm of the embedding; trains far better from pretrained weights, see benchmarks/README.md), mlp (exactly the seed's), linear.
        dropout: dropout of the mlp head.
        freeze_encoder: train only the head and decoder; the pretrained encoder stays fixed.
        recon_weight: w in the loss w*MSE + (1-w)*cross-entropy (0.5 in the seed report).
        augment: augmentation preset: none, light or seed (the report's list; its vertical flips and rotations hurt on digits, see benchmarks/README.md).
        noise_factor: Gaussian input noise during fine-tuning (0 = none).
        epochs: maximum number of epochs.
        batch_size: images per step.
        lr: AdamW learning rate (cosine-annealed).
        weight_decay: AdamW weight decay.
        val_fraction: share of each class held out for validation; the best checkpoint has the highest validation accuracy.
        patience: stop after this many epochs without a higher validation accuracy.
        resume: continue an interrupted run from RUN/last.ckpt.
    """

    init_from: str | None = None
    data: str | None = None
    labelled: str | None = None
    preset: str = "small"
    image_size: int | None = None
    channels: int = 3
    head: str = "bn-mlp"
    dropout: float = 0.5
    freeze_encoder: bool = False
    recon_weight: float = 0.5
    augment: str = "none"
    noise_factor: float = 0.0
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    patience: int = 10
    resume: str | None = None


def _initial_model(cfg: FinetuneConfig, num_classes: int):
    from aelab.data import Preprocessing

    if cfg.init_from is None:
        model_cfg = preset_config(
            cfg.preset, image_size=cfg.image_size, in_channels=cfg.channels, num_classes=num_classes,
            head=cfg.head, dropout=cfg.dropout,
        )
        return build_model(model_cfg), model_cfg, Preprocessing(image_size=model_cfg.image_size, channels=model_cfg.in_channels)
    ckpt = load_checkpoint(cfg.init_from)
    model_cfg = ModelConfig.from_dict(ckpt["model_config"])
    model_cfg.num_classes, model_cfg.head, model_cfg.dropout = num_classes, cfg.head, cfg.dropout
    model = build_model(model_cfg)
    # The pretrained net has no head (or one for other classes): take everything else.
    own = model.state_dict()
    weights = {k: v for k, v in ckpt["state_dict"].items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in weights and not k.startswith("head.")]
    if missing:
        raise AelabError(f"{cfg.init_from}: checkpoint does not fit the network (missing {missing[:3]})")
    model.load_state_dict(weights, strict=False)
    return model, model_cfg, Preprocessing.from_dict(ckpt["preprocessing"])


def finetune(cfg: FinetuneConfig) -> Path:
    """Train the classifier (and keep reconstructing) with ``w·MSE + (1−w)·CE``.

    The best checkpoint is the epoch with the highest validation accuracy (the scored metric),
    ties broken by the earlier epoch. Returns the run folder.
    """
    from aelab.data import build_augmentation, load_images, scan_labelled

    cfg, run_dir, resume = restore_for_resume(FinetuneConfig, cfg)
    if not 0.0 < cfg.val_fraction < 1.0:
        raise AelabError(f"val_fraction must be in (0, 1): fine-tuning picks its best epoch by validation accuracy; got {cfg.val_fraction}")
    if not 0.0 <= cfg.recon_weight <= 1.0:
        raise AelabError(f"recon_weight must be in [0, 1], got {cfg.recon_weight}")
    set_seed(cfg.seed)
    src = resolve_sources(cfg.data, labelled=cfg.labelled)
    lab = scan_labelled(require(src.labelled, "labelled", "--labelled"))
    if len(lab.classes) < 2:
        raise AelabError(f"{src.labelled}: need at least 2 class subfolders, found {len(lab.classes)}")
    raw_model, model_cfg, prep = _initial_model(cfg, len(lab.classes))
    data = load_images(lab.paths, prep.image_size, prep.channels, strict=cfg.strict)
    kept = {Path(p).resolve() for p in data.paths}  # a skipped file drops its label too
    labels = lab.labels[[Path(p).resolve() in kept for p in lab.paths]]
    if not resume:
        run_dir = new_run_dir(cfg.out, "finetune")
    save_config(run_dir, cfg)
    info(f"[finetune] {len(labels)} labelled images, {len(lab.classes)} classes, "
         f"{'from ' + str(cfg.init_from) if cfg.init_from else 'random weights'} -> {run_dir}")

    fabric = make_fabric(cfg.device, cfg.devices, cfg.precision)
    train_idx, val_idx = split_indices(len(labels), cfg.val_fraction, cfg.seed, labels)
    if len(val_idx) == 0:
        raise AelabError("no validation images: each class needs at least 2 labelled images")
    if cfg.freeze_encoder:
        for module in (*raw_model.encoders, raw_model.bottleneck):
            module.requires_grad_(False)
    params = [p for p in raw_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
    model, optimizer = fabric.setup(raw_model, optimizer)
    train_loader = fabric.setup_dataloaders(
        make_loader(data.images[train_idx], labels[train_idx], batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True)
    )
    # Every process validates on all images so that the best epoch is the same everywhere.
    val_loader = fabric.setup_dataloaders(make_loader(data.images[val_idx], labels[val_idx], batch_size=256), use_distributed_sampler=False)
    augment = build_augmentation(cfg.augment, prep.image_size).to(fabric.device)
    w = cfg.recon_weight

    def losses(out, target, y):
        mse = F.mse_loss(out.reconstruction.float(), target)
        ce = F.cross_entropy(out.logits.float(), y)
        return w * mse + (1 - w) * ce, mse, ce

    frozen = (*raw_model.encoders, raw_model.bottleneck) if cfg.freeze_encoder else ()

    def train_step(batch):
        x, y = batch
        for module in frozen:  # a frozen encoder keeps its BatchNorm statistics too
            module.eval()
        clean = augment(prep.target(x))
        inp = clean if cfg.noise_factor == 0 else (clean + cfg.noise_factor * torch.randn_like(clean)).clamp(0, 1)
        loss, mse, ce = losses(model(prep.normalize(inp)), clean, y)
        return {"loss": loss, "mse": mse, "ce": ce}

    def validate():
        sums = {"val_loss": 0.0, "val_mse": 0.0, "val_ce": 0.0}
        correct = n = 0
        for x, y in val_loader:
            out = model(prep.model_input(x))
            loss, mse, ce = losses(out, prep.target(x), y)
            for k, v in zip(sums, (loss, mse, ce)):
                sums[k] += float(v) * len(x)
            correct += int((out.logits.argmax(1) == y).sum())
            n += len(x)
        return {**{k: v / n for k, v in sums.items()}, "val_acc": correct / n}

    payload = dict(
        model_config=model_cfg.to_dict(), preprocessing=prep.to_dict(), classes=list(lab.classes),
        stage="finetune", config=asdict(cfg),
    )
    state = fit_loop(
        fabric=fabric, model=model, raw_model=raw_model, optimizer=optimizer, scheduler=scheduler,
        train_loader=train_loader, train_step=train_step, validate=validate, epochs=cfg.epochs,
        run_dir=run_dir, monitor="val_acc", mode="max", patience=cfg.patience, payload=payload,
        resume=resume, desc="finetune",
    )
    info(f"[finetune] best val_acc {state.best:.4f} at epoch {state.best_epoch + 1}; checkpoint {run_dir / 'best.ckpt'}")
    return run_dir

"""Stage 1: pretrain the autoencoder as a denoising autoencoder on unlabelled images."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from aelab.errors import AelabError
from aelab.models import build_model, preset_config
from aelab.progress import info
from aelab.runs import new_run_dir, save_config, set_seed
from aelab.train.engine import fit_loop, make_fabric
from aelab.train.loaders import make_loader, split_indices
from aelab.train.options import RunOptions, require, resolve_sources, restore_for_resume

__all__ = ["PretrainConfig", "pretrain"]


@dataclass
class PretrainConfig(RunOptions):
    """Pretraining settings (defaults finish in minutes on a laptop CPU with the demo data).

    Attributes:
        data: root folder in the seed layout (ROOT/dev/unlabelled, ROOT/dev/labelled, ROOT/test).
        unlabelled: folder of unlabelled images (overrides the one under --data).
        labelled: folder of class subfolders (overrides the one under --data).
        include_labelled: also pretrain on the labelled images (their labels are not used).
        recursive: look for images in subfolders of the unlabelled folder too.
        preset: network size: tiny (tests), small (CPU default) or seed (the report's 49M-parameter net, for GPUs).
        image_size: override the preset's square input size (must be divisible by 2**depth).
        channels: 1 (grayscale) or 3 (RGB); every image is converted to this.
        width: override the preset's first-block width.
        depth: override the preset's number of poolings.
        skip_connections: keep the U-Net skip connections.
        epochs: maximum number of epochs.
        batch_size: images per step.
        lr: AdamW learning rate (cosine-annealed to 0 over the epochs).
        weight_decay: AdamW weight decay.
        noise_factor: std of the Gaussian noise added to the input (denoising); 0 = plain autoencoder.
        augment: augmentation preset for pretraining: none, light or seed.
        val_fraction: share of images held out for validation (early stopping, best checkpoint).
        patience: stop after this many epochs without a lower validation MSE.
        resume: continue an interrupted run from RUN/last.ckpt (its saved config is used).
    """

    data: str | None = None
    unlabelled: str | None = None
    labelled: str | None = None
    include_labelled: bool = False
    recursive: bool = False
    preset: str = "small"
    image_size: int | None = None
    channels: int = 3
    width: int | None = None
    depth: int | None = None
    skip_connections: bool = True
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    noise_factor: float = 0.1
    augment: str = "none"
    val_fraction: float = 0.1
    patience: int = 3
    resume: str | None = None


def pretrain(cfg: PretrainConfig) -> Path:
    """Train a denoising autoencoder: input ``x + noise``, target ``x`` in [0, 1], MSE loss.

    Returns the run folder (``config.yaml``, ``metrics.csv``, ``best.ckpt``, ``last.ckpt``).
    """
    from aelab.data import Preprocessing, build_augmentation, scan_labelled, load_images

    cfg, run_dir, resume = restore_for_resume(PretrainConfig, cfg)
    set_seed(cfg.seed)
    src = resolve_sources(cfg.data, unlabelled=cfg.unlabelled, labelled=cfg.labelled)
    model_cfg = preset_config(
        cfg.preset, image_size=cfg.image_size, width=cfg.width, depth=cfg.depth,
        in_channels=cfg.channels, num_classes=0, head="none", skip_connections=cfg.skip_connections,
    )
    prep = Preprocessing(image_size=model_cfg.image_size, channels=model_cfg.in_channels)
    data = prep.load(require(src.unlabelled, "unlabelled", "--unlabelled"), recursive=cfg.recursive, strict=cfg.strict)
    images = data.images
    if cfg.include_labelled:
        lab = scan_labelled(require(src.labelled, "labelled", "--labelled"))
        images = np.concatenate([images, load_images(lab.paths, prep.image_size, prep.channels, strict=cfg.strict).images])
    if len(images) < 2:
        raise AelabError(f"pretraining needs at least 2 images, found {len(images)}")
    if not resume:
        run_dir = new_run_dir(cfg.out, "pretrain")
    save_config(run_dir, cfg)
    info(f"[pretrain] {len(images)} images {prep.image_size}x{prep.image_size}x{prep.channels} -> {run_dir}")

    fabric = make_fabric(cfg.device, cfg.devices, cfg.precision)
    train_idx, val_idx = split_indices(len(images), cfg.val_fraction, cfg.seed)
    raw_model = build_model(model_cfg)
    optimizer = torch.optim.AdamW(raw_model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
    model, optimizer = fabric.setup(raw_model, optimizer)
    train_loader = fabric.setup_dataloaders(
        make_loader(images[train_idx], batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True)
    )
    val_images = images[val_idx] if len(val_idx) else images[train_idx]
    # Every process validates on all images so that early stopping decides the same everywhere.
    val_loader = fabric.setup_dataloaders(make_loader(val_images, batch_size=max(cfg.batch_size, 256)), use_distributed_sampler=False)
    augment = build_augmentation(cfg.augment, prep.image_size).to(fabric.device)

    def train_step(batch):
        clean = augment(prep.target(batch[0]))
        noisy = (clean + cfg.noise_factor * torch.randn_like(clean)).clamp(0, 1)
        out = model(prep.normalize(noisy))
        return {"loss": F.mse_loss(out.reconstruction.float(), clean)}

    def validate():
        total, n = 0.0, 0
        for (x,) in val_loader:
            target = prep.target(x)
            out = model(prep.model_input(x))
            total += float(F.mse_loss(out.reconstruction.float(), target, reduction="sum")) / target[0].numel()
            n += len(x)
        return {"val_mse": total / max(n, 1)}

    payload = dict(
        model_config=model_cfg.to_dict(), preprocessing=prep.to_dict(), classes=None,
        stage="pretrain", config=asdict(cfg),
    )
    state = fit_loop(
        fabric=fabric, model=model, raw_model=raw_model, optimizer=optimizer, scheduler=scheduler,
        train_loader=train_loader, train_step=train_step, validate=validate, epochs=cfg.epochs,
        run_dir=run_dir, monitor="val_mse", mode="min", patience=cfg.patience, payload=payload,
        resume=resume, desc="pretrain",
    )
    info(f"[pretrain] best val_mse {state.best:.5f} at epoch {state.best_epoch + 1}; checkpoint {run_dir / 'best.ckpt'}")
    return run_dir

"""Stage 1: pretrain the encoder on unlabelled images.

Objectives (``--objective``):

- ``denoise`` (the course report's): a denoising autoencoder, input ``x + noise``, target ``x``
  in [0, 1], MSE loss.
- ``vicreg``: self-supervised VICReg on two strongly augmented views of each image (see
  `aelab.train.selfsup`); the decoder is not trained. Fine-tune afterwards with ``--init-from``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from aelab.data.rows import RowReader
from aelab.errors import AelabError
from aelab.models import build_model, preset_config
from aelab.progress import info
from aelab.runs import set_seed
from aelab.train.checkpoint import load_checkpoint
from aelab.train.engine import make_fabric, start_run, write_model_summary
from aelab.train.loaders import split_indices
from aelab.train.options import RunOptions, require, resolve_sources, restore_for_resume
from aelab.train.trainer import Rows, Task, TrainData, Trainer, TrainerConfig

__all__ = ["OBJECTIVES", "PretrainConfig", "pretrain"]

OBJECTIVES = ("denoise", "vicreg")


@dataclass
class PretrainConfig(RunOptions):
    """Pretraining settings (defaults finish in minutes on a laptop CPU with the demo data).

    Attributes:
        objective: denoise (the course report's denoising autoencoder) or vicreg (self-supervised: two
            augmented views of an image must get similar, decorrelated embeddings).
        data: root folder in the folder layout (ROOT/dev/unlabelled, ROOT/dev/labelled, ROOT/test).
        unlabelled: folder of unlabelled images (overrides the one under --data).
        labelled: folder of class subfolders (overrides the one under --data).
        include_labelled: also pretrain on the labelled images (their labels are not used).
        recursive: look for images in subfolders of the unlabelled folder too.
        preset: network size: tiny (tests), small (CPU default) or course (the course report's 49M-parameter net,
            for GPUs).
        image_size: override the preset's square input size (must be divisible by 2**depth).
        channels: 1 (grayscale) or 3 (RGB); every image is converted to this.
        width: override the preset's first-block width.
        depth: override the preset's number of poolings.
        stem: channels of the fixed patch-whitening first layer (none = 24 for colour photos, 0 = none, the default
            for grey images).
        skip_connections: keep the U-Net skip connections.
        epochs: maximum number of epochs.
        batch_size: images per step.
        lr: AdamW learning rate (cosine-annealed to 0 over the epochs).
        weight_decay: AdamW weight decay.
        noise_factor: denoise: std of the Gaussian noise added to the input; 0 = plain autoencoder.
        augment: augmentation: none, auto, auto-strong, weak, strong, weak-flip, strong-flip, light or course;
            none = the objective's default (denoise: none, vicreg: auto-strong, i.e. strong-flip for colour photos,
            strong for grey images).
        val_fraction: share of images held out for validation (early stopping, best checkpoint).
        patience: stop after this many epochs without a lower validation loss.
        resume: continue an interrupted run from RUN/last.ckpt (its saved config is used).
        budget: minutes this stage may take: after the first epoch (and again after the second, at its speed), the
            whole number of epochs nearest to what fits (at most --epochs); null = all epochs.
    """

    objective: str = "denoise"
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
    stem: int | None = None
    skip_connections: bool = True
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    noise_factor: float = 0.1
    augment: str | None = None
    val_fraction: float = 0.1
    patience: int = 3
    resume: str | None = None
    budget: float | None = None


def _images(cfg: PretrainConfig, prep) -> RowReader:
    """The pretraining images, read by index from the decode cache (nothing is copied into memory)."""
    from aelab.data import load_images, scan_labelled

    src = resolve_sources(cfg.data, unlabelled=cfg.unlabelled, labelled=cfg.labelled)
    unlabelled = require(src.unlabelled, "unlabelled", "--unlabelled")
    parts = [prep.load(unlabelled, recursive=cfg.recursive, strict=cfg.strict).images]
    if cfg.include_labelled:
        lab = scan_labelled(require(src.labelled, "labelled", "--labelled"))
        parts.append(load_images(lab.paths, prep.image_size, prep.channels, strict=cfg.strict).images)
    images = RowReader(parts)
    if len(images) < 2:
        raise AelabError(f"pretraining needs at least 2 images, found {len(images)}")
    return images


def _denoise_task(cfg, trainer: Trainer, prep, augment) -> Task:
    """The course report's denoising autoencoder: input ``x + noise``, target ``x``, MSE."""
    model = trainer.model

    def step(batch, _step: int):
        clean = augment(prep.target(batch[0]))
        noisy = (clean + cfg.noise_factor * torch.randn_like(clean)).clamp(0, 1)
        return {"loss": F.mse_loss(model(prep.normalize(noisy)).reconstruction.float(), clean)}

    def validate():
        total, n = 0.0, 0
        for (x,) in trainer.val_loader:
            target = prep.target(x)
            out = model(prep.model_input(x))
            total += float(F.mse_loss(out.reconstruction.float(), target, reduction="sum")) / target[0].numel()
            n += len(x)
        return {"val_loss": total / max(n, 1), "val_mse": total / max(n, 1)}

    return Task(step, validate)


def _vicreg_task(cfg, trainer: Trainer, prep, augment) -> Task:
    """Two views through the encoder, pooled, projected; the VICReg loss (`aelab.train.selfsup.vicreg_loss`).

    Under ``--devices N`` the projections of every process are gathered (with their gradient) before the
    variance and covariance terms, as in the authors' implementation; validation: the same loss on one batch
    of held-out images, which every process holds whole (nothing to gather).
    """
    from aelab.train.selfsup import vicreg_loss

    model, raw_model, fabric = trainer.model, trainer.raw_model, trainer.fabric

    def embed(x01):
        return raw_model.projector(raw_model.pool_embedding(model(prep.normalize(x01), decode=False).embedding))

    def gather(z):
        return fabric.all_gather(z, sync_grads=True).reshape(-1, z.shape[-1])

    def step(batch, _step: int):
        x = prep.target(batch[0])
        return vicreg_loss(embed(augment(x)), embed(augment(x)), gather=gather if fabric.world_size > 1 else None)

    def validate():
        with torch.random.fork_rng():  # held-out views must not move the training RNG
            torch.manual_seed(cfg.seed)
            x = prep.target(next(iter(trainer.val_loader))[0])
            return {"val_loss": float(vicreg_loss(embed(augment(x)), embed(augment(x)))["loss"])}

    return Task(step, validate)


def pretrain(cfg: PretrainConfig) -> Path:
    """Pretrain with ``cfg.objective``; returns the run folder (``config.yaml``, ``metrics.csv``, ``best.ckpt``,
    ``last.ckpt``, ``model.json``)."""
    from aelab.data import Preprocessing, build_augmentation

    cfg, run_dir, resume = restore_for_resume(PretrainConfig, cfg)
    if cfg.objective not in OBJECTIVES:
        raise AelabError(f"unknown objective {cfg.objective!r}; choose one of {', '.join(OBJECTIVES)}")
    set_seed(cfg.seed)
    from aelab.data.kind import resolve_augment, resolve_stem

    fmt = preset_config(cfg.preset, image_size=cfg.image_size, width=cfg.width, depth=cfg.depth,
                        in_channels=cfg.channels)
    prep = Preprocessing(image_size=fmt.image_size, channels=fmt.in_channels)
    images = _images(cfg, prep)
    model_cfg = preset_config(
        cfg.preset, image_size=cfg.image_size, width=cfg.width, depth=cfg.depth, in_channels=cfg.channels,
        num_classes=0, head="none", skip_connections=cfg.skip_connections,
        stem=int(load_checkpoint(run_dir, which="last")["model_config"].get("stem", 0)) if resume
        else resolve_stem(cfg.stem, images),  # a resumed run keeps the input layer it started with
    )
    fabric = make_fabric(cfg.device, cfg.devices, cfg.precision, num_nodes=cfg.num_nodes)
    run_dir = start_run(fabric, cfg, "pretrain", run_dir if resume else None)
    info(f"[pretrain] {cfg.objective}: {len(images)} images {prep.image_size}x{prep.image_size}x{prep.channels} "
         f"-> {run_dir}")
    raw_model = build_model(model_cfg)
    from aelab.train.loaders import fit_input_layer

    prep = (Preprocessing.from_dict(load_checkpoint(run_dir, which="last")["preprocessing"]) if resume
            else fit_input_layer(raw_model, prep, images, cfg.seed))
    if cfg.objective == "vicreg":  # the decoder is not trained (nor waited for by DDP under --devices N)
        from aelab.train.classify import decoder_modules
        from aelab.train.selfsup import make_projector

        raw_model.projector = make_projector(raw_model.bottleneck_channels)
        for module in decoder_modules(raw_model):
            module.requires_grad_(False)
    write_model_summary(fabric, raw_model, run_dir)
    default = "auto-strong" if cfg.objective == "vicreg" else "none"
    augment = build_augmentation(resolve_augment(cfg.augment or default, images), prep.image_size).to(fabric.device)
    trainer = _trainer(cfg, fabric, raw_model, images, run_dir)
    task = (_denoise_task if cfg.objective == "denoise" else _vicreg_task)(cfg, trainer, prep, augment)
    payload = dict(model_config=model_cfg.to_dict(), preprocessing=prep.to_dict(), classes=None,
                   stage="pretrain", objective=cfg.objective, config=asdict(cfg))
    state = trainer.fit(task, payload=payload, resume=resume)
    info(f"[pretrain] best val_loss {state.best:.5f} at epoch {state.best_epoch + 1}; "
         f"checkpoint {run_dir / 'best.ckpt'}")
    return run_dir


def _trainer(cfg: PretrainConfig, fabric, raw_model, images, run_dir: Path) -> Trainer:
    """The training stage: the best epoch has the lowest validation loss."""
    train_idx, val_idx = split_indices(len(images), cfg.val_fraction, cfg.seed)
    # Rows are read by index, batch by batch: each process reads only its share of the training rows.
    data = TrainData(Rows(images, index=train_idx), Rows(images, index=val_idx if len(val_idx) else train_idx))
    config = TrainerConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed,
        monitor="val_loss", mode="min", patience=cfg.patience, desc="pretrain",
        budget_s=None if cfg.budget is None else 60.0 * cfg.budget)
    return Trainer(config, raw_model, data, fabric=fabric, run_dir=run_dir)

"""Stage 2: train the classifier on the labelled images, optionally with the unlabelled ones.

Methods (``--method``):

- ``supervised``: cross-entropy on the labelled images only (the classification path; the
  decoder is not run). From random weights it is the "supervised only" baseline.
- ``course``: the course report's method: ``w·MSE + (1−w)·CE`` on the labelled images, usually
  from a denoising-pretrained network (``--init-from``).
- ``fixmatch``: FixMatch-style consistency on labelled + unlabelled images (Sohn et al. 2020, see
  `aelab.train.semi`) with FlexMatch's class-wise thresholds (Zhang et al. 2021; ``--class_thresholds
  false`` for FixMatch's single one), evaluated with an exponential moving average of the weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from aelab.errors import AelabError, NoUnlabelledImages
from aelab.models import ModelConfig, build_model, preset_config
from aelab.models.autoencoder import CNN_HEADS
from aelab.progress import info
from aelab.runs import set_seed
from aelab.train.checkpoint import load_checkpoint
from aelab.train.engine import make_fabric, start_run, write_model_summary
from aelab.train.options import Interval, RunOptions, require, resolve_sources, restore_for_resume

__all__ = ["METHODS", "FinetuneConfig", "FinetuneResult", "finetune", "finetune_result"]

METHODS = ("supervised", "course", "fixmatch")


@dataclass
class FinetuneConfig(RunOptions):
    """Fine-tuning settings.

    Attributes:
        method: supervised (cross-entropy on the labelled images), course (the course report's
            w*MSE + (1-w)*CE) or fixmatch (semi-supervised: also learns from the unlabelled images).
        init_from: pretrained checkpoint or pretrain run folder to start from; none = random weights.
        data: root folder in the folder layout (uses ROOT/dev/labelled, and ROOT/dev/unlabelled for fixmatch).
        labelled: folder with one subfolder of images per class (overrides --data).
        unlabelled: folder of unlabelled images for fixmatch (overrides --data).
        preset: network when starting from random weights: tiny, small or course (the report's 49M-parameter
            net, for GPUs); ignored with --init-from.
        arch: network when starting from random weights: auto (cnn for fixmatch on colour photos unless --head is
            mlp or bn-mlp, else unet), unet (the residual U-Net autoencoder) or cnn (a plain CNN without a decoder:
            no course method); with --init-from, the checkpoint's.
        image_size: override the preset's input size (random weights only).
        channels: 1 or 3 (random weights only; with --init-from the checkpoint's preprocessing is used).
        width: channels of the first encoder block (random weights only; none = the preset's: 16 for the small
            U-Net, 48 for the small cnn).
        stem: channels of the fixed first layer (random weights only; none = 24 whitening channels, or 48 k-means
            centroids with --stem_kind kmeans, for colour photos; 0 = none, the default for grey images).
        stem_kind: what that layer computes (random weights only): whiten (PCA whitening of 3x3 patches) or kmeans
            (how near each whitened patch is to k-means centroids of patches of the images the method learns from,
            the unlabelled ones for fixmatch; after Coates et al. 2011; on CIFAR-10 photos it was level with whiten
            for FixMatch in a 6-minute budget, at about 1.5x the time per epoch).
        head: classifier head: auto (pool for the cnn and for colour photos from random weights, else bn-mlp),
            bn-mlp (an MLP after a BatchNorm of the U-Net's flattened bottleneck; trains far better from pretrained
            weights), mlp (exactly the course report's), linear, pool (global average pooling of the bottleneck,
            then linear); the cnn takes pool or linear (the same: its embedding is already pooled).
        dropout: dropout of the mlp head.
        freeze_encoder: train only the head and decoder; the pretrained encoder stays fixed.
        recon_weight: w in (1-w)*classification + w*MSE; none = 0.5 for course, 0 for supervised and fixmatch.
        augment: augmentation of the labelled images: auto (weak-flip for colour photos, weak for grey images such as
            digits), auto-strong (strong-flip or strong), weak (small shifts), weak-flip (shifts and horizontal
            flips), none, strong, strong-flip, light or course (the report's list: its vertical flips and rotations
            turn 6s into 9s).
        noise_factor: Gaussian input noise during fine-tuning (0 = none).
        threshold: fixmatch: confidence a prediction on a weakly augmented unlabelled image needs to become its
            pseudo-label (tau).
        unlabelled_ratio: fixmatch: unlabelled images per labelled image in a step (mu).
        unlabelled_weight: fixmatch: weight of the unlabelled loss (lambda_u).
        strong_augment: fixmatch: augmentation of the strong views (auto: strong-flip for colour photos, strong for
            grey images).
        class_thresholds: fixmatch: a confidence threshold per class, lower for classes with few confident pseudo-labels
            so far (FlexMatch's curriculum pseudo-labelling); threshold is the highest. False = one threshold for
            all (plain FixMatch).
        threshold_floor: fixmatch with class thresholds: the lowest threshold any class gets, also before any class is
            learnt (0 = FlexMatch's rule, which accepts every pseudo-label at the start; at most threshold).
        distribution_alignment: fixmatch: rescale the unlabelled predictions towards the labelled images' class
            shares before thresholding (ReMixMatch's distribution alignment).
        ema_decay: fixmatch: decay of the weight average used for validation and prediction (0 = no average).
        epochs: maximum number of epochs (fixmatch: passes over the unlabelled images).
        batch_size: labelled images per step.
        lr: AdamW learning rate (cosine-annealed).
        weight_decay: AdamW weight decay.
        val_fraction: share of each class held out for validation; the best checkpoint has the highest validation
            accuracy (fixmatch: the last epoch's weight average).
        patience: stop after this many epochs without a higher validation accuracy (not fixmatch, which keeps its
            last epoch).
        resume: continue an interrupted run from RUN/last.ckpt.
        budget: minutes this stage may take: after the first epoch (and again after the second, at its speed), the
            whole number of epochs nearest to what fits (at most --epochs); null = all epochs.
    """

    method: str = "supervised"
    init_from: str | None = None
    data: str | None = None
    labelled: str | None = None
    unlabelled: str | None = None
    preset: str = "small"
    arch: str = "auto"
    image_size: int | None = None
    channels: int = 3
    width: int | None = None
    stem: int | None = None
    stem_kind: str = "whiten"
    head: str = "auto"
    dropout: float = 0.5
    freeze_encoder: bool = False
    recon_weight: float | None = None
    augment: str = "auto"
    noise_factor: float = 0.0
    threshold: float = 0.95
    unlabelled_ratio: int = 3
    unlabelled_weight: float = 1.0
    strong_augment: str = "auto"
    threshold_floor: float = 0.5
    distribution_alignment: bool = False
    class_thresholds: bool = True
    ema_decay: float = 0.99
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    patience: int = 10
    resume: str | None = None
    budget: float | None = None

    #: FixMatch's confidence threshold (tau); the other ranges are `aelab.train.options.RULES`'.
    _parameter_constraints = {"threshold": Interval(0, 1, "right")}

    def resolved_recon_weight(self) -> float:
        if self.recon_weight is not None:
            return float(self.recon_weight)
        return 0.5 if self.method == "course" else 0.0


def _check(cfg: FinetuneConfig) -> None:
    if cfg.method not in METHODS:
        raise AelabError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    if cfg.init_from is None:
        _refuse_reconstruction(cfg, cfg.arch)  # before any folder is made


def _refuse_reconstruction(cfg: FinetuneConfig, arch: str) -> None:
    """A network without a decoder cannot serve a method that reconstructs (``recon_weight`` > 0)."""
    if arch == "cnn" and cfg.resolved_recon_weight() > 0:
        raise AelabError(f"the cnn network has no decoder, and --method {cfg.method} with recon_weight "
                         f"{cfg.resolved_recon_weight():g} reconstructs: use --arch unet or --recon_weight 0")


def _input_format(cfg: FinetuneConfig, init: dict | None):
    """The decoding the network expects (size, channels): the preset's, or the pretrained checkpoint ``init``'s."""
    from aelab.data import Preprocessing

    if init is None:
        mc = preset_config(cfg.preset, image_size=cfg.image_size, in_channels=cfg.channels)
        return Preprocessing(image_size=mc.image_size, channels=mc.in_channels)
    return Preprocessing.from_dict(init["preprocessing"])


def _initial_model(cfg: FinetuneConfig, init: dict | None, num_classes: int, head: str, stem: int, arch: str,
                   stem_kind: str = "whiten"):
    """The network, its config and preprocessing: from the preset, or from the pretrained checkpoint ``init``."""
    from aelab.data import Preprocessing

    if init is None:
        model_cfg = preset_config(
            cfg.preset, image_size=cfg.image_size, in_channels=cfg.channels, num_classes=num_classes,
            head=head, dropout=cfg.dropout, stem=stem, width=cfg.width, arch=arch, stem_kind=stem_kind,
        )
        prep = Preprocessing(image_size=model_cfg.image_size, channels=model_cfg.in_channels)
        return build_model(model_cfg), model_cfg, prep
    model_cfg = ModelConfig.from_dict(init["model_config"])
    model_cfg.num_classes, model_cfg.head, model_cfg.dropout = num_classes, head, cfg.dropout
    model = build_model(model_cfg)
    # The pretrained net has no head (or one for other classes): take everything else.
    own = model.state_dict()
    weights = {k: v for k, v in init["state_dict"].items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in weights and not k.startswith("head.")]
    if missing:
        raise AelabError(f"{cfg.init_from}: checkpoint does not fit the network (missing {missing[:3]})")
    model.load_state_dict(weights, strict=False)
    return model, model_cfg, Preprocessing.from_dict(init["preprocessing"])


@dataclass
class _Data:
    images: np.ndarray  # labelled, uint8 (N, C, H, W)
    labels: np.ndarray
    classes: list[str]
    unlabelled: np.ndarray | None  # fixmatch only
    kind: str  # the labelled images' `aelab.data.kind.image_kind`, computed once


def _load_data(cfg: FinetuneConfig, prep) -> _Data:
    from aelab.data import load_images, scan_labelled

    src = resolve_sources(cfg.data, labelled=cfg.labelled, unlabelled=cfg.unlabelled)
    lab = scan_labelled(require(src.labelled, "labelled", "--labelled"))
    if len(lab.classes) < 2:
        raise AelabError(f"{src.labelled}: need at least 2 class subfolders, found {len(lab.classes)}")
    data = load_images(lab.paths, prep.image_size, prep.channels, strict=cfg.strict)
    kept = {Path(p).resolve() for p in data.paths}  # a skipped file drops its label too
    labels = lab.labels[[Path(p).resolve() in kept for p in lab.paths]]
    unlabelled = None
    if cfg.method == "fixmatch":
        if src.unlabelled is None:
            raise NoUnlabelledImages("method fixmatch learns from unlabelled images: pass --data ROOT with "
                                     "ROOT/dev/unlabelled or --unlabelled DIR")
        unlabelled = prep.load(src.unlabelled, strict=cfg.strict).images
    from aelab.data.kind import image_kind

    return _Data(data.images, labels, list(lab.classes), unlabelled, image_kind(data.images))


def _resolve_arch(cfg: FinetuneConfig, kind: str, init: dict | None) -> str:
    """The network: the checkpoint's with ``--init_from``; else ``auto`` gives the U-Net to a method that
    reconstructs (``recon_weight`` > 0, the course method) or asks for a head only the U-Net has (mlp, bn-mlp),
    and `aelab.data.kind.resolve_arch`'s rule otherwise."""
    reconstructs = cfg.resolved_recon_weight() > 0
    if init is not None:
        arch = ModelConfig.from_dict(init["model_config"]).arch
        if cfg.arch not in ("auto", arch):
            raise AelabError(f"--arch {cfg.arch}: {cfg.init_from} holds a {arch} network; leave --arch auto with "
                             "--init_from")
    elif cfg.arch == "auto" and (reconstructs or cfg.head not in ("auto", *CNN_HEADS)):
        arch = "unet"  # the course method's decoder, or a head only the U-Net has (mlp, bn-mlp)
    else:
        from aelab.data.kind import resolve_arch

        arch = resolve_arch(cfg.arch, None, kind=kind, method=cfg.method)
    _refuse_reconstruction(cfg, arch)
    return arch


def _resolve_head(cfg: FinetuneConfig, kind: str, arch: str) -> str:
    """``auto``: pool for the cnn and for colour photos trained from random weights (supervised on a CIFAR-10 draw,
    25 labels per class: 0.407 against 0.350 with bn-mlp, benchmarks/README.md), else bn-mlp (digits; pretrained
    encoders)."""
    if cfg.head != "auto":
        return cfg.head
    return "pool" if arch == "cnn" or (cfg.init_from is None and kind == "photo") else "bn-mlp"


@dataclass
class FinetuneResult:
    """What a fine-tune produced: its run folder and the validation accuracy of its best checkpoint."""

    run_dir: Path
    val_acc: float
    best_epoch: int  # 0-based
    n_val: int  # labelled images that chose the checkpoint


def finetune(cfg: FinetuneConfig) -> Path:
    """Train the classifier with ``cfg.method``; the best checkpoint has the highest validation accuracy.

    Ties go to the later epoch: on a small validation set accuracy saturates early (40 images: 100 %
    after a few epochs in benchmarks/README.md), and the longer-trained weights are the better bet. FixMatch
    keeps its last epoch (`aelab.train.classify`). Returns the run folder (``config.yaml``, ``metrics.csv``,
    ``best.ckpt``, ``last.ckpt``, ``model.json``).
    """
    return finetune_result(cfg).run_dir


def finetune_result(cfg: FinetuneConfig) -> FinetuneResult:
    """`finetune`, returning the run folder together with the best validation accuracy."""
    cfg, run_dir, resume = restore_for_resume(FinetuneConfig, cfg)
    _check(cfg)
    set_seed(cfg.seed)
    init = None if cfg.init_from is None else load_checkpoint(cfg.init_from)
    data = _load_data(cfg, _input_format(cfg, init))
    raw_model, model_cfg, prep = _model_and_input(cfg, init, data, run_dir if resume else None)
    fabric = make_fabric(cfg.device, cfg.devices, cfg.precision, num_nodes=cfg.num_nodes)
    run_dir = start_run(fabric, cfg, "finetune", run_dir if resume else None)
    info(f"[finetune] {cfg.method}: {len(data.labels)} labelled images, {len(data.classes)} classes"
         + (f", {len(data.unlabelled)} unlabelled" if data.unlabelled is not None else "")
         + f", {'from ' + str(cfg.init_from) if cfg.init_from else 'random weights'} -> {run_dir}")
    from aelab.train.classify import build_classifier_stage

    stage = build_classifier_stage(cfg, fabric, raw_model, prep, data, run_dir)
    payload = dict(model_config=model_cfg.to_dict(), preprocessing=prep.to_dict(), classes=data.classes,
                   stage="finetune", method=cfg.method, n_val=stage.n_val, config=asdict(cfg))
    write_model_summary(fabric, raw_model, run_dir)
    state = stage.trainer.fit(stage.task, payload=payload, resume=resume)
    info(f"[finetune] best val_acc {state.best:.4f} at epoch {state.best_epoch + 1} "
         f"({stage.n_val} validation images); checkpoint {run_dir / 'best.ckpt'}")
    return FinetuneResult(Path(run_dir), float(state.best), state.best_epoch, stage.n_val)


def _model_and_input(cfg: FinetuneConfig, init: dict | None, data: _Data, resumed: Path | None):
    """The network to train, its config and its preprocessing.

    A resumed run keeps the input layer (stem, input statistics) it started with; a network from random
    weights gets its input statistics and whitening layer from the images this method may use.
    """
    from aelab.data import Preprocessing
    from aelab.data.kind import resolve_stem

    last = None if resumed is None else load_checkpoint(resumed, which="last")
    arch = str(last["model_config"].get("arch", "unet")) if last else _resolve_arch(cfg, data.kind, init)
    if last:
        stem, stem_kind = int(last["model_config"].get("stem", 0)), str(last["model_config"].get("stem_kind", "whiten"))
    else:
        stem_kind, stem = cfg.stem_kind, resolve_stem(cfg.stem, data.images, kind=data.kind, stem_kind=cfg.stem_kind)
    raw_model, model_cfg, prep = _initial_model(cfg, init, len(data.classes), _resolve_head(cfg, data.kind, arch),
                                                stem, arch, stem_kind)
    if last is not None:
        prep = Preprocessing.from_dict(last["preprocessing"])
    elif init is None:
        from aelab.train.loaders import fit_input_layer

        images = data.unlabelled if data.unlabelled is not None else data.images
        prep = fit_input_layer(raw_model, prep, images, cfg.seed)
    return raw_model, model_cfg, prep

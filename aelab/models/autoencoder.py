"""Residual U-Net autoencoder with a classifier head on the bottleneck (the seed report's model)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from aelab.errors import AelabError
from aelab.models.blocks import ResidualBlock
from aelab.models.whiten import STEM_KINDS, WhiteningStem

__all__ = ["ARCHS", "AutoencoderOutput", "ModelConfig", "ResUNetAutoencoder", "PRESETS", "build_model",
           "preset_config"]

HEADS = ("mlp", "bn-mlp", "linear", "pool", "none")
#: Networks: the residual U-Net autoencoder (`ResUNetAutoencoder`, the course report's) and a plain convolutional
#: classifier without a decoder (`aelab.models.cnn.PlainCNN`, for photos).
ARCHS = ("unet", "cnn")
#: The heads a `PlainCNN` takes: its embedding is already pooled.
CNN_HEADS = ("pool", "linear", "none")
#: The most centroids a k-means first layer (``stem_kind="kmeans"``) may have.
MAX_KMEANS_STEM = 256


class PoolHead(nn.Module):
    """Global average pooling of the bottleneck map, then a linear layer (the head of ResNets, He et al. 2016).

    Takes the flattened bottleneck ``(B, C·s·s)``; averaging over the ``s×s`` positions makes the class
    score independent of where in the image the object is, which photos need and a flattened map's MLP
    has to learn from the few labelled images.
    """

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.channels = channels
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        return self.linear(flat.view(len(flat), self.channels, -1).mean(-1))


class AutoencoderOutput(NamedTuple):
    """What the network returns.

    Attributes:
        reconstruction: ``(B, C, H, W)`` in [0, 1] (sigmoid output), or ``None`` when the forward
            pass was asked not to decode (classification only, about half the cost).
        logits: ``(B, num_classes)``, or ``None`` when the model has no head.
        embedding: ``(B, D)`` flattened bottleneck map, ``D = bottleneck_channels * (H/2^depth)^2``.
    """

    reconstruction: torch.Tensor | None
    logits: torch.Tensor | None
    embedding: torch.Tensor


@dataclass
class ModelConfig:
    """Everything needed to rebuild a network; stored in every checkpoint.

    Attributes:
        in_channels: 1 (grayscale) or 3 (RGB).
        width: channels of the first encoder block; block i has ``width * 2**i``.
        depth: number of 2× poolings; the bottleneck has ``width * 2**depth`` channels.
        image_size: square input side; must be divisible by ``2**depth``.
        num_classes: classifier outputs (0 = no head).
        skip_connections: U-Net skips (concatenation). Off for anomaly detection, where skips let
            the decoder copy anomalies through.
        head: ``"mlp"`` (Linear → ReLU → Dropout → Linear, the seed's), ``"bn-mlp"`` (the same after a
            BatchNorm1d of the embedding), ``"linear"``, ``"pool"`` (global average pooling, then linear: `PoolHead`)
            or ``"none"``.
        head_hidden: hidden units of the mlp head (default: bottleneck channels, 1024 in the seed).
        dropout: dropout of the mlp head.
        stem: output channels of a fixed first layer fitted on the training images before training
            (`aelab.models.whiten`; 0 = none): with ``stem_kind="whiten"`` PCA whitening of 3×3 patches (even:
            each direction with both signs), with ``"kmeans"`` the number of centroids (even, up to 256).
        arch: ``"unet"`` (`ResUNetAutoencoder`) or ``"cnn"`` (`aelab.models.cnn.PlainCNN`: no decoder; its
            block ``i`` has ``width * 2**i`` channels and its embedding is pooled, ``width * 2**(depth-1)``
            values). Checkpoints from before this field are U-Nets.
        stem_kind: what the fixed first layer computes: ``"whiten"`` (PCA whitening of 3×3 patches, each
            direction with both signs) or ``"kmeans"`` (`aelab.models.whiten.KMeansStem`: the triangle codes of
            the whitened patches against ``stem`` k-means centroids). Checkpoints from before this field whiten.
    """

    in_channels: int = 3
    width: int = 16
    depth: int = 3
    image_size: int = 32
    num_classes: int = 10
    skip_connections: bool = True
    head: str = "mlp"
    head_hidden: int | None = None
    dropout: float = 0.5
    stem: int = 0
    arch: str = "unet"
    stem_kind: str = "whiten"

    def validate(self) -> None:
        if self.in_channels not in (1, 3):
            raise AelabError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if self.width < 1 or self.depth < 1:
            raise AelabError(f"width and depth must be >= 1, got width={self.width}, depth={self.depth}")
        if self.image_size % (2**self.depth) != 0:
            raise AelabError(
                f"image_size {self.image_size} is not divisible by 2**depth = {2**self.depth}; "
                f"choose an image size that is a multiple of {2**self.depth} or a smaller depth"
            )
        if self.head not in HEADS:
            raise AelabError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.num_classes < 0:
            raise AelabError(f"num_classes must be >= 0, got {self.num_classes}")
        if self.stem_kind not in STEM_KINDS:
            raise AelabError(f"stem_kind must be one of {', '.join(STEM_KINDS)}, got {self.stem_kind!r}")
        if self.stem_kind == "kmeans":
            if self.stem < 0 or self.stem % 2 or self.stem > MAX_KMEANS_STEM:
                raise AelabError(f"stem must be 0 or an even number of k-means centroids up to {MAX_KMEANS_STEM}, "
                                 f"got {self.stem}")
        elif self.stem < 0 or self.stem % 2 or self.stem > 18 * self.in_channels:
            raise AelabError(f"stem must be 0 or an even number of channels up to {18 * self.in_channels} "
                             f"(both signs of the {9 * self.in_channels} directions of a 3x3 patch), got {self.stem}")
        if not 0.0 <= self.dropout < 1.0:
            raise AelabError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.arch not in ARCHS:
            raise AelabError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.arch == "cnn" and self.head not in CNN_HEADS:
            raise AelabError(f"head {self.head!r} is the U-Net's (arch unet); the cnn network takes "
                             f"{', '.join(CNN_HEADS)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Presets. `course` is exactly the course report's network (64×64 RGB, widths 64→1024, 4 poolings);
# `small` is the CPU default; `tiny` is for tests.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(width=8, depth=2, image_size=32),
    "small": dict(width=16, depth=3, image_size=32),
    "course": dict(width=64, depth=4, image_size=64, in_channels=3, head="mlp", head_hidden=1024, dropout=0.5),
}
#: The first block's width of each preset's cnn network (same depth and image size). `small`: 48, 96 and 192
#: channels, 657k parameters with a 24-channel whitening layer, as the prototype measured in benchmarks/README.md;
#: the U-Net's 16 would give a network of 77k.
CNN_WIDTHS: dict[str, int] = {"tiny": 8, "small": 48, "course": 64}


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """A ``ModelConfig`` from a preset name with keyword overrides (``None`` values are ignored).

    With ``arch="cnn"`` the width is `CNN_WIDTHS`' unless given, and the course preset's mlp head becomes ``pool``.
    """
    if name not in PRESETS:
        raise AelabError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    values = dict(PRESETS[name])
    if overrides.get("arch") == "cnn":
        values.update(width=CNN_WIDTHS[name], head="pool")
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = ModelConfig(**values)
    cfg.validate()
    return cfg


class ResUNetAutoencoder(WhiteningStem, nn.Module):
    """Residual U-Net autoencoder with an optional classifier head on the flattened bottleneck.

    Encoder: ``depth`` residual blocks each followed by 2× max pooling, then a bottleneck block.
    Decoder: per level a 2×2 ConvTranspose upsampling, concatenation with the encoder map of the
    same level (when ``skip_connections``), and a residual block; then a 1×1 conv and a sigmoid so
    the reconstruction is in [0, 1], the space of the reconstruction target.

    Example:
        >>> m = ResUNetAutoencoder(in_channels=3, width=8, depth=2, image_size=32, num_classes=10)
        >>> out = m(torch.rand(2, 3, 32, 32))
        >>> tuple(out.reconstruction.shape), tuple(out.logits.shape), tuple(out.embedding.shape)
        ((2, 3, 32, 32), (2, 10), (2, 2048))
    """

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 16,
        depth: int = 3,
        image_size: int = 32,
        num_classes: int = 10,
        skip_connections: bool = True,
        head: str = "mlp",
        head_hidden: int | None = None,
        dropout: float = 0.5,
        stem: int = 0,
        arch: str = "unet",
        stem_kind: str = "whiten",
    ):
        super().__init__()
        self.config = ModelConfig(
            in_channels, width, depth, image_size, num_classes, skip_connections, head, head_hidden, dropout, stem,
            arch, stem_kind,
        )
        self.config.validate()
        if arch != "unet":
            raise AelabError(f"ResUNetAutoencoder builds arch 'unet', not {arch!r}; use build_model")
        chans = [width * 2**i for i in range(depth)]
        bottleneck_ch = width * 2**depth
        self.stem = self.make_stem(in_channels, stem, stem_kind)
        self.encoders = nn.ModuleList(
            ResidualBlock(cin, cout) for cin, cout in zip([stem or in_channels] + chans[:-1], chans)
        )
        self.pool = nn.MaxPool2d(2, 2)
        self.bottleneck = ResidualBlock(chans[-1], bottleneck_ch)
        ups, decs = [], []
        for level in reversed(range(depth)):
            cin = bottleneck_ch if level == depth - 1 else chans[level + 1]
            ups.append(nn.ConvTranspose2d(cin, chans[level], kernel_size=2, stride=2))
            dec_in = 2 * chans[level] if skip_connections else chans[level]
            decs.append(ResidualBlock(dec_in, chans[level]))
        self.upconvs = nn.ModuleList(ups)
        self.decoders = nn.ModuleList(decs)
        self.final_conv = nn.Conv2d(chans[0], in_channels, kernel_size=1)
        side = image_size // 2**depth
        self.embedding_dim = bottleneck_ch * side * side
        self.bottleneck_channels = bottleneck_ch
        self.head = self._make_head(head, num_classes, head_hidden or bottleneck_ch, dropout)
        # Channels-last (NHWC) convolutions: 1.3x faster training steps on a CPU thread (measured at 32x32, small
        # preset), and the layout GPUs' mixed-precision kernels prefer. Results are the same up to rounding.
        self.to(memory_format=torch.channels_last)

    def _make_head(self, head: str, num_classes: int, hidden: int, dropout: float) -> nn.Module | None:
        if head == "none" or num_classes == 0:
            return None
        if head == "linear":
            return nn.Linear(self.embedding_dim, num_classes)
        if head == "pool":
            return PoolHead(self.bottleneck_channels, num_classes)
        layers: list[nn.Module] = []
        if head == "bn-mlp":
            # Standardise the flattened bottleneck first: after pretraining its scale is whatever
            # reconstruction left it at, which makes the seed's plain MLP head slow to train.
            layers.append(nn.BatchNorm1d(self.embedding_dim))
        layers += [nn.Linear(self.embedding_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                   nn.Linear(hidden, num_classes)]
        return nn.Sequential(*layers)

    def encoder_modules(self) -> tuple[nn.Module, ...]:
        """The modules ``--freeze_encoder`` keeps fixed."""
        return (*self.encoders, self.bottleneck)

    def decoder_modules(self) -> tuple[nn.Module, ...]:
        """The modules only the reconstruction uses: a stage that never decodes (``decode=False``) freezes them."""
        return (self.upconvs, self.decoders, self.final_conv)

    def pool_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        """The flattened bottleneck ``(B, D)`` averaged over its positions: ``(B, bottleneck_channels)``."""
        return embedding.view(len(embedding), self.bottleneck_channels, -1).mean(-1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Bottleneck map ``(B, bottleneck_channels, H/2^depth, W/2^depth)`` and the skip maps."""
        if self.stem is not None:
            x = self.stem(x)
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        return self.bottleneck(x), skips

    def decode(self, b: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = b
        for up, dec, skip in zip(self.upconvs, self.decoders, reversed(skips)):
            x = up(x)
            if self.config.skip_connections:
                x = torch.cat((x, skip), dim=1)
            x = dec(x)
        return torch.sigmoid(self.final_conv(x))

    def forward(self, x: torch.Tensor, decode: bool = True) -> AutoencoderOutput:
        """Encode, classify and (unless ``decode`` is False) reconstruct ``x``."""
        b, skips = self.encode(x.contiguous(memory_format=torch.channels_last))
        flat = b.flatten(1)
        logits = self.head(flat) if self.head is not None else None
        return AutoencoderOutput(self.decode(b, skips) if decode else None, logits, flat)


def build_model(config: ModelConfig) -> nn.Module:
    """Instantiate the network described by ``config``: a `ResUNetAutoencoder`, or a `PlainCNN` for arch cnn."""
    if config.arch == "cnn":
        from aelab.models.cnn import PlainCNN

        return PlainCNN(**config.to_dict())
    return ResUNetAutoencoder(**config.to_dict())

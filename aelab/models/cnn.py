"""A plain convolutional classifier for photos: no decoder, global average pooling, a linear head.

FixMatch on photos from random weights is the method it is for (`aelab.data.kind.PHOTO_ARCH_METHODS`). On the
seed-0 tuning draw of CIFAR-10 (25 labelled photos per class, 5,000 unlabelled) its FixMatch reached 0.467 with
aelab's defaults against the `small` U-Net's 0.4505; on two held-apart draws 0.4615 against 0.4225 and 0.389
against 0.399. Trained with labels only it was level with the U-Net on the tuning draw and below it on the
held-apart ones (benchmarks/README.md, "The plain CNN in aelab").

Each of the ``depth`` blocks is Keller Jordan's airbench block (2024): a 3×3 convolution, 2×2 max pooling,
batch norm and ReLU, then a second 3×3 convolution, batch norm and ReLU. Block ``i`` has ``width·2^i``
channels. The embedding is the global average of the last block's map (He et al. 2016), so it has
``width·2^(depth−1)`` values and the class score does not depend on where the object is.

Example:
    >>> m = PlainCNN(in_channels=3, width=8, depth=2, image_size=32, num_classes=10)
    >>> out = m(torch.rand(2, 3, 32, 32))
    >>> out.reconstruction is None, tuple(out.logits.shape), tuple(out.embedding.shape)
    (True, (2, 10), (2, 16))
"""

from __future__ import annotations

import torch
from torch import nn

from aelab.errors import AelabError
from aelab.models.autoencoder import AutoencoderOutput, ModelConfig
from aelab.models.whiten import WhiteningStem

__all__ = ["ConvBlock", "PlainCNN"]


class ConvBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(maxpool(conv1(x)))))))``: halves the side of the map.

    Shapes:
        ``(B, in_channels, H, W) -> (B, out_channels, H/2, W/2)``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        # No bias before a batch norm: its shift is the norm's.
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.pool(self.conv1(x))))
        return self.relu(self.bn2(self.conv2(x)))


class PlainCNN(WhiteningStem, nn.Module):
    """Optional fixed whitening layer, ``depth`` `ConvBlock` s, global average pooling, a linear classifier.

    It has no decoder: ``forward`` returns no reconstruction, so it serves classification (supervised,
    FixMatch) and embeddings, not the course report's reconstruction loss, denoising pretraining or the
    reconstruction anomaly detector. It takes `ModelConfig`'s fields; ``skip_connections``, ``head_hidden`` and
    ``dropout`` belong to the U-Net and are only kept in its config. ``head`` is ``"pool"`` (the average of the
    map, then a linear layer), ``"linear"`` (the same: the embedding is already pooled) or ``"none"``.
    """

    def __init__(self, in_channels: int = 3, width: int = 48, depth: int = 3, image_size: int = 32,
                 num_classes: int = 10, skip_connections: bool = True, head: str = "pool",
                 head_hidden: int | None = None, dropout: float = 0.5, stem: int = 0, arch: str = "cnn",
                 stem_kind: str = "whiten"):
        super().__init__()
        self.config = ModelConfig(in_channels, width, depth, image_size, num_classes, skip_connections, head,
                                  head_hidden, dropout, stem, arch, stem_kind)
        self.config.validate()
        if arch != "cnn":
            raise AelabError(f"PlainCNN builds arch 'cnn', not {arch!r}; use build_model")
        self.stem = self.make_stem(in_channels, stem, stem_kind)
        chans = [width * 2**i for i in range(depth)]
        self.encoders = nn.ModuleList(ConvBlock(cin, cout) for cin, cout in zip([stem or in_channels] + chans[:-1],
                                                                                 chans))
        self.embedding_dim = self.bottleneck_channels = chans[-1]
        self.head = None if head == "none" or num_classes == 0 else nn.Linear(chans[-1], num_classes)
        self.to(memory_format=torch.channels_last)  # as the U-Net: faster convolutions on CPU threads and GPUs

    def encoder_modules(self) -> tuple[nn.Module, ...]:
        """The modules ``--freeze_encoder`` keeps fixed."""
        return tuple(self.encoders)

    def decoder_modules(self) -> tuple[nn.Module, ...]:
        """None: the network does not reconstruct."""
        return ()

    def pool_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        """The embedding itself: it is already the average over the positions of the last map."""
        return embedding

    def forward(self, x: torch.Tensor, decode: bool = True) -> AutoencoderOutput:
        """Class scores and the pooled embedding of ``x``; the reconstruction is always None (``decode`` is
        accepted so every network is called alike)."""
        x = x.contiguous(memory_format=torch.channels_last)
        if self.stem is not None:
            x = self.stem(x)
        for block in self.encoders:
            x = block(x)
        emb = x.mean((2, 3))
        return AutoencoderOutput(None, self.head(emb) if self.head is not None else None, emb)

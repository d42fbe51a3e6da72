"""What kind of images a folder holds, and the augmentation and first layer that suit them.

The rule (stated in the report): images whose colour channels differ are **photos**; images whose
channels are equal (grey scans, digits, documents, single-channel data) are **grey**. Photos of
objects keep their class when mirrored left-right, so their augmentations flip (``weak-flip``,
``strong-flip``); a mirrored digit or letter is another symbol or none, so grey images are only
shifted, turned a little and cut out (``weak``, ``strong``). On CIFAR-10 photos the flips are worth
several points of test accuracy, on MNIST digits they cost some (benchmarks/README.md).
"""

from __future__ import annotations

import numpy as np

__all__ = ["COLOUR_THRESHOLD", "PHOTO_ARCH", "PHOTO_ARCH_METHODS", "PHOTO_KMEANS_STEM", "PHOTO_STEM", "image_kind",
           "augmentation_for", "resolve_arch", "resolve_augment", "resolve_stem"]

#: Channels of the fixed patch-whitening first layer (`aelab.models.whiten`) for photos: the 12 leading
#: directions of 3x3 colour patches, each with both signs. On a CIFAR-10 draw (25 labels per class) FixMatch
#: reached 0.4475 with it against 0.418 without (benchmarks/README.md); grey images get none.
PHOTO_STEM = 24
#: Centroids of the k-means first layer (`aelab.models.whiten.KMeansStem`, ``--stem_kind kmeans``) for photos. An
#: option, not the default: on the two CIFAR-10 tuning draws FixMatch in its 6-minute share reached 0.467 and 0.397
#: with it against 0.4495 and 0.403 with the whitening layer (benchmarks/README.md, "A k-means first layer").
PHOTO_KMEANS_STEM = 48

#: The network FixMatch trains from random weights on photos (`aelab.models.ModelConfig.arch`): the plain CNN,
#: whose FixMatch beat the U-Net's by 2.2 points on the seed-0 tuning draw of CIFAR-10 (benchmarks/README.md).
PHOTO_ARCH = "cnn"
#: The methods `PHOTO_ARCH` is for. Trained with labels only, the two networks were level on the tuning draw
#: (0.406 against 0.4065), so supervised training keeps the U-Net, as grey images do for every method.
PHOTO_ARCH_METHODS = ("fixmatch",)

#: Mean absolute difference between colour channels (in 0..255 units) above which images count as photos.
#: MNIST digits loaded as RGB give 0; CIFAR-10 photos about 18.
COLOUR_THRESHOLD = 4.0


def image_kind(images: np.ndarray, sample: int = 512) -> str:
    """``"photo"`` when the images have colour, else ``"grey"``; ``images``: uint8 ``(N, C, H, W)`` or a `RowReader`.

    Looks at up to ``sample`` images spread over the set (the rows are read, not the whole set).

    Example:
        >>> grey = np.repeat(np.random.default_rng(0).integers(0, 255, (4, 1, 8, 8), dtype=np.uint8), 3, axis=1)
        >>> image_kind(grey), image_kind(np.random.default_rng(0).integers(0, 255, (4, 3, 8, 8), dtype=np.uint8))
        ('grey', 'photo')
    """
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[1] != 3 or shape[0] == 0:
        return "grey"
    rows = np.unique(np.linspace(0, shape[0] - 1, min(sample, shape[0])).astype(int))
    x = np.asarray(images.gather(rows) if hasattr(images, "gather") else images[rows], dtype=np.float32)
    spread = (np.abs(x[:, 0] - x[:, 1]) + np.abs(x[:, 1] - x[:, 2])).mean() / 2
    return "photo" if spread > COLOUR_THRESHOLD else "grey"


def augmentation_for(kind: str, strength: str = "weak") -> str:
    """The augmentation preset for ``kind`` (``photo``/``grey``) and ``strength`` (``weak``/``strong``)."""
    return f"{strength}-flip" if kind == "photo" else strength


def resolve_augment(preset: str, images: np.ndarray, strength: str = "weak", *, kind: str | None = None) -> str:
    """``preset`` itself, or for ``"auto"`` (``"auto-strong"``: strength strong) the preset `augmentation_for`
    gives for these images (``kind``: their `image_kind` when already known)."""
    if preset == "auto-strong":
        preset, strength = "auto", "strong"
    return augmentation_for(kind or image_kind(images), strength) if preset == "auto" else preset


def resolve_stem(stem: int | None, images, *, kind: str | None = None, stem_kind: str = "whiten") -> int:
    """``stem`` itself, or for ``None`` `PHOTO_STEM` (`PHOTO_KMEANS_STEM` for a k-means stem) for photos and 0
    (no fixed first layer) for grey images (``kind``: the images' `image_kind` when already known)."""
    if stem is not None:
        return int(stem)
    if (kind or image_kind(images)) != "photo":
        return 0
    return PHOTO_KMEANS_STEM if stem_kind == "kmeans" else PHOTO_STEM


def resolve_arch(arch: str, images, *, kind: str | None = None, method: str = "fixmatch") -> str:
    """``arch`` itself, or for ``"auto"`` `PHOTO_ARCH` for photos trained by one of `PHOTO_ARCH_METHODS`, else
    ``"unet"`` (``kind``: the images' `image_kind` when already known; ``method``: the fine-tuning method)."""
    if arch != "auto":
        return arch
    photo = (kind or image_kind(images)) == "photo"
    return PHOTO_ARCH if photo and method in PHOTO_ARCH_METHODS else "unet"

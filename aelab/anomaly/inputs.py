"""Inputs and results of the anomaly detector: arrays or tensors made into the detector's images."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from aelab.errors import DataError

__all__ = ["ImageBatch", "Reconstruction", "ScoreResult"]


@dataclass
class ImageBatch:
    """Images ready for the detector: uint8 ``(N, C, H, W)``; ``paths``/``skipped`` for folders."""

    images: np.ndarray
    paths: list[Path] | None = None
    skipped: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class ScoreResult:
    """Per-image results, ``(N,)`` each, in the order of the input (``paths`` for folders)."""

    scores: np.ndarray
    loss: np.ndarray  # per-image MSE, the course report's loss
    normalized: np.ndarray  # scores / (scores + threshold): 0.5 at the threshold
    is_anomaly: np.ndarray  # int64 0/1
    paths: list[Path] | None = None
    skipped: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class Reconstruction:
    """Images ``(N, C, H, W)`` uint8, reconstructions ``(N, C, H, W)`` in [0, 1], error maps ``(N, H, W)``."""

    images: np.ndarray
    reconstruction: np.ndarray
    error_map: np.ndarray


def _array_images(x: Any) -> np.ndarray:
    """uint8 ``(N, C, H, W)`` from an array or tensor: uint8 0..255 or float in [0, 1]."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]  # (N, H, W) grayscale
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise DataError(f"expected images (N, C, H, W) with C = 1 or 3 (or (N, H, W)), got shape {x.shape}")
    if x.shape[2] != x.shape[3]:
        raise DataError(f"images must be square, got {x.shape[2]}x{x.shape[3]}")
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
            raise DataError(f"float images must be finite and in [0, 1] (got {x.min():.3g}..{x.max():.3g}); "
                            "pass uint8 for 0..255")
        return np.rint(x * 255.0).astype(np.uint8)
    if np.issubdtype(x.dtype, np.integer) and x.min() >= 0 and x.max() <= 255:
        return x.astype(np.uint8)
    raise DataError(f"images must be uint8 (0..255) or float in [0, 1], got dtype {x.dtype}")


def _match(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Convert an array to the detector's channels and size, as folder decoding would."""
    if images.shape[1] != channels:
        if channels == 3:
            images = np.repeat(images, 3, axis=1)
        else:  # ITU-R 601 luma, Pillow's "L" conversion
            w = np.array([299, 587, 114], dtype=np.float64).reshape(1, 3, 1, 1) / 1000
            images = np.clip(np.rint((images * w).sum(1, keepdims=True)), 0, 255).astype(np.uint8)
    if images.shape[-1] != size:
        t = F.interpolate(torch.from_numpy(images).float(), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
        images = t.round().clamp(0, 255).to(torch.uint8).numpy()
    return images

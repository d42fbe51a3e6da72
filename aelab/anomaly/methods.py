"""The two detector families, the default for a data kind, and loading either from a checkpoint.

- ``reconstruction`` (`ReconstructionDetector`): an autoencoder; image scores and per-pixel maps.
  Measured: one-class MNIST 0.97+, local defects on digits 0.96 (benchmarks/README.md).
- ``geometric`` (`GeometricDetector`): transformation prediction; image scores only. On photos
  reconstruction error ranks images by how busy they are (one-class CIFAR-10 below chance on some
  classes); transformation prediction learns what normal photos look like
  (benchmarks/README.md, "One-class CIFAR-10").

``auto`` picks per data kind (`default_method`): ``reconstruction`` for grayscale images (one
channel, or three equal channels: digits saved as RGB) and for the MVTec AD layout (local defects,
where the maps and pixel metrics matter), ``geometric`` for colour photos. The rule was set on
tuning data only: one-class CIFAR-10 airplane and deer (geometric 0.738 / 0.605, reconstruction
0.493 / 0.718: means 0.672 against 0.606), not the classes benchmarks/README.md reports; on
one-class MNIST the geometric detector averages 0.923 (0.776 on the symmetric digit 1) against the
reconstruction detector's 0.97+, so grayscale keeps the reconstruction detector.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from aelab.errors import AelabError

__all__ = ["METHODS", "default_method", "is_colour", "load_detector"]

METHODS: tuple[str, ...] = ("auto", "reconstruction", "geometric")
def is_colour(images: np.ndarray) -> bool:
    """True for colour photos by aelab's one rule (`aelab.data.kind.image_kind`)."""
    from aelab.data.kind import image_kind

    return image_kind(images) == "photo"


def default_method(method: str, normal: str | os.PathLike | np.ndarray, *, mvtec: bool = False,
                   channels: int | None = None, recursive: bool = False) -> str:
    """The method ``auto`` stands for on these normal images (a folder or an array); others unchanged."""
    if method not in METHODS:
        raise AelabError(f"unknown anomaly method {method!r}; choose one of {', '.join(METHODS)}")
    if method != "auto":
        return method
    if mvtec or channels == 1:
        return "reconstruction"
    if isinstance(normal, np.ndarray):
        sample = normal[:64]
    else:
        from aelab.data import list_images, load_images

        paths = list_images(normal, recursive=recursive)[:64]
        sample = load_images(paths, 32, 3, strict=False).images if paths else np.zeros((0, 3, 1, 1), np.uint8)
    return "geometric" if is_colour(sample) else "reconstruction"


def load_detector(path: str | os.PathLike, device: str | None = None):
    """A fitted `ReconstructionDetector` or `GeometricDetector` from a checkpoint file or run folder."""
    from aelab.anomaly.detector import DETECTOR_FILE, ReconstructionDetector
    from aelab.anomaly.geometric import GeometricDetector
    from aelab.train.checkpoint import load_checkpoint

    p = Path(path)
    file = p / DETECTOR_FILE if p.is_dir() else p
    if not file.is_file():
        raise AelabError(f"no anomaly detector at {file} (written by `aelab anomaly fit` or a detector's save)")
    method = load_checkpoint(file).get("method", "reconstruction")
    cls = GeometricDetector if method == "geometric" else ReconstructionDetector
    return cls.load(file, device=device)

"""The one definition of preprocessing, stored with every model.

The seed normalised differently in each stage (ImageNet statistics for pretraining and test,
0.5/0.5 for fine-tuning) and used the normalised image as the target of a sigmoid decoder.
Here a single `Preprocessing` object decides decoding (size, channels) and the network input;
the reconstruction target is always the plain image in [0, 1], matching a sigmoid output.
It is saved in checkpoints (`to_dict`) and rebuilt from them (`from_dict`), so training,
validation and prediction apply exactly the same steps.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch

from aelab.errors import AelabError, DataError

if TYPE_CHECKING:
    from aelab.data.decode import ImageSet

__all__ = ["Preprocessing"]


@dataclass(frozen=True)
class Preprocessing:
    """How images become tensors.

    Args:
        image_size: Images are resized to ``image_size x image_size`` when decoded (>= 8).
        channels: 1 (grayscale) or 3 (RGB); every image mode is converted to this.
        mean: Per-channel mean subtracted from the network input (after /255), or ``None``.
        std: Per-channel std dividing the network input, or ``None``. Set both or neither.

    Example:
        >>> pre = Preprocessing(image_size=32, channels=1, mean=(0.5,), std=(0.25,))
        >>> x = torch.full((2, 1, 32, 32), 255, dtype=torch.uint8)
        >>> pre.model_input(x)[0, 0, 0, 0].item(), pre.target(x)[0, 0, 0, 0].item()
        (2.0, 1.0)
    """

    image_size: int = 32
    channels: int = 3
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise lists (from YAML/JSON) to tuples via object.__setattr__.
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, (int, float)):
                    value = (value,)
                object.__setattr__(self, name, tuple(float(v) for v in value))
        for name in ("image_size", "channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise AelabError(f"{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))  # plain int, also from numpy scalars
        if self.image_size < 8:
            raise AelabError(f"image_size must be at least 8, got {self.image_size}")
        if self.channels not in (1, 3):
            raise AelabError(f"channels must be 1 or 3, got {self.channels!r}")
        if (self.mean is None) != (self.std is None):
            raise AelabError("set both mean and std, or neither (no normalisation)")
        if self.mean is not None:
            for name in ("mean", "std"):
                value = getattr(self, name)
                if len(value) != self.channels:
                    raise AelabError(f"{name} needs {self.channels} value(s) (one per channel), got {list(value)}")
                if not all(math.isfinite(v) for v in value):
                    raise AelabError(f"{name} must be finite, got {list(value)}")
            if any(s <= 0 for s in self.std):
                raise AelabError(f"std must be > 0, got {list(self.std)}")

    def fitted(self, images, sample: int = 2000, seed: int = 0) -> "Preprocessing":
        """A copy whose mean/std are the per-channel statistics of ``images`` (uint8 ``(N, C, H, W)`` or a
        `RowReader`), from up to ``sample`` of them: the network input then has mean 0 and std 1 per channel.

        Read 256 rows at a time (sums in float64), so memory stays flat whatever the image size."""
        n = len(images)
        rows = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
        total = np.zeros(self.channels)
        squares = np.zeros(self.channels)
        count = 0
        for lo in range(0, len(rows), 256):
            part = rows[lo:lo + 256]
            x = images.gather(part).numpy() if hasattr(images, "gather") else np.asarray(images[part])
            x = x.astype(np.float32) / 255.0
            total += x.sum(axis=(0, 2, 3), dtype=np.float64)
            squares += np.square(x).sum(axis=(0, 2, 3), dtype=np.float64)
            count += x.shape[0] * x.shape[2] * x.shape[3]
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 1e-6))
        return Preprocessing(self.image_size, self.channels, tuple(mean.tolist()),
                             tuple(np.maximum(std, 1e-3).tolist()))

    # --- tensors ---------------------------------------------------------------------------------

    def _check(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if x.dtype != torch.uint8:
            raise AelabError(f"expected a uint8 image batch (B, C, H, W), got dtype {x.dtype}")
        if x.dim() < 3 or x.shape[-3] != self.channels:
            raise AelabError(f"expected images with {self.channels} channel(s) (B, C, H, W), "
                             f"got shape {tuple(x.shape)}")
        return x

    def target(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Reconstruction target: ``x / 255`` as float32 in [0, 1], shape kept ``(B, C, H, W)``."""
        return self._check(x).to(torch.float32).div_(255.0)

    def model_input(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Network input: ``x / 255``, then ``(x - mean) / std`` when set; float32 on ``x``'s device.

        Args:
            x: uint8 images ``(B, C, H, W)`` (or ``(C, H, W)``), any device.

        Returns:
            float32 tensor of the same shape and device.
        """
        out = self.target(x)
        return self.normalize(out)

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Apply mean/std to a float batch already in [0, 1] (e.g. after augmentation)."""
        if self.mean is None:
            return x01
        shape = (-1, 1, 1)
        mean = torch.tensor(self.mean, dtype=x01.dtype, device=x01.device).view(shape)
        std = torch.tensor(self.std, dtype=x01.dtype, device=x01.device).view(shape)
        return (x01 - mean) / std

    # --- plain values ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, not tuples) for checkpoints and YAML."""
        out = asdict(self)
        for name in ("mean", "std"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Preprocessing":
        """Rebuild from `to_dict` output; unknown keys are an error (a sign of a foreign dict)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise AelabError(f"unknown preprocessing setting(s): {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(known))})")
        return cls(**dict(values))

    # --- convenience -----------------------------------------------------------------------------

    def load(
        self,
        paths_or_folder: str | os.PathLike | Sequence[str | os.PathLike],
        recursive: bool = False,
        strict: bool = False,
        cache_dir: str | os.PathLike | None = None,
        workers: int | None = None,
    ) -> "ImageSet":
        """Decode a folder (or a list of files) at this preprocessing's size and channels.

        Returns:
            `ImageSet` with ``images`` uint8 ``(N, channels, image_size, image_size)``.
        """
        from aelab.data.decode import load_images
        from aelab.data.folders import list_images

        if isinstance(paths_or_folder, (str, os.PathLike)):
            paths = list_images(paths_or_folder, recursive=recursive)
        else:
            paths = list(paths_or_folder)
            if not paths:
                raise DataError("no image files given")
        return load_images(paths, self.image_size, self.channels, strict=strict, cache_dir=cache_dir, workers=workers)

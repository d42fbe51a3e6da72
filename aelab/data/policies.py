"""Weak and strong augmentation for few-label training, batched, with no flips.

Digits, characters and most object photographs are not symmetric under vertical flips or large
rotations (a flipped 6 is a 9), so these policies use only small geometric changes.

- ``weak``: a random translation of up to 12.5 % of the side (the weak policy of FixMatch,
  Sohn et al. 2020, Sec. 3.2, without its horizontal flip).
- ``strong``: a RandAugment-like draw (Cubuk et al. 2020) of rotation, shear, scale and
  translation composed into one affine warp, brightness/contrast/sharpness changes, then Cutout
  (DeVries & Taylor 2017, filled with the image's mean), as FixMatch's strong policy α → A (Sec. 3.2, Table 12), again without flips.

Every parameter is drawn per sample from torch's CPU generator, so ``torch.manual_seed`` repeats a
batch on any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RandomAffineCutout", "weak_policy", "strong_policy"]


def _u(n: int, low: float, high: float) -> torch.Tensor:
    return torch.rand(n) * (high - low) + low


class RandomAffineCutout(nn.Module):
    """Per-sample affine warp (one ``grid_sample``), optional colour changes and Cutout.

    Args:
        degrees: maximum absolute rotation.
        translate: maximum shift as a fraction of the side.
        scale: zoom range (1 = unchanged; > 1 enlarges the content).
        shear: maximum absolute shear (tan of the shear angle).
        brightness: maximum relative brightness change.
        contrast: maximum relative contrast change.
        cutout: range of the Cutout square's side as a fraction of the image side; ``None`` = no Cutout.

    Example:
        >>> aug = strong_policy()
        >>> aug(torch.rand(4, 1, 32, 32)).shape
        torch.Size([4, 1, 32, 32])
    """

    def __init__(self, degrees: float = 0.0, translate: float = 0.0, scale=(1.0, 1.0), shear: float = 0.0,
                 brightness: float = 0.0, contrast: float = 0.0, cutout: tuple[float, float] | None = None):
        super().__init__()
        self.degrees, self.translate, self.scale, self.shear = degrees, translate, scale, shear
        self.brightness, self.contrast, self.cutout = brightness, contrast, cutout

    def _affine(self, x: torch.Tensor) -> torch.Tensor:
        b = len(x)
        theta = torch.deg2rad(_u(b, -self.degrees, self.degrees))
        zoom = torch.exp(_u(b, math.log(self.scale[0]), math.log(self.scale[1])))
        sh = _u(b, -self.shear, self.shear)
        cos, sin = torch.cos(theta), torch.sin(theta)
        # Output -> input coordinates: rotate, shear, then divide by the zoom.
        rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
        shear = torch.stack([torch.stack([torch.ones(b), sh], 1), torch.stack([torch.zeros(b), torch.ones(b)], 1)], 1)
        lin = (rot @ shear) / zoom[:, None, None]
        shift = _u(2 * b, -2 * self.translate, 2 * self.translate).view(b, 2)  # [-1, 1] coords span 2
        mat = torch.cat([lin, shift[:, :, None]], 2).to(x.device, x.dtype)
        grid = F.affine_grid(mat, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _color(self, x: torch.Tensor) -> torch.Tensor:
        b = len(x)
        view = (b, 1, 1, 1)
        x = x * _u(b, 1 - self.brightness, 1 + self.brightness).to(x).view(view)
        mean = x.mean((1, 2, 3), keepdim=True)
        f = _u(b, 1 - self.contrast, 1 + self.contrast).to(x).view(view)
        return (f * x + (1 - f) * mean).clamp(0, 1)

    def _cutout(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        side = _u(b, *self.cutout) * min(h, w)
        cy, cx = torch.rand(b) * h, torch.rand(b) * w
        ys = torch.arange(h, dtype=torch.float32)[None, :, None]
        xs = torch.arange(w, dtype=torch.float32)[None, None, :]
        half = (side / 2)[:, None, None]
        hole = ((ys - cy[:, None, None]).abs() < half) & ((xs - cx[:, None, None]).abs() < half)
        fill = x.mean((1, 2, 3), keepdim=True).expand_as(x)  # the image's mean: no bright or dark blob
        return torch.where(hole[:, None].to(x.device), fill, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Augment float ``(B, C, H, W)`` in [0, 1]; returns the same shape in [0, 1]."""
        if self.degrees or self.translate or self.shear or self.scale != (1.0, 1.0):
            x = self._affine(x)
        if self.brightness or self.contrast:
            x = self._color(x)
        if self.cutout is not None:
            x = self._cutout(x)
        return x.clamp(0, 1)


def weak_policy() -> RandomAffineCutout:
    """Translation by up to 12.5 % of the side, nothing else (no flips)."""
    return RandomAffineCutout(translate=0.125)


def strong_policy() -> RandomAffineCutout:
    """Rotation ±25°, shear ±0.3, zoom 0.8–1.2, shift ±15 %, brightness/contrast ±50 %, Cutout 20–50 % of the side."""
    return RandomAffineCutout(degrees=25.0, translate=0.15, scale=(0.8, 1.2), shear=0.3,
                              brightness=0.5, contrast=0.5, cutout=(0.2, 0.5))

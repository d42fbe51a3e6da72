"""Weak and strong augmentation for few-label training, batched.

Digits and characters are not symmetric under flips (a mirrored 3 is no digit, a turned 6 is a 9),
so ``weak`` and ``strong`` use only small geometric changes. Photographs of objects are (a car
facing left is still a car): ``weak-flip`` and ``strong-flip`` add FixMatch's random horizontal flip
and pad by reflection, as its pad-and-crop does (Sohn et al. 2020, Sec. 3.2 and Appendix; the standard
CIFAR augmentation of He et al. 2016, Sec. 4.2). `aelab.data.kind.augmentation_for` picks the pair
from the images: colour images are treated as photos, grey ones (digits, documents) are not.

- ``weak``: a random translation of up to 12.5 % of the side (the weak policy of FixMatch,
  Sohn et al. 2020, Sec. 3.2, without its horizontal flip); ``weak-flip`` with it.
- ``strong``: a RandAugment-like draw (Cubuk et al. 2020) of rotation, shear, scale and
  translation composed into one affine warp, brightness/contrast/sharpness changes, then Cutout
  (DeVries & Taylor 2017, filled with the image's mean), as FixMatch's strong policy α → A (Sec. 3.2,
  Table 12), again without flips;
  ``strong-flip`` adds the flip and a saturation change for colour images.

Every parameter is drawn per sample from torch's CPU generator, so ``torch.manual_seed`` repeats a
batch on any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RandomAffineCutout", "weak_policy", "strong_policy"]

_PADDING = {"zeros": "zeros", "reflect": "reflection"}


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
        flip: mirror each image left-right with probability 1/2.
        saturation: maximum relative saturation change (colour images only).
        padding: what a shift brings in at the border: ``zeros`` (black, digits' background) or ``reflect``
            (the mirrored image, as pad-and-crop with reflection).

    Example:
        >>> aug = strong_policy()
        >>> aug(torch.rand(4, 1, 32, 32)).shape
        torch.Size([4, 1, 32, 32])
    """

    def __init__(self, degrees: float = 0.0, translate: float = 0.0, scale=(1.0, 1.0), shear: float = 0.0,
                 brightness: float = 0.0, contrast: float = 0.0, cutout: tuple[float, float] | None = None,
                 flip: bool = False, saturation: float = 0.0, padding: str = "zeros"):
        super().__init__()
        self.degrees, self.translate, self.scale, self.shear = degrees, translate, scale, shear
        self.brightness, self.contrast, self.cutout = brightness, contrast, cutout
        self.flip, self.saturation, self.padding = flip, saturation, _PADDING[padding]

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
        if self.flip:  # mirror x in the input coordinates: the first column of the linear part changes sign
            sign = torch.where(torch.rand(b) < 0.5, -1.0, 1.0)
            lin = lin @ torch.diag_embed(torch.stack([sign, torch.ones(b)], 1))
        mat = torch.cat([lin, shift[:, :, None]], 2).to(x.device, x.dtype)
        grid = F.affine_grid(mat, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=self.padding, align_corners=False)

    def _color(self, x: torch.Tensor) -> torch.Tensor:
        b = len(x)
        view = (b, 1, 1, 1)
        x = x * _u(b, 1 - self.brightness, 1 + self.brightness).to(x).view(view)
        mean = x.mean((1, 2, 3), keepdim=True)
        f = _u(b, 1 - self.contrast, 1 + self.contrast).to(x).view(view)
        x = f * x + (1 - f) * mean
        if self.saturation and x.shape[1] == 3:  # blend with the grey image (luma weights of ITU-R BT.601)
            grey = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).expand_as(x)
            s = _u(b, 1 - self.saturation, 1 + self.saturation).to(x).view(view)
            x = s * x + (1 - s) * grey
        return x.clamp(0, 1)

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
        if self.degrees or self.translate or self.shear or self.scale != (1.0, 1.0) or self.flip:
            x = self._affine(x)
        if self.brightness or self.contrast or self.saturation:
            x = self._color(x)
        if self.cutout is not None:
            x = self._cutout(x)
        return x.clamp(0, 1)


def weak_policy(flip: bool = False) -> RandomAffineCutout:
    """Translation by up to 12.5 % of the side; with ``flip`` also a horizontal flip and reflection padding."""
    return RandomAffineCutout(translate=0.125, flip=flip, padding="reflect" if flip else "zeros")


def strong_policy(flip: bool = False) -> RandomAffineCutout:
    """Rotation ±25°, shear ±0.3, zoom 0.8–1.2, shift ±15 %, brightness/contrast ±50 %, Cutout 20–50 % of the side;
    with ``flip`` also a horizontal flip, saturation ±50 % and reflection padding (for photos)."""
    return RandomAffineCutout(degrees=25.0, translate=0.15, scale=(0.8, 1.2), shear=0.3,
                              brightness=0.5, contrast=0.5, cutout=(0.2, 0.5), flip=flip,
                              saturation=0.5 if flip else 0.0, padding="reflect" if flip else "zeros")

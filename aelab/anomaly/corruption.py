"""Structured training corruption: the reconstructive half of DRAEM (Zavrtanik et al. 2021).

DRAEM (Zavrtanik, Kristan and Skocaj, "DRAEM - A discriminatively trained reconstruction
embedding for surface anomaly detection", ICCV 2021, Sec. 3.1 and 3.3) trains its reconstructive
sub-network on normal images with simulated anomalies pasted in, and asks for the clean image
back (its Eq. 1-3 loss; here the squared error only). An autoencoder trained this way learns to
*remove* local defects, so the error map lights up exactly where a defect is; a plain
autoencoder partly reproduces small defects and hides them.

DRAEM pastes Perlin-noise-shaped regions of texture images; this module uses what a normal
training batch itself offers, so nothing is downloaded:

- ``patch``: a rectangle cut from another normal image of the batch, pasted at a random place;
- ``stroke``: a random polyline (2-4 points, 1-3 pixels thick at 32 pixels) of one random grey
  level, bright or dark (a dark stroke cuts through the object, like a missing piece);
- ``blob``: a filled ellipse of one random grey level.

Example:
    >>> clean = torch.rand(8, 1, 32, 32)
    >>> dirty = structured_corruption(clean, torch.Generator().manual_seed(0))
    >>> dirty.shape == clean.shape and bool((dirty != clean).any())
    True
"""

from __future__ import annotations

import torch

__all__ = ["CORRUPTIONS", "structured_corruption"]

CORRUPTIONS: tuple[str, ...] = ("none", "structured")
_OPS = ("patch", "stroke", "blob")


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand((), generator=gen))


def _segment_distance(yy: torch.Tensor, xx: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Distance of every pixel centre to the segment ``p``-``q`` (points as (y, x))."""
    d = q - p
    t = ((yy - p[0]) * d[0] + (xx - p[1]) * d[1]) / d.pow(2).sum().clamp_min(1e-6)
    t = t.clamp(0, 1)
    return ((yy - p[0] - t * d[0]) ** 2 + (xx - p[1] - t * d[1]) ** 2).sqrt()


def _stroke_mask(size: int, gen: torch.Generator) -> torch.Tensor:
    axis = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    n_points = int(torch.randint(2, 5, (), generator=gen))
    points = torch.rand(n_points, 2, generator=gen) * (size - 1)
    width = _uniform(gen, 0.5, 1.5) * size / 32
    dist = torch.stack([_segment_distance(yy, xx, points[i], points[i + 1]) for i in range(n_points - 1)]).amin(0)
    return dist <= width


def _blob_mask(size: int, gen: torch.Generator) -> torch.Tensor:
    axis = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    cy, cx = (torch.rand(2, generator=gen) * (size - 1)).tolist()
    ry, rx = (_uniform(gen, 1.5, 5.0) * size / 32 for _ in range(2))
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _paste_patch(out: torch.Tensor, clean: torch.Tensor, i: int, gen: torch.Generator) -> None:
    n, _, size, _ = clean.shape
    j = (i + int(torch.randint(1, max(n, 2), (), generator=gen))) % n
    h, w = (max(2, int(_uniform(gen, 0.15, 0.4) * size)) for _ in range(2))
    sy, sx, dy, dx = (int(torch.randint(0, size - s + 1, (), generator=gen)) for s in (h, w, h, w))
    out[i, :, dy : dy + h, dx : dx + w] = clean[j, :, sy : sy + h, sx : sx + w]


def structured_corruption(clean: torch.Tensor, gen: torch.Generator, rate: float = 0.5) -> torch.Tensor:
    """Corrupt a share ``rate`` of the images with one patch, stroke or blob each.

    Args:
        clean: ``(N, C, H, W)`` images in [0, 1] (square).
        gen: CPU random generator (seeded by the caller, so training is repeatable).
        rate: probability that an image is corrupted.

    Returns:
        A new tensor like ``clean``; the training target stays ``clean``.
    """
    out = clean.clone()
    n, c, size, _ = clean.shape
    picked = torch.rand(n, generator=gen) < rate
    ops = torch.randint(0, len(_OPS), (n,), generator=gen)
    for i in picked.nonzero().flatten().tolist():
        op = _OPS[int(ops[i])]
        if op == "patch":
            _paste_patch(out, clean, i, gen)
            continue
        mask = (_stroke_mask if op == "stroke" else _blob_mask)(size, gen).to(clean.device)
        level = torch.rand(c, 1, 1, generator=gen).to(clean.device, clean.dtype)
        out[i] = torch.where(mask, level.expand(c, size, size), out[i])
    return out

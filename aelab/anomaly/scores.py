"""Per-pixel anomaly maps and per-image scores from an image and its reconstruction.

A score is built in three steps, all comparing the reconstruction target (the plain image in
[0, 1], from ``Preprocessing.target``) with the decoder output (also in [0, 1]):

1. **Map** (``kind``), one value per pixel, averaged over channels, higher = more anomalous:

   - ``mse``: squared error; ``mae``: absolute error.
   - ``ssim``: ``1 - SSIM`` (Wang et al. 2004, Eq. 13) with a Gaussian window
     (``kornia.metrics.ssim``); compares local structure rather than intensity. A 7-pixel window
     suits 28-64 pixel images.
   - ``gms``: ``1 - GMS``, the gradient magnitude similarity of Xue et al. 2014 (GMSD, Eq. 4):
     ``GMS = (2 g_r g_t + c) / (g_r^2 + g_t^2 + c)`` with ``g`` the Sobel gradient magnitude
     and ``c = 0.0026`` (for images in [0, 1]); it reacts to edges that appear or vanish.
2. **Smoothing** (``smoothing`` = Gaussian sigma in pixels, 0 = none): a defect is a blob of
   high error, reconstruction noise is scattered; smoothing before the maximum suppresses
   single noisy pixels (as anomalib's ``AnomalyMapGenerator`` blurs its maps).
3. **Reduction** to one number per image: ``mean`` (the whole image, good when the whole image
   is of another kind), ``max`` or ``topk`` = the mean of the ``top_k`` share of highest map
   values (good for small local defects: a 30-pixel scratch barely moves the mean of 1,024
   pixels but dominates the maximum).

Several maps can be joined with ``+`` (e.g. ``mse+gms``): the image score is the mean of each
part's reduced score divided by ``m_k``, the median of that score over held-out normal images,
so intensity and edge errors count on one scale (a typical normal image scores 1 on each).
``combined`` is ``(sqrt(mse / m_mse) + ssim / m_ssim) / 2``.

Example:
    >>> t = torch.zeros(2, 1, 16, 16); r = t.clone(); r[1] += 0.5
    >>> base = base_scores(t, r)
    >>> [round(float(v), 3) for v in base["mse"]], [round(float(v), 3) for v in base["mae"]]
    ([0.0, 0.25], [0.0, 0.5])
    >>> r[0, 0, 3, 3] = 1.0  # one bad pixel: the mean hardly moves, the maximum does
    >>> round(float(reduce_maps(error_maps(t, r, "mse"), "max")[0]), 3)
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from aelab.errors import AelabError
from aelab.train.options import check_option

__all__ = [
    "BASE_KINDS",
    "MAP_KINDS",
    "REDUCTIONS",
    "SCORE_KINDS",
    "base_scores",
    "check_reduction",
    "check_score_kind",
    "combine_scores",
    "error_maps",
    "needed_kinds",
    "normal_medians",
    "pixel_errors",
    "reduce_maps",
    "score_parts",
    "smooth_maps",
]

MAP_KINDS: tuple[str, ...] = ("mse", "mae", "ssim", "gms")
SCORE_KINDS: tuple[str, ...] = (*MAP_KINDS, "combined")
BASE_KINDS: tuple[str, ...] = MAP_KINDS
REDUCTIONS: tuple[str, ...] = ("mean", "max", "topk")
_GMS_C = 0.0026  # Xue et al. 2014, Sec. III: c = 170 for 0..255 images, i.e. 170 / 255**2 in [0, 1]


def score_parts(kind: str) -> tuple[str, ...]:
    """The maps a ``+``-joined score averages (``("mse", "gms")`` for ``mse+gms``)."""
    return tuple(kind.split("+"))


def check_score_kind(kind: str, ssim_window: int = 7) -> str:
    """Validate a score name (and the SSIM window, odd and >= 3); returns the name."""
    parts = score_parts(kind) if "+" in str(kind) else []
    joined = bool(parts) and all(p in MAP_KINDS for p in parts) and len(set(parts)) == len(parts)
    if kind not in SCORE_KINDS and not joined:
        raise AelabError(f"unknown anomaly score {kind!r}; choose one of {', '.join(SCORE_KINDS)} "
                         "or maps joined by + (e.g. mse+gms)")
    check_option("ssim_window", ssim_window, prefix="")  # the one rule (aelab.train.options.RULES)
    return kind


def check_reduction(reduction: str, top_k: float = 0.01, smoothing: float = 0.0) -> str:
    """Validate the reduction name, the top-k share (0, 1] and the smoothing sigma (>= 0)."""
    if reduction not in REDUCTIONS:
        raise AelabError(f"unknown score reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
    check_option("top_k", top_k, prefix="")  # a share of the pixels (aelab.train.options.RULES)
    check_option("smoothing", smoothing, prefix="")  # a Gaussian sigma in pixels
    return reduction


def _ssim_map(target: torch.Tensor, recon: torch.Tensor, window: int) -> torch.Tensor:
    import kornia

    # Small images: the window must fit inside the image or SSIM is mostly padding.
    window = min(window, (min(target.shape[-2:]) // 2) * 2 - 1)
    return kornia.metrics.ssim(recon.float(), target.float(), window_size=max(window, 3), max_val=1.0)


def _gms_map(target: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    import kornia

    def magnitude(x: torch.Tensor) -> torch.Tensor:
        g = kornia.filters.spatial_gradient(x.float(), mode="sobel", normalized=True)  # (N, C, 2, H, W)
        return g.pow(2).sum(2).sqrt()

    gt, gr = magnitude(target), magnitude(recon)
    return (2 * gt * gr + _GMS_C) / (gt.pow(2) + gr.pow(2) + _GMS_C)


def error_maps(target: torch.Tensor, recon: torch.Tensor, kind: str = "mse", ssim_window: int = 7) -> torch.Tensor:
    """Per-pixel anomaly map, averaged over channels.

    Args:
        target: ``(N, C, H, W)`` images in [0, 1].
        recon: ``(N, C, H, W)`` reconstructions in [0, 1].
        kind: ``mse``, ``mae``, ``ssim`` (1 - local SSIM) or ``gms`` (1 - gradient magnitude
            similarity); ``combined`` shows the squared error.
        ssim_window: odd SSIM window side.

    Returns:
        ``(N, H, W)`` float32 tensor, higher = more anomalous.
    """
    check_score_kind(kind, ssim_window)
    diff = recon.float() - target.float()
    if kind == "mae":
        return diff.abs().mean(1)
    if kind == "ssim":
        return (1.0 - _ssim_map(target, recon, ssim_window)).mean(1)
    if kind == "gms":
        return (1.0 - _gms_map(target, recon)).mean(1)
    return diff.pow(2).mean(1)


pixel_errors = error_maps  # the name of earlier releases


def smooth_maps(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``(N, H, W)`` maps with std ``sigma`` pixels (kernel 2*ceil(3 sigma)+1); 0 = unchanged."""
    if not sigma:
        return maps
    import kornia

    k = 2 * math.ceil(3 * float(sigma)) + 1
    k = min(k, (min(maps.shape[-2:]) // 2) * 2 - 1)
    if k < 3:
        return maps
    out = kornia.filters.gaussian_blur2d(maps[:, None].float(), (k, k), (float(sigma), float(sigma)),
                                         border_type="replicate")
    return out[:, 0]


def reduce_maps(maps: torch.Tensor, reduction: str = "mean", top_k: float = 0.01) -> torch.Tensor:
    """``(N,)`` image scores from ``(N, H, W)`` maps: mean, max, or mean of the top ``top_k`` share."""
    check_reduction(reduction, top_k)
    flat = maps.flatten(1)
    if reduction == "mean":
        return flat.mean(1)
    if reduction == "max":
        return flat.amax(1)
    k = max(1, int(math.ceil(top_k * flat.shape[1])))
    return flat.topk(k, dim=1).values.mean(1)


def base_scores(
    target: torch.Tensor, recon: torch.Tensor, ssim_window: int = 7, kinds: tuple[str, ...] = BASE_KINDS,
    reduction: str = "mean", top_k: float = 0.01, smoothing: float = 0.0,
) -> dict[str, np.ndarray]:
    """The base scores of each image: map of each kind, smoothed, reduced.

    Args:
        target: ``(N, C, H, W)`` images in [0, 1].
        recon: ``(N, C, H, W)`` reconstructions in [0, 1].
        ssim_window: odd Gaussian window side for SSIM.
        kinds: which of `MAP_KINDS` to compute.
        reduction, top_k, smoothing: see the module doc.

    Returns:
        ``{kind: (N,) float64 array}``.
    """
    out: dict[str, np.ndarray] = {}
    for kind in kinds:
        maps = smooth_maps(error_maps(target, recon, kind, ssim_window), smoothing)
        out[kind] = reduce_maps(maps, reduction, top_k).double().cpu().numpy()
    return out


def needed_kinds(kind: str) -> tuple[str, ...]:
    """Base scores a score kind needs."""
    return ("mse", "ssim") if kind == "combined" else score_parts(kind)


def normal_medians(base: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Median of each base score over normal images: the scale used by ``combined``.

    A zero median (a perfect reconstruction) is replaced by a tiny positive value so the
    division stays finite.
    """
    return {k: max(float(np.median(v)), 1e-12) for k, v in base.items() if len(v)}


def combine_scores(base: Mapping[str, np.ndarray], kind: str, medians: Mapping[str, float] | None = None) -> np.ndarray:
    """The score ``kind`` from the base scores; ``combined`` needs the held-out normal medians.

    Returns:
        ``(N,)`` float64 array, higher = more anomalous.
    """
    check_score_kind(kind)
    if kind in MAP_KINDS:
        return np.asarray(base[kind], dtype=np.float64)
    if not medians or any(k not in medians for k in needed_kinds(kind)):
        raise AelabError(f"the {kind} score needs the median normal scores of a fitted detector")
    if kind != "combined":
        return np.mean([np.asarray(base[p], dtype=np.float64) / medians[p] for p in score_parts(kind)], axis=0)
    rmse = np.sqrt(np.clip(np.asarray(base["mse"], dtype=np.float64), 0, None) / medians["mse"])
    return (rmse + np.asarray(base["ssim"], dtype=np.float64) / medians["ssim"]) / 2

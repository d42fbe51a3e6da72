"""Figures of the anomaly study: score histograms, ROC curve, image | reconstruction | map | overlay
panels, and per-image heat maps.

Figures are drawn on ``matplotlib.figure.Figure`` objects (no pyplot state, no display needed) and
written as PNG files.

Example:
    >>> score_histogram([0.1, 0.2], [0.5, 0.7], 0.3, "hist.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["heatmap_rgb", "overlay_rgb", "reconstruction_panels", "roc_figure", "score_histogram"]

_CMAP = "inferno"


def _save(fig, path: str | os.PathLike) -> Path:
    from aelab.plotting import literal_text
    from aelab.runs import atomic_savefig

    path = Path(path)
    atomic_savefig(literal_text(fig), path, dpi=110, bbox_inches="tight")
    return path


def score_histogram(
    normal: Any, anomalous: Any, threshold: float, path: str | os.PathLike, score_name: str = "score"
) -> Path:
    """Overlaid histograms of normal and anomalous scores with the threshold as a vertical line.

    Args:
        normal: ``(N,)`` scores of normal images.
        anomalous: ``(M,)`` scores of anomalous images.
        threshold: the detector's threshold.
        path: PNG file to write.
        score_name: x-axis label.
    """
    from matplotlib.figure import Figure

    normal, anomalous = np.asarray(normal, float), np.asarray(anomalous, float)
    both = np.concatenate([normal, anomalous, [threshold]])
    bins = np.linspace(both.min(), both.max(), 41) if both.max() > both.min() else 10
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    ax.hist(normal, bins=bins, alpha=0.6, label=f"normal (n={len(normal)})", color="tab:blue", density=True)
    ax.hist(anomalous, bins=bins, alpha=0.6, label=f"anomalous (n={len(anomalous)})", color="tab:red", density=True)
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set_xlabel(score_name)
    ax.set_ylabel("density")
    ax.legend(frameon=False)
    return _save(fig, path)


def roc_figure(normal: Any, anomalous: Any, path: str | os.PathLike, threshold: float | None = None) -> Path:
    """ROC curve (anomalies positive) with its AUROC; the threshold's operating point if given."""
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_auc_score, roc_curve

    normal, anomalous = np.asarray(normal, float), np.asarray(anomalous, float)
    y = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    s = np.r_[normal, anomalous]
    fpr, tpr, _ = roc_curve(y, s)
    fig = Figure(figsize=(4.2, 4.2))
    ax = fig.subplots()
    ax.plot(fpr, tpr, color="tab:red", label=f"AUROC {roc_auc_score(y, s):.4f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    if threshold is not None:
        ax.plot([np.mean(normal > threshold)], [np.mean(anomalous > threshold)], "ko", label="at threshold")
    ax.set_xlabel("false-alarm rate (normal flagged)")
    ax.set_ylabel("recall (anomalies flagged)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.legend(loc="lower right", frameon=False)
    return _save(fig, path)


def _show(ax, img: np.ndarray, **kw) -> None:
    """Show a ``(C, H, W)`` image (uint8 or [0, 1] float) without axes."""
    img = np.asarray(img)
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    if img.ndim == 3 and img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=1, **kw)
    elif img.ndim == 3:
        ax.imshow(np.clip(img.transpose(1, 2, 0), 0, 1), **kw)
    else:
        ax.imshow(img, **kw)
    ax.set_xticks([])
    ax.set_yticks([])


def heatmap_rgb(amap: np.ndarray, vmax: float, vmin: float = 0.0) -> np.ndarray:
    """``(H, W, 3)`` uint8 heat map (inferno colours) of one ``(H, W)`` map on a fixed scale."""
    from matplotlib import colormaps

    span = max(float(vmax) - float(vmin), 1e-12)
    z = np.clip((np.asarray(amap, dtype=np.float64) - vmin) / span, 0, 1)
    return (colormaps[_CMAP](z)[..., :3] * 255).round().astype(np.uint8)


def overlay_rgb(image: np.ndarray, amap: np.ndarray, vmax: float, alpha: float = 0.5) -> np.ndarray:
    """``(H, W, 3)`` uint8: the image in grey (or colour) under the heat map, blended by ``alpha``
    where the map is high (a zero map leaves the image unchanged)."""
    img = np.asarray(image)
    img = img.astype(np.float64) / 255.0 if img.dtype == np.uint8 else np.asarray(img, dtype=np.float64)
    rgb = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img[:3]
    rgb = rgb.transpose(1, 2, 0)
    heat = heatmap_rgb(amap, vmax).astype(np.float64) / 255.0
    w = alpha * np.clip(np.asarray(amap, dtype=np.float64) / max(float(vmax), 1e-12), 0, 1)[..., None]
    return np.clip(np.rint(((1 - w) * rgb + w * heat) * 255), 0, 255).astype(np.uint8)


def reconstruction_panels(
    images: np.ndarray,
    reconstructions: np.ndarray,
    error_maps: np.ndarray,
    labels: Sequence[str],
    path: str | os.PathLike,
    title: str | None = None,
    masks: np.ndarray | None = None,
) -> Path:
    """One row per image: image | reconstruction | anomaly map | map over the image (one colour
    scale for all maps); the ground-truth mask's outline in cyan on the overlay when given.

    Args:
        images: ``(N, C, H, W)`` uint8.
        reconstructions: ``(N, C, H, W)`` float in [0, 1].
        error_maps: ``(N, H, W)`` anomaly maps.
        labels: ``N`` row labels (file name, score).
        path: PNG file to write.
        title: figure title.
        masks: optional ``(N, H, W)`` bool ground-truth masks.
    """
    from matplotlib.figure import Figure

    n = len(images)
    fig = Figure(figsize=(7.6, 1.9 * max(n, 1) + (0.4 if title else 0)))
    axes = np.atleast_2d(fig.subplots(max(n, 1), 4, squeeze=False))
    vmax = float(np.max(error_maps)) if n and np.max(error_maps) > 0 else 1.0
    for i in range(n):
        _show(axes[i, 0], images[i])
        _show(axes[i, 1], reconstructions[i])
        im = axes[i, 2].imshow(error_maps[i], cmap=_CMAP, vmin=0, vmax=vmax)
        _show(axes[i, 3], overlay_rgb(images[i], error_maps[i], vmax).transpose(2, 0, 1))
        if masks is not None and masks[i].any():
            axes[i, 3].contour(masks[i].astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
        axes[i, 2].set_xticks([])
        axes[i, 2].set_yticks([])
        axes[i, 0].set_ylabel(labels[i], fontsize=7, rotation=0, ha="right", va="center")
    for j, name in enumerate(("image", "reconstruction", "anomaly map", "overlay")):
        axes[0, j].set_title(name, fontsize=9)
    if n:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="anomaly map")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def image_panels(images: np.ndarray, labels: Sequence[str], path: str | os.PathLike, title: str | None = None,
                 columns: int = 6) -> Path:
    """A grid of images with their labels (file name, score): the case figure of a detector without
    maps (`aelab.anomaly.GeometricDetector`), in place of `reconstruction_panels`."""
    from matplotlib.figure import Figure

    n = len(images)
    cols = max(1, min(columns, n))
    rows = max(1, -(-n // cols))
    fig = Figure(figsize=(1.5 * cols, 1.7 * rows + (0.4 if title else 0)))
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for i, ax in enumerate(axes.ravel()):
        if i < n:
            _show(ax, images[i])
            ax.set_title(labels[i], fontsize=6)
        else:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)

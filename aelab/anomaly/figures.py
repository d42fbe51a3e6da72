"""Figures of the anomaly study: score histograms, ROC curve, image | reconstruction | error map panels.

Figures are drawn on ``matplotlib.figure.Figure`` objects (no pyplot state, no display needed) and
written as PNG files.

Example:
    >>> score_histogram([0.1, 0.2], [0.5, 0.7], 0.3, "hist.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["score_histogram", "roc_figure", "reconstruction_panels"]


def _save(fig, path: str | os.PathLike) -> Path:
    from aelab.plotting import literal_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    literal_text(fig).savefig(path, dpi=110, bbox_inches="tight")
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


def reconstruction_panels(
    images: np.ndarray,
    reconstructions: np.ndarray,
    error_maps: np.ndarray,
    labels: Sequence[str],
    path: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """One row per image: image | reconstruction | error map (one colour scale for all maps).

    Args:
        images: ``(N, C, H, W)`` uint8.
        reconstructions: ``(N, C, H, W)`` float in [0, 1].
        error_maps: ``(N, H, W)`` per-pixel errors.
        labels: ``N`` row labels (file name, score).
        path: PNG file to write.
        title: figure title.
    """
    from matplotlib.figure import Figure

    n = len(images)
    fig = Figure(figsize=(6.0, 1.9 * max(n, 1) + (0.4 if title else 0)))
    axes = np.atleast_2d(fig.subplots(max(n, 1), 3, squeeze=False))
    vmax = float(np.max(error_maps)) if n and np.max(error_maps) > 0 else 1.0
    for i in range(n):
        _show(axes[i, 0], images[i])
        _show(axes[i, 1], reconstructions[i])
        im = axes[i, 2].imshow(error_maps[i], cmap="inferno", vmin=0, vmax=vmax)
        axes[i, 2].set_xticks([])
        axes[i, 2].set_yticks([])
        axes[i, 0].set_ylabel(labels[i], fontsize=7, rotation=0, ha="right", va="center")
    for j, name in enumerate(("image", "reconstruction", "error map")):
        axes[0, j].set_title(name, fontsize=9)
    if n:
        fig.colorbar(im, ax=axes[:, 2].tolist(), shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)

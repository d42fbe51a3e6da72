"""Figures of the clustering study (matplotlib, no pyplot: safe in scripts, servers and CI).

``plot_clusterings`` shows a 2-D projection of the points coloured by cluster with the
centroids marked, one panel per result (the study shows α, 10α and 0.1α side by side);
``plot_ratio_vs_alpha`` shows the sorted cluster-size ratio against α with the target marked.
Both return the :class:`~matplotlib.figure.Figure` and save it when ``path`` is given.

Example:
    >>> import numpy as np
    >>> from aelab.cluster import EquilibriumKMeans
    >>> X = np.random.default_rng(0).normal(size=(300, 5))
    >>> fits = [EquilibriumKMeans(3, alpha=a, random_state=0).fit(X) for a in (0.1, 1, 10)]
    >>> len(plot_clusterings(X, fits).axes)
    3
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from aelab.plotting import literal_text
from aelab.runs import atomic_savefig

__all__ = ["plot_clusterings", "plot_ratio_vs_alpha", "project_2d"]


def project_2d(X, centers_list=(), method: str = "pca", random_state=0, max_points: int = 5000):
    """Project X (n, d) and each centroid array (K, d) to 2-D with the same map.

    PCA projects the centroids exactly; t-SNE has no out-of-sample map, so the centroids are
    embedded jointly with (at most ``max_points``) points and are approximate.

    Returns:
        ``(X2 (n', 2), [C2 (K, 2), ...], rows)`` where ``rows`` indexes the plotted points.
    """
    X = np.asarray(X, dtype=np.float64)
    centers_list = [np.asarray(C, dtype=np.float64) for C in centers_list]
    rows = np.arange(len(X))
    if len(X) > max_points:
        rows = np.sort(np.random.default_rng(random_state).choice(len(X), max_points, replace=False))
    if X.shape[1] == 1:  # a line: plot it on the x axis
        pad = lambda A: np.hstack([A, np.zeros((len(A), 1))])  # noqa: E731
        return pad(X[rows]), [pad(C) for C in centers_list], rows
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(2, random_state=random_state).fit(X)
        return pca.transform(X[rows]), [pca.transform(C) for C in centers_list], rows
    if method == "tsne":
        from sklearn.manifold import TSNE

        stacked = np.vstack([X[rows], *centers_list])
        perplexity = float(min(30.0, max(2.0, (len(stacked) - 1) / 3)))
        Y = TSNE(2, init="pca", perplexity=perplexity, random_state=random_state).fit_transform(stacked)
        out, at = [], len(rows)
        for C in centers_list:
            out.append(Y[at : at + len(C)])
            at += len(C)
        return Y[: len(rows)], out, rows
    raise ValueError(f"projection must be 'pca' or 'tsne', got {method!r}.")


def _unpack(results):
    """Titles, labels and centers from fitted estimators, ``(labels, centers)`` pairs or a mapping."""
    items = list(results.items()) if isinstance(results, Mapping) else [(None, r) for r in results]
    titles, labels, centers = [], [], []
    for i, (title, r) in enumerate(items):
        lab, cen = (r.labels_, r.cluster_centers_) if hasattr(r, "labels_") else r
        alpha = getattr(r, "alpha_", None)
        titles.append(title if title is not None else (f"α = {alpha:.3g}" if alpha is not None else f"#{i + 1}"))
        labels.append(np.asarray(lab))
        centers.append(np.asarray(cen))
    return titles, labels, centers


_MARKERS = ("o", "^", "s", "D", "v", "P", "*", "<", ">", "h")


def _scatter(ax, X2, clusters, truth):
    """Points coloured by cluster; with ``truth``, one marker shape per true class (and a legend)."""
    style = dict(cmap="tab10", vmin=0, vmax=9, alpha=0.6)
    if truth is None:
        ax.scatter(X2[:, 0], X2[:, 1], c=clusters % 10, s=6, linewidths=0, **style)
        return
    for j, name in enumerate(sorted(set(truth))):
        sel = truth == name
        ax.scatter(X2[sel, 0], X2[sel, 1], c=clusters[sel] % 10, s=14, marker=_MARKERS[j % len(_MARKERS)],
                   linewidths=0, **style)
        ax.scatter([], [], marker=_MARKERS[j % len(_MARKERS)], c="grey", s=20, label=f"class {name or '?'}")
    ax.legend(fontsize=7, loc="best", title="true class (shape)", title_fontsize=7)


def plot_clusterings(X, results: Sequence | Mapping, *, projection: str = "pca", path=None,
                     random_state=0, max_points: int = 5000, suptitle: str | None = None,
                     true_labels=None) -> Figure:
    """Side-by-side 2-D views of several clusterings of X, centroids marked with a black ×.

    Colour is the cluster; with ``true_labels`` the marker shape is the true class, so a reader
    sees which classes each cluster got right.

    Args:
        X: data (n_samples, n_features) the clusterings were fitted on.
        results: fitted estimators (``labels_``, ``cluster_centers_``; titled by ``alpha_``),
            ``(labels, centers)`` pairs, or a mapping ``title -> either``.
        projection: ``"pca"`` (default) or ``"tsne"``.
        path: save the figure there (PNG/PDF/SVG by suffix) when given.
        random_state, max_points: subsampling and projection seed / size.
        suptitle: overall title.
        true_labels: optional true class per row of X (any hashable labels; up to 10 shapes).

    Returns:
        The figure.
    """
    titles, labels, centers = _unpack(results)
    X2, C2, rows = project_2d(X, centers, projection, random_state, max_points)
    fig = Figure(figsize=(4.2 * len(titles), 4.2), layout="constrained")
    axes = fig.subplots(1, len(titles), squeeze=False)[0]
    truth = None if true_labels is None else np.asarray(true_labels).astype(str)[rows]
    for ax, title, lab, c2 in zip(axes, titles, labels, C2):
        _scatter(ax, X2, lab[rows], truth)
        ax.scatter(c2[:, 0], c2[:, 1], marker="X", s=140, c="black", edgecolors="white", linewidths=1.2)
        sizes = np.bincount(lab, minlength=len(c2))
        ax.set_title(f"{title}\nsizes {':'.join(str(s) for s in sorted(sizes, reverse=True))}", fontsize=10)
        ax.set_xlabel(f"{projection.upper()} 1")
        ax.set_ylabel(f"{projection.upper()} 2")
    if suptitle:
        fig.suptitle(suptitle)
    literal_text(fig)  # file and class names are shown as written, never as $math$
    if path is not None:
        atomic_savefig(fig, path, dpi=120)
    return fig


def plot_ratio_vs_alpha(sweep, target_ratio, *, chosen_alpha: float | None = None, min_separation: float = 0.1,
                        path=None) -> Figure:
    """Sorted cluster-size ratios (largest/smallest, …) against α, log-log, target dashed.

    Args:
        sweep: :class:`~aelab.cluster.SweepPoint` list (e.g. ``AlphaSearch.sweep``).
        target_ratio: e.g. ``(2, 1, 1)``.
        chosen_alpha: marked with a vertical line.
        min_separation: points with centroids closer than this (relative) are drawn hollow.
        path: save there when given.

    Returns:
        The figure.
    """
    pts = sorted(sweep, key=lambda p: p.alpha)
    target = np.sort(np.asarray(target_ratio, dtype=float))[::-1]
    target = target / target.min()
    alphas = np.array([p.alpha for p in pts])
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    colors = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9"]
    n_lines = max(len(p.ratio) for p in pts) - 1 if pts else 0
    for j in range(n_lines):
        y = np.array([p.ratio[j] if j < len(p.ratio) and math.isfinite(p.ratio[j]) else np.nan for p in pts])
        sep = np.array([p.min_separation >= min_separation for p in pts])
        col = colors[j % 10]
        ax.plot(alphas, y, "-", color=col, label=f"size #{j + 1} / smallest")
        ax.plot(alphas[sep], y[sep], "o", color=col)
        ax.plot(alphas[~sep], y[~sep], "o", mfc="none", color=col)
        if j < len(target):
            ax.axhline(target[j], color=col, ls="--", lw=1)
    if chosen_alpha is not None:
        ax.axvline(chosen_alpha, color="black", lw=1, ls=":", label=f"chosen α = {chosen_alpha:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("α (paper convention, d = ½‖x − c‖²)")
    ax.set_ylabel("cluster size ratio")
    ax.set_title(f"target {':'.join(f'{t:g}' for t in target)} (dashed); hollow: centroids not separated",
                 fontsize=9)
    ax.legend(fontsize=8)
    literal_text(fig)  # file and class names are shown as written, never as $math$
    if path is not None:
        atomic_savefig(fig, path, dpi=120)
    return fig

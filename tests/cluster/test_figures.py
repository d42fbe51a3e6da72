"""Cluster figures: colour is the cluster, marker shape the true class."""

from __future__ import annotations

import numpy as np

from aelab.cluster import EquilibriumKMeans, plot_clusterings
from aelab.cluster.figures import _MARKERS


def test_true_class_by_marker_shape(tmp_path):
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (40, 3)), rng.normal(5, 1, (20, 3))])
    truth = ["a"] * 40 + ["b"] * 20
    est = EquilibriumKMeans(2, alpha=1.0, random_state=0).fit(X)
    fig = plot_clusterings(X, [est], true_labels=truth, path=tmp_path / "c.png")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["class a", "class b"]
    # one scatter per class with its own marker, holding that class's points
    sizes = sorted(len(c.get_offsets()) for c in ax.collections if len(c.get_offsets()) > 2)
    assert sizes == [20, 40]
    assert (tmp_path / "c.png").stat().st_size > 0
    assert _MARKERS[0] != _MARKERS[1]


def test_without_truth_no_legend():
    X = np.random.default_rng(1).normal(size=(30, 2))
    fig = plot_clusterings(X, [EquilibriumKMeans(2, alpha=1.0, random_state=0).fit(X)])
    assert fig.axes[0].get_legend() is None

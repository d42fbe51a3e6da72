"""alpha_sweep, find_alpha and the figures."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from matplotlib.figure import Figure

from aelab.cluster import AlphaSearch, EquilibriumKMeans, alpha_sweep, find_alpha, plot_clusterings, plot_ratio_vs_alpha
from aelab.cluster.alpha import SWEEP_COLUMNS, hungarian_accuracy, parse_ratio, ratio_distance, write_sweep_csv


def three_classes(sizes=(200, 100, 100), seed=0, d=6):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (3, d)) * 4
    X = np.vstack([rng.normal(c, 1.0, (n, d)) for c, n in zip(centres, sizes)])
    X = (X - X.mean(0)) / X.std(0)
    return X, np.repeat(np.arange(3), sizes)


def test_parse_ratio_and_distance():
    assert parse_ratio("2:1:1") == (2.0, 1.0, 1.0)
    assert parse_ratio([4, 2, 2]) == (4.0, 2.0, 2.0)
    for bad in ("2:x", "2:0", "", "-1:1"):
        with pytest.raises(ValueError):
            parse_ratio(bad)
    assert ratio_distance((2, 1, 1), (4, 2, 2)) == 0.0
    assert ratio_distance((1, 1, 2), (2, 1, 1)) == 0.0  # order does not matter
    assert ratio_distance((2, 1), (2, 1, 1)) == math.inf
    assert ratio_distance((math.inf, 1, 1), (2, 1, 1)) == math.inf
    assert ratio_distance((4, 1, 1), (2, 1, 1)) > ratio_distance((3, 1, 1), (2, 1, 1)) > 0


def test_hungarian_accuracy_ignores_label_names():
    assert hungarian_accuracy([0, 0, 1, 1, 2], [5, 5, 3, 3, 9]) == 1.0
    assert hungarian_accuracy([0, 0, 1, 1], [0, 1, 0, 1]) == 0.5


def test_alpha_sweep_describes_each_alpha(tmp_path):
    X, y = three_classes()
    sweep = alpha_sweep(X, [0.01, 1.0, 100.0], 3, labels=y, n_init=3)
    assert [p.alpha for p in sweep] == [0.01, 1.0, 100.0]
    for p in sweep:
        assert list(p.sizes) == sorted(p.sizes, reverse=True) and sum(p.sizes) == len(X)
        assert p.ratio[-1] == 1.0 and p.ratio[0] == p.sizes[0] / p.sizes[-1]
        assert 0 <= p.acc <= 1 and -1 <= p.ari <= 1
    good = sweep[1]
    assert good.sizes == (200, 100, 100) and good.ari == 1.0 and good.converged
    assert good.min_separation > 0.5
    assert sweep[0].min_separation < good.min_separation  # small α pulls centroids together
    write_sweep_csv(tmp_path / "s.csv", sweep)
    with open(tmp_path / "s.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == SWEEP_COLUMNS and rows[1]["sizes"] == "200:100:100"


def test_find_alpha_hits_the_target_ratio_with_separated_centroids():
    X, y = three_classes()
    search = find_alpha(X, 3, target_ratio="2:1:1", labels=y, n_init=3, refine=5)
    assert isinstance(search, AlphaSearch)
    assert search.best.sizes == (200, 100, 100) and search.separated
    assert search.best.min_separation >= 0.1 and search.best.ari == 1.0
    assert search.alpha == search.best.alpha
    alphas = [p.alpha for p in search.sweep]
    # Coarse grid (11) + refinement (5 points over ±½ decade, of which those on the coarse grid are reused).
    assert alphas == sorted(alphas) and len(alphas) >= 11 + 2 and len(set(alphas)) == len(alphas)


def test_find_alpha_prefers_separated_centroids_over_a_lucky_ratio():
    X, _ = three_classes(sizes=(150, 150, 150))
    search = find_alpha(X, 3, target_ratio=(1, 1, 1), alphas=[1e-4, 1.0], n_init=2, refine=0)
    assert search.alpha == 1.0


def test_find_alpha_checks_the_target_length():
    X, _ = three_classes()
    with pytest.raises(ValueError, match="3 parts but n_clusters=2"):
        find_alpha(X, 2, target_ratio=(2, 1, 1))


def test_figures_return_and_save(tmp_path):
    X, y = three_classes()
    fits = [EquilibriumKMeans(3, alpha=a, n_init=2, random_state=0).fit(X) for a in (1.0, 10.0, 0.1)]
    fig = plot_clusterings(X, fits, path=tmp_path / "f" / "c.png")
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert "α = 1" in fig.axes[0].get_title()
    assert (tmp_path / "f" / "c.png").stat().st_size > 5000
    sweep = alpha_sweep(X, [0.1, 1.0, 10.0], 3, n_init=2)
    fig = plot_ratio_vs_alpha(sweep, (2, 1, 1), chosen_alpha=1.0, path=tmp_path / "r.png")
    assert fig.axes[0].get_xscale() == "log" and (tmp_path / "r.png").exists()


def test_tsne_projection_marks_centroids(tmp_path):
    X, y = three_classes(sizes=(60, 30, 30))
    fit = EquilibriumKMeans(3, alpha=1.0, random_state=0).fit(X)
    fig = plot_clusterings(X, {"EKM": fit}, projection="tsne", path=tmp_path / "t.png")
    assert len(fig.axes) == 1 and (tmp_path / "t.png").exists()
    with pytest.raises(ValueError, match="projection"):
        plot_clusterings(X, [fit], projection="umap")

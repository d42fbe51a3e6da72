"""Seeding: the default screened seeding reaches the objective that k-means++ restarts miss."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from aelab.cluster import EquilibriumKMeans
from aelab.cluster.core import _boltzmann
from aelab.cluster.seeding import init_centers, screen_candidates, screen_seeds
from tests.cluster.cluster_data import large_and_two_small


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.mark.parametrize("random_state", [0, 1])
def test_default_reaches_the_lower_objective_where_kmeanspp_restarts_split_the_large_cluster(random_state):
    X, y = large_and_two_small()
    means = np.stack([X[y == k].mean(0) for k in range(3)])
    reference = EquilibriumKMeans(3, alpha=1.0, init=means).fit(X).objective_  # EKM from the class means
    kpp = EquilibriumKMeans(3, alpha=1.0, init="k-means++", n_init=10, random_state=random_state).fit(X)
    default = EquilibriumKMeans(3, alpha=1.0, random_state=random_state).fit(X)
    assert kpp.objective_ > 1.05 * reference  # k-means++ only: the split of the large cluster
    assert default.objective_ <= reference * (1 + 1e-3)
    assert (np.bincount(default.labels_)[np.argsort(np.bincount(default.labels_))] < 200).sum() == 2


def test_n_init_auto_per_init():
    X, _ = large_and_two_small((200, 20, 20))
    from aelab.cluster.ekm import _validate_common

    assert _validate_common(EquilibriumKMeans(3), X)[1] == 2
    assert _validate_common(EquilibriumKMeans(3, init="k-means++"), X)[1] == 10
    assert _validate_common(EquilibriumKMeans(3, init="random"), X)[1] == 10


def test_screen_seeds_returns_n_keep_sorted_candidates():
    X, _ = large_and_two_small((300, 20, 20))
    rs = np.random.RandomState(0)
    seeds = screen_seeds(X, 3, 1.0, 4, rs, _boltzmann)
    assert len(seeds) == 4 and all(s.shape == (3, 2) and s.dtype == np.float64 for s in seeds)
    assert screen_candidates(2) == 24 and screen_candidates(5) == 40


def test_init_centers_kinds():
    X = np.arange(20.0).reshape(10, 2)
    rs = np.random.RandomState(0)
    assert init_centers(X, 3, "random", rs).shape == (3, 2)
    assert init_centers(X, 3, "k-means++", rs).shape == (3, 2)
    np.testing.assert_array_equal(init_centers(X, 2, X[:2], rs), X[:2])


def test_bad_init_string_is_a_value_error():
    with pytest.raises(ValueError, match="init must be 'screen'"):
        EquilibriumKMeans(2, init="kmeans").fit(np.arange(10.0).reshape(5, 2))

"""Baselines (FKM, MEFC, the seed's softmax variant, k-means) and the make_clusterer factory."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from aelab.cluster import (
    METHODS,
    CourseSoftmaxKMeans,
    EquilibriumKMeans,
    FuzzyKMeans,
    MaxEntropyFuzzyKMeans,
    make_clusterer,
)
from aelab.cluster.baselines import _course_kernel, _fkm_kernel, _mefc_kernel
from tests.cluster.cluster_data import imbalanced_balls


# Independent references from the smooth-K-means table (d is the half squared distance).
def fkm_h(d, m):
    p = 1 / (m - 1)
    return np.sum(d**-p) ** (-1 / p)


def mefc_h(d, lam):
    return -np.log(np.sum(np.exp(-lam * d))) / lam


@pytest.mark.parametrize("kernel, h, param", [(_fkm_kernel, fkm_h, 2.0), (_fkm_kernel, fkm_h, 1.5),
                                              (_mefc_kernel, mefc_h, 0.8)])
def test_weights_are_the_gradient_of_h(kernel, h, param):
    rng = np.random.default_rng(0)
    d, eps = rng.uniform(0.2, 3, (4, 3)), 1e-6
    W, U, hk = kernel(d.T.copy(), param)
    np.testing.assert_allclose(hk, [h(r, param) for r in d], rtol=1e-10)
    np.testing.assert_allclose(U.sum(axis=0), 1.0)
    for n in range(4):
        for k in range(3):
            e = np.zeros(3)
            e[k] = eps
            assert (h(d[n] + e, param) - h(d[n] - e, param)) / (2 * eps) == pytest.approx(W[k, n], rel=1e-6)


def test_fkm_weights_are_u_to_the_m_and_handle_a_point_on_a_centroid():
    d = np.array([[0.0, 1.0, 4.0], [1.0, 2.0, 2.0]])
    W, U, h = _fkm_kernel(d.T.copy(), 2.0)
    np.testing.assert_allclose(U.T[0], [1, 0, 0])
    u = (1 / d[1]) / np.sum(1 / d[1])
    np.testing.assert_allclose(U.T[1], u)
    np.testing.assert_allclose(W.T[1], u**2)
    assert h[0] == 0.0 and np.isfinite(W).all()


def test_seed_variant_is_softmax_of_unsquared_distance_and_never_negative():
    d = np.array([[0.5, 2.0, 8.0]])
    W, U, _ = _course_kernel(d.T.copy(), 1.5)
    e = np.exp(-1.5 * np.sqrt(2 * d[0]))
    np.testing.assert_allclose(W.T[0], e / e.sum())
    X, _ = imbalanced_balls()
    seed = CourseSoftmaxKMeans(3, alpha=1.0, n_init=3, random_state=0).fit(X)
    assert (seed.weights_ >= 0).all()  # no repulsion: this is why it is not EKM


def test_on_imbalanced_balls_only_ekm_separates():
    X, y = imbalanced_balls()
    ari = {m: adjusted_rand_score(y, make_clusterer(m, 3, alpha=1.0, random_state=0).fit(X).labels_) for m in METHODS}
    assert ari["ekm"] >= 0.95
    for m in ("kmeans", "fkm", "mefc", "course-softmax"):
        assert ari[m] <= 0.5, (m, ari)


def test_factory_types_and_errors():
    assert isinstance(make_clusterer("ekm", 3), EquilibriumKMeans)
    assert make_clusterer("ekm", 3).alpha == "dvariance"
    assert isinstance(make_clusterer("kmeans", 3), KMeans)
    assert isinstance(make_clusterer("fkm", 3, m=3.0), FuzzyKMeans)
    assert make_clusterer("mefc", 3, alpha=2.0).lam == 2.0
    assert make_clusterer("course-softmax", 3, alpha=0.5).alpha == 0.5
    with pytest.raises(ValueError, match="method must be one of"):
        make_clusterer("dbscan", 3)


@pytest.mark.parametrize("est, match", [(FuzzyKMeans(2, m=1.0), "m must be > 1"),
                                        (MaxEntropyFuzzyKMeans(2, lam=0.0), "lam must be"),
                                        (CourseSoftmaxKMeans(2, alpha=-1.0), "alpha must be")])
def test_bad_parameters(est, match):
    X, _ = make_blobs(30, n_features=2, centers=2, random_state=0)
    with pytest.raises(ValueError, match=match):
        est.fit(X)


def test_baselines_on_easy_blobs():
    X, y = make_blobs(600, n_features=2, centers=3, cluster_std=0.5, random_state=0)
    for est in (FuzzyKMeans(3, random_state=0), MaxEntropyFuzzyKMeans(3, lam=1.0, random_state=0)):
        assert adjusted_rand_score(y, est.fit(X).labels_) >= 0.9
        assert np.isfinite(est.objective_)


@parametrize_with_checks([FuzzyKMeans(random_state=0), MaxEntropyFuzzyKMeans(random_state=0),
                          CourseSoftmaxKMeans(random_state=0)])
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)

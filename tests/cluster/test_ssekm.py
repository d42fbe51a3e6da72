"""Semi-supervised EKM: one step equals an in-test reference written from the equations, and the labels are used."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from aelab.cluster import EquilibriumKMeans, SemiSupervisedEquilibriumKMeans


def reference_step(X, y, C, alpha, theta):
    """One SSEKM centroid update (He 2025), written out: w̃ = w + θ b (f − w), c = Σ w̃ x / Σ w̃."""
    d = 0.5 * ((X[:, None, :] - C[None]) ** 2).sum(-1)  # (n, K), the paper's half squared distance
    u = np.exp(-alpha * d)
    u /= u.sum(1, keepdims=True)
    h = (u * d).sum(1, keepdims=True)
    w = u * (1 - alpha * (d - h))
    f = np.zeros_like(w)
    lab = y >= 0
    f[lab, y[lab]] = 1.0
    w = w + theta * lab[:, None] * (f - w)
    J = h.sum() + theta * ((f * d).sum(1) - h[:, 0])[lab].sum()
    return (w.T @ X) / w.sum(0)[:, None], J


def bars(n=300, gap=1.5, seed=0):
    """Two long parallel bars (x uniform in ±5, y = 0 or gap): EKM and k-means cut them across."""
    rng = np.random.default_rng(seed)
    X = np.vstack([np.c_[rng.uniform(-5, 5, n), rng.normal(0, 0.2, n)],
                   np.c_[rng.uniform(-5, 5, n), gap + rng.normal(0, 0.2, n)]])
    return X, np.repeat([0, 1], n)


def test_one_step_matches_the_reference():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 3))
    y = np.full(40, -1)
    y[:4], y[4:6], y[6:8] = 0, 1, 2
    C0 = X[[10, 20, 30]].copy()
    theta = 2.5
    expected, J0 = reference_step(X, y, C0, alpha=0.7, theta=theta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one iteration does not converge
        est = SemiSupervisedEquilibriumKMeans(3, alpha=0.7, theta=theta, init=C0, max_iter=1).fit(X, y)
    np.testing.assert_allclose(est.cluster_centers_, expected, rtol=1e-10, atol=1e-12)
    # the semi-supervised objective at the new centroids, against the reference's
    assert est.objective_semi_supervised_ == pytest.approx(reference_step(X, y, expected, 0.7, theta)[1], rel=1e-10)
    assert est.objective_semi_supervised_ <= J0


def test_theta_auto_is_n_over_labelled_and_classes_take_the_first_clusters():
    X, y_true = bars(50)
    y = np.full(len(X), -1)
    y[[0, 1, 2]] = 7
    y[[60, 61]] = 3
    est = SemiSupervisedEquilibriumKMeans(2, alpha=1.0, random_state=0).fit(X, y)
    assert est.theta_ == pytest.approx(len(X) / 5)
    assert est.classes_.tolist() == [3, 7] and est.n_labelled_ == 5
    assert est.labels_[60] == 0 and est.labels_[0] == 1


def test_labels_disambiguate_where_unsupervised_ekm_cuts_across():
    X, y_true = bars()
    y = np.full(len(X), -1)
    rng = np.random.default_rng(0)
    for k in (0, 1):
        y[rng.choice(np.flatnonzero(y_true == k), 5, replace=False)] = k
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ekm = EquilibriumKMeans(2, alpha=1.0, random_state=0).fit(X)
        ss = SemiSupervisedEquilibriumKMeans(2, alpha=1.0, random_state=0).fit(X, y)
    assert adjusted_rand_score(y_true, ekm.labels_) < 0.1
    assert adjusted_rand_score(y_true, ss.labels_) > 0.9


def test_without_labels_it_is_ekm():
    X, _ = bars(60)
    a = EquilibriumKMeans(2, alpha=1.0, random_state=0).fit(X)
    b = SemiSupervisedEquilibriumKMeans(2, alpha=1.0, init="screen", random_state=0).fit(X, np.full(len(X), -1))
    np.testing.assert_allclose(b.cluster_centers_, a.cluster_centers_)
    assert b.theta_ == 0.0


@pytest.mark.parametrize("y, theta, match", [
    (np.array([0, 1, 2, -1, -1, -1]), "auto", "3 labelled classes but n_clusters=2"),
    (np.array([0, 1, -1]), "auto", "y must have shape"),
    (np.array([0, 1, -1, -1, -1, -1]), -1.0, "theta must be"),
])
def test_bad_labels_or_theta_raise(y, theta, match):
    X = np.arange(12.0).reshape(6, 2)
    with pytest.raises(ValueError, match=match):
        SemiSupervisedEquilibriumKMeans(2, theta=theta).fit(X, y)


_MORE_CLASSES_THAN_CLUSTERS = "these checks pass y with more classes than n_clusters, which is an error by design"


@parametrize_with_checks([SemiSupervisedEquilibriumKMeans(random_state=0)], expected_failed_checks=lambda est: {
    name: _MORE_CLASSES_THAN_CLUSTERS for name in (
        "check_dont_overwrite_parameters", "check_methods_sample_order_invariance", "check_methods_subset_invariance",
        "check_fit2d_1feature", "check_fit2d_predict1d")})
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)

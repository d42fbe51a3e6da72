"""MiniBatchEquilibriumKMeans and the sufficient statistics (S, N) it is built on."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from aelab.cluster import EquilibriumKMeans, MiniBatchEquilibriumKMeans, ekm_sufficient_statistics, sum_stats
from tests.cluster.cluster_data import imbalanced_balls


def test_statistics_add_up_across_batches_and_workers():
    X, _ = make_blobs(1000, n_features=5, centers=4, random_state=0)
    C = X[[0, 250, 500, 750]]
    whole = ekm_sufficient_statistics(X, C, alpha=0.3)
    parts = sum_stats(ekm_sufficient_statistics(part, C, alpha=0.3) for part in np.array_split(X, 7))
    np.testing.assert_allclose(parts.sum_wx, whole.sum_wx, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(parts.sum_w, whole.sum_w, rtol=1e-10)
    assert parts.objective == pytest.approx(whole.objective)
    assert whole.sum_w.sum() == pytest.approx(len(X))  # the weights of each sample sum to 1


def test_minibatch_reaches_full_batch_ari_on_imbalanced_data():
    X, y = imbalanced_balls()
    full = EquilibriumKMeans(3, alpha=1.0, n_init=10, random_state=0).fit(X)
    mb = MiniBatchEquilibriumKMeans(3, alpha=1.0, n_init=10, batch_size=128, random_state=0).fit(X)
    assert adjusted_rand_score(y, mb.labels_) >= adjusted_rand_score(y, full.labels_) - 0.01
    assert adjusted_rand_score(y, mb.labels_) >= 0.95
    assert mb.converged_ and mb.weights_.shape == (len(X), 3)


def test_minibatch_converges_to_the_full_batch_centroids():
    X, _ = make_blobs(3000, n_features=4, centers=3, random_state=3)
    full = EquilibriumKMeans(3, random_state=0).fit(X)
    mb = MiniBatchEquilibriumKMeans(3, init=full.cluster_centers_, batch_size=256, random_state=0).fit(X)
    np.testing.assert_allclose(mb.cluster_centers_, full.cluster_centers_, atol=0.05)
    assert mb.alpha_ == pytest.approx(full.alpha_)


def test_partial_fit_streams_to_a_good_clustering():
    X, y = make_blobs(4000, n_features=3, centers=3, random_state=1)
    rng = np.random.default_rng(0)
    mb = MiniBatchEquilibriumKMeans(3, alpha=0.5, random_state=0)
    for _ in range(3):
        for rows in np.array_split(rng.permutation(len(X)), 20):
            mb.partial_fit(X[rows])
    assert mb.n_steps_ == 60
    assert adjusted_rand_score(y, mb.predict(X)) >= 0.95
    with pytest.raises(ValueError, match="features"):
        mb.partial_fit(X[:10, :2])


def test_torch_backend_gives_the_same_minibatch_run():
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors on 2 shared cores: extra threads only stall
    try:
        X, _ = make_blobs(2000, n_features=4, centers=3, random_state=0)
        a = MiniBatchEquilibriumKMeans(3, batch_size=256, random_state=0).fit(X)
        b = MiniBatchEquilibriumKMeans(3, batch_size=256, random_state=0, backend="torch").fit(X)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(b.cluster_centers_, a.cluster_centers_, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(b.labels_, a.labels_)


def test_float32_is_kept():
    X, _ = make_blobs(500, n_features=3, centers=3, random_state=0)
    mb = MiniBatchEquilibriumKMeans(3, batch_size=100, random_state=0).fit(X.astype(np.float32))
    assert mb.cluster_centers_.dtype == mb.weights_.dtype == np.float32


@pytest.mark.parametrize("params, match", [({"decay": 1.0}, "decay"), ({"batch_size": 0}, "batch_size"),
                                           ({"alpha": -2.0}, "alpha must be a positive")])
def test_bad_parameters(params, match):
    X, _ = make_blobs(50, n_features=2, centers=2, random_state=0)
    with pytest.raises(ValueError, match=match):
        MiniBatchEquilibriumKMeans(2, **params).fit(X)


@parametrize_with_checks([MiniBatchEquilibriumKMeans(random_state=0, batch_size=16)])
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def _two_blobs_and_a_repelled_start():
    """Two unit blobs 6 apart and a third start 5 above their midpoint, where every point repels it.

    All of the third centroid's EKM weights are negative (``d_kn > h_n + 1/α``), so its weight sum
    is too: the full-batch estimator pushes it off to a few hundred and keeps the two blob centroids.
    """
    X, _ = make_blobs(2000, n_features=2, centers=[[0, 0], [6, 0]], cluster_std=1.0, random_state=0)
    return X, np.array([[0.0, 0.0], [6.0, 0.0], [3.0, 5.0]])


def test_a_repelled_centroid_stays_bounded_and_the_rest_match_full_batch():
    # Regression: the step used the running sums, so a repelled centroid was pushed 1/ρ = 20 times
    # its distance away every batch (×21 per batch, 1e25 after five epochs here; 1e36 on whitened
    # image patches); the step is now the batch's gradient at the current centroids.
    X, init = _two_blobs_and_a_repelled_start()
    with warnings.catch_warnings():  # the full fit warns that it keeps 2 clusters: so it should
        warnings.simplefilter("ignore", ConvergenceWarning)
        full = EquilibriumKMeans(3, alpha=1.0, init=init).fit(X)
        mb = MiniBatchEquilibriumKMeans(3, alpha=1.0, init=init, batch_size=100, max_iter=5, random_state=0).fit(X)
    assert np.abs(mb.cluster_centers_).max() < 100.0  # the data lie within about 10 of the origin
    np.testing.assert_allclose(mb.cluster_centers_[:2], full.cluster_centers_[:2], atol=0.1)
    assert mb.objective_ < ekm_sufficient_statistics(X, init, alpha=1.0).objective  # J fell from the start
    assert mb.objective_ == pytest.approx(full.objective_, rel=1e-3)


def test_partial_fit_keeps_a_repelled_centroid_bounded():
    X, init = _two_blobs_and_a_repelled_start()
    mb = MiniBatchEquilibriumKMeans(3, alpha=1.0, init=init)
    for rows in np.array_split(np.random.default_rng(0).permutation(len(X)), 40):
        mb.partial_fit(X[rows])
    assert np.abs(mb.cluster_centers_).max() < 100.0
    np.testing.assert_array_equal(np.unique(mb.predict(X)), [0, 1])

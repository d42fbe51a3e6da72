"""EquilibriumKMeans against an independent reference written from the paper's equations
(Y. He, arXiv:2402.14490): d = ½‖x − c‖², u = softmax(−α d), h = Σ u d, w = u (1 − α (d − h))."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from aelab.cluster import EquilibriumKMeans, ekm_sufficient_statistics, ekm_weights
from aelab.cluster.core import _NumpyBackend, centroid_step
from aelab.cluster.seeding import init_centers
from tests.cluster.cluster_data import imbalanced_balls

TOY = np.array([[1, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]], dtype=float)


def ref_h(d, alpha):
    """Boltzmann operator h(d_1..d_K) for one sample, straight from its definition."""
    e = np.exp(-alpha * d)
    return float(np.sum(d * e) / np.sum(e))


def ref_weights(d, alpha):
    """w_kn = u_kn [1 − α (d_kn − h_n)] without any stabilisation, (n, K)."""
    u = np.exp(-alpha * d) / np.exp(-alpha * d).sum(axis=1, keepdims=True)
    h = (u * d).sum(axis=1, keepdims=True)
    return u * (1 - alpha * (d - h))


def ref_step(X, C, alpha):
    d = 0.5 * ((X[:, None, :] - C[None, :, :]) ** 2).sum(-1)
    w = ref_weights(d, alpha)
    return (w.T @ X) / w.sum(axis=0)[:, None]


def test_weights_match_reference_and_rows_sum_to_one():
    rng = np.random.default_rng(0)
    d = rng.uniform(0, 5, (50, 4))
    W, U, h = ekm_weights(d, alpha=0.7)
    np.testing.assert_allclose(W, ref_weights(d, 0.7), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(W.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(U.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(h, [ref_h(r, 0.7) for r in d], rtol=1e-12)


def test_weights_are_the_gradient_of_h():
    rng = np.random.default_rng(1)
    d, alpha, eps = rng.uniform(0, 4, (5, 3)), 1.3, 1e-6
    W = ekm_weights(d, alpha)[0]
    for n in range(5):
        for k in range(3):
            up, down = d[n].copy(), d[n].copy()
            up[k] += eps
            down[k] -= eps
            assert (ref_h(up, alpha) - ref_h(down, alpha)) / (2 * eps) == pytest.approx(W[n, k], abs=1e-7)


def test_row_minimum_shift_changes_nothing_and_large_distances_do_not_overflow():
    d = np.array([[0.0, 1.0, 3.0], [2.0, 2.5, 9.0]])
    W, U, h = ekm_weights(d, 2.0)
    W2, U2, h2 = ekm_weights(d + 1e4, 2.0)  # e^(-2e4) underflows without the shift
    np.testing.assert_allclose(W2, W, atol=1e-12)
    np.testing.assert_allclose(h2, h + 1e4)


def test_one_centroid_step_matches_reference():
    X, _ = make_blobs(300, n_features=3, centers=3, random_state=0)
    C0 = X[[0, 100, 200]]
    st = ekm_sufficient_statistics(X, C0, alpha=0.2)
    np.testing.assert_allclose(st.sum_wx / st.sum_w[:, None], ref_step(X, C0, 0.2), rtol=1e-10)
    one = EquilibriumKMeans(3, alpha=0.2, init=C0, max_iter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        one.fit(X)
    np.testing.assert_allclose(one.cluster_centers_, ref_step(X, C0, 0.2), rtol=1e-10)


def test_negative_weights_occur_on_imbalanced_data():
    X, _ = imbalanced_balls()
    ekm = EquilibriumKMeans(3, alpha=1.0, n_init=10, random_state=0).fit(X)
    d = 0.5 * ekm.transform(X) ** 2
    h = ekm_weights(d, 1.0)[2]
    assert (ekm.weights_ < 0).any()
    # negative exactly where d_kn > h_n + 1/α (the repulsion condition)
    np.testing.assert_array_equal(ekm.weights_ < 0, d > h[:, None] + 1.0)


def test_toy_case_matches_sklekmeans_convention():
    ekm = EquilibriumKMeans(2, random_state=0, tol=1e-8).fit(TOY)
    assert ekm.alpha_sklekmeans_ == pytest.approx(0.087273, abs=1e-6)
    assert ekm.alpha_ == pytest.approx(2 * 0.087273, abs=2e-6)
    centers = ekm.cluster_centers_[np.argsort(ekm.cluster_centers_[:, 0])]
    np.testing.assert_allclose(centers, [[0.9562, 2], [10.0438, 2]], atol=1e-4)


def test_matches_the_sklekmeans_oracle_with_half_the_alpha():
    sk = pytest.importorskip("sklekmeans")
    theirs = sk.EKMeans(2, random_state=0).fit(TOY)  # its default alpha="dvariance", scale 2
    ours = EquilibriumKMeans(2, random_state=0).fit(TOY)
    np.testing.assert_allclose(np.sort(ours.cluster_centers_, 0), np.sort(theirs.cluster_centers_, 0), atol=1e-3)
    X, _ = imbalanced_balls(seed=3)
    ours = EquilibriumKMeans(3, alpha=1.0, n_init=10, random_state=0, tol=1e-8).fit(X)
    theirs = sk.EKMeans(3, alpha=0.5, init=ours.cluster_centers_, max_iter=300).fit(X)  # α_sk = α / 2
    np.testing.assert_allclose(np.sort(theirs.cluster_centers_, 0), np.sort(ours.cluster_centers_, 0), atol=1e-3)


def test_imbalanced_balls_ekm_separates_where_kmeans_fails():
    X, y = imbalanced_balls()
    ekm = EquilibriumKMeans(3, alpha=1.0, n_init=10, random_state=0).fit(X)
    km = KMeans(3, n_init=10, random_state=0).fit(X)
    assert adjusted_rand_score(y, ekm.labels_) >= 0.95
    assert adjusted_rand_score(y, km.labels_) <= 0.35
    assert ekm.converged_


def test_balanced_2_1_1_ekm_as_good_as_kmeans():
    X, y = imbalanced_balls(sizes=(400, 200, 200))
    ekm = EquilibriumKMeans(3, alpha=1.0, n_init=10, random_state=0).fit(X)
    km = KMeans(3, n_init=10, random_state=0).fit(X)
    assert adjusted_rand_score(y, ekm.labels_) >= adjusted_rand_score(y, km.labels_) - 0.01


def test_objective_never_rises_where_the_plain_update_oscillates():
    # soft weights (dvariance α on 10 blobs in 32-D): the paper's plain update raises J at
    # about half its steps and is still moving after 40 of them
    X, _ = make_blobs(1000, n_features=32, centers=10, random_state=0)
    ekm = EquilibriumKMeans(10, random_state=0).fit(X)

    be = _NumpyBackend(X)
    C = init_centers(X, 10, "k-means++", np.random.RandomState(0))
    st = be.stats(C, ekm.alpha_)
    plain = [st.objective]
    for _ in range(40):
        C = C + centroid_step(C, st)
        st = be.stats(C, ekm.alpha_)
        plain.append(st.objective)
    assert (np.diff(plain) > 0).sum() > 10
    assert ekm.converged_ and ekm.n_iter_ < 50
    assert ekm.objective_ < min(plain)


def test_converged_tells_the_truth():
    X, _ = make_blobs(500, n_features=8, centers=5, random_state=0)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        short = EquilibriumKMeans(5, random_state=0, max_iter=2).fit(X)
    assert not short.converged_ and short.n_iter_ == 2
    full = EquilibriumKMeans(5, random_state=0).fit(X)
    assert full.converged_ and full.n_iter_ < 300
    # at convergence the centroids are (nearly) a fixed point of the two-step update
    st = ekm_sufficient_statistics(X, full.cluster_centers_, full.alpha_)
    np.testing.assert_allclose(st.sum_wx / st.sum_w[:, None], full.cluster_centers_, atol=1e-3)


def test_guard_never_divides_by_a_vanishing_weight_sum():
    from aelab.cluster import EKMStats

    C = np.array([[0.0, 0.0], [1.0, 1.0]])
    st = EKMStats(sum_wx=np.array([[3.0, 1.0], [2.0, 2.0]]), sum_w=np.array([1e-12, -0.5]),
                  sum_abs_w=np.array([10.0, 4.0]), objective=0.0)
    step = centroid_step(C, st)
    assert np.isfinite(step).all() and np.abs(step).max() < 100  # S/N would be 3e12
    # there the step is the gradient step −∇J / (ρ Σ|w|) = (S − N c) / (ρ Σ|w|), ρ = 0.05
    expected = (st.sum_wx - st.sum_w[:, None] * C) / (0.05 * st.sum_abs_w[:, None])
    np.testing.assert_allclose(step, expected, rtol=1e-9)


def test_dtypes_preserved_and_chunking_invariant():
    X, _ = make_blobs(500, n_features=4, centers=3, random_state=1)
    X32 = X.astype(np.float32)
    a = EquilibriumKMeans(3, n_init=2, random_state=0).fit(X32)
    b = EquilibriumKMeans(3, n_init=2, random_state=0, chunk_size=37).fit(X32)
    assert a.cluster_centers_.dtype == a.weights_.dtype == a.transform(X32).dtype == np.float32
    # The same solution. Its centroid order may differ: both starts reach it, and float32 sums in another
    # order can flip which start's (equal up to rounding) objective is the lower one.
    from scipy.optimize import linear_sum_assignment

    _, match = linear_sum_assignment(((a.cluster_centers_[:, None] - b.cluster_centers_[None]) ** 2).sum(-1))
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_[match], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(match[a.labels_], b.labels_)
    assert EquilibriumKMeans(3, random_state=0).fit(X).cluster_centers_.dtype == np.float64


def test_far_from_origin_float32_is_accurate():
    X, y = make_blobs(600, n_features=3, centers=3, random_state=2)
    base = EquilibriumKMeans(3, n_init=3, random_state=0).fit(X)
    far = EquilibriumKMeans(3, n_init=3, random_state=0).fit((X + 1e4).astype(np.float32))
    order = lambda C: C[np.argsort(C[:, 0])]  # noqa: E731
    np.testing.assert_allclose(order(far.cluster_centers_ - 1e4), order(base.cluster_centers_), atol=1e-2)
    assert adjusted_rand_score(base.labels_, far.labels_) == 1.0


def test_predict_transform_score_membership_consistent():
    X, _ = make_blobs(300, n_features=2, centers=3, random_state=0)
    ekm = EquilibriumKMeans(3, alpha=0.5, n_init=3, random_state=0).fit(X)
    np.testing.assert_array_equal(ekm.predict(X), ekm.labels_)
    np.testing.assert_array_equal(ekm.transform(X).argmin(axis=1), ekm.labels_)
    assert ekm.score(X) == pytest.approx(-ekm.objective_)
    U = ekm.membership(X)
    np.testing.assert_allclose(U.sum(axis=1), 1.0)
    np.testing.assert_allclose(U, ekm_weights(0.5 * ekm.transform(X) ** 2, 0.5)[1], atol=1e-9)


@pytest.mark.parametrize(
    "X, params, match",
    [
        (np.array([[0.0, np.nan], [1.0, 1.0]]), {"n_clusters": 1}, "NaN"),
        (np.array([[0.0, np.inf], [1.0, 1.0]]), {"n_clusters": 1}, "infinity"),
        (np.empty((0, 2)), {"n_clusters": 1}, "0 sample"),
        (TOY, {"n_clusters": 7}, "n_samples=6 should be >= n_clusters=7"),
        (TOY, {"n_clusters": 2, "alpha": 0.0}, "alpha must be a positive"),
        (TOY, {"n_clusters": 2, "alpha": -1.0}, "alpha must be a positive"),
        (TOY, {"n_clusters": 2, "alpha": "big"}, "alpha must be a positive"),
        (TOY, {"n_clusters": 2, "alpha": float("nan")}, "alpha must be a positive"),
        (TOY, {"n_clusters": 2, "scale": 0.0}, "scale must be"),
        (TOY, {"n_clusters": 2, "init": np.zeros((3, 2))}, "init has shape"),
        (TOY, {"n_clusters": 2, "init": "furthest"}, "init must be"),
        (TOY, {"n_clusters": 0}, "n_clusters must be"),
        (TOY, {"n_clusters": 2, "backend": "jax"}, "backend must be"),
        (TOY, {"n_clusters": 2, "device": "cuda"}, "CPU only"),
    ],
)
def test_bad_input_raises_clear_value_error(X, params, match):
    with pytest.raises(ValueError, match=match):
        EquilibriumKMeans(**params).fit(X)


def test_wrong_feature_count_at_predict():
    ekm = EquilibriumKMeans(2, random_state=0).fit(TOY)
    with pytest.raises(ValueError, match="expecting 2 features"):
        ekm.predict(np.zeros((3, 5)))


def test_all_identical_points_warn_and_stay_finite():
    X = np.ones((20, 3))
    with pytest.warns((RuntimeWarning, ConvergenceWarning)):
        ekm = EquilibriumKMeans(3, random_state=0).fit(X)
    assert np.isfinite(ekm.cluster_centers_).all() and np.isfinite(ekm.weights_).all()
    np.testing.assert_allclose(ekm.cluster_centers_, 1.0)


def test_huge_alpha_behaves_like_kmeans_and_tiny_alpha_collapses():
    X, y = make_blobs(400, n_features=2, centers=3, random_state=5)
    km = KMeans(3, n_init=5, random_state=0, tol=0).fit(X)  # tol=0: run Lloyd to its fixed point
    hard = EquilibriumKMeans(3, alpha=1e6, init=km.cluster_centers_).fit(X)
    np.testing.assert_allclose(hard.cluster_centers_, km.cluster_centers_, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        soft = EquilibriumKMeans(3, alpha=1e-6, random_state=0, max_iter=2000).fit(X)
    np.testing.assert_allclose(soft.cluster_centers_, np.tile(X.mean(0), (3, 1)), atol=0.05)


@pytest.fixture
def one_torch_thread():
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: thread start-up costs more than it saves on 2 cores
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_torch_backend_matches_numpy(one_torch_thread, dtype):
    X, _ = imbalanced_balls()
    X = X.astype(dtype)
    kw = dict(alpha=1.0, init="k-means++", n_init=4, random_state=0)  # same starts for both backends
    a = EquilibriumKMeans(3, **kw).fit(X)
    b = EquilibriumKMeans(3, **kw, backend="torch").fit(X)
    tol = 1e-9 if dtype == np.float64 else 1e-3
    np.testing.assert_allclose(b.cluster_centers_, a.cluster_centers_, rtol=tol, atol=tol)
    np.testing.assert_array_equal(b.labels_, a.labels_)
    assert b.objective_ == pytest.approx(a.objective_, rel=tol)
    np.testing.assert_allclose(b.transform(X), a.transform(X), rtol=tol, atol=tol)
    assert b.weights_.dtype == dtype


def test_torch_device_errors(one_torch_thread):
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            EquilibriumKMeans(2, backend="torch", device="cuda").fit(TOY)


@parametrize_with_checks([EquilibriumKMeans(random_state=0)])
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


@pytest.mark.parametrize("factor", [1e200, 1e30, 1e-30, 1e-200])
def test_data_whose_squares_leave_the_float_range_are_refused_not_one_cluster(factor):
    """Issue 22: ``X * 1e200`` gave one cluster with only overflow warnings (every distance inf)."""
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(c, 0.3, (30, 2)) for c in (0.0, 3.0, 6.0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # refused before any overflow
        with pytest.raises(ValueError, match="X's scale is out of range"):
            EquilibriumKMeans(3, alpha="dvariance", random_state=0).fit_predict(X * factor)
    ref = EquilibriumKMeans(3, alpha="dvariance", random_state=0).fit_predict(X)
    assert sorted(np.bincount(ref)) == [30, 30, 30]
    for ok in (1e12, 1e-12):  # inside the range: the same partition as unscaled (alpha="dvariance" is scale-free)
        est = EquilibriumKMeans(3, alpha="dvariance", random_state=0)
        assert adjusted_rand_score(ref, est.fit_predict(X * ok)) == 1.0

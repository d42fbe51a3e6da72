"""Equilibrium K-Means (EKM): Y. He, "Imbalanced Data Clustering using Equilibrium K-Means",
arXiv:2402.14490 (v3, 2024); IEEE Transactions on Fuzzy Systems (2025).

Conventions (the paper's, used everywhere in :mod:`aelab.cluster`):

* distance ``d_kn = ½‖x_n − c_k‖²`` (half the squared Euclidean distance);
* objective ``J(C) = Σ_n h_n`` with the Boltzmann operator
  ``h_n = Σ_k d_kn e^(−α d_kn) / Σ_i e^(−α d_in)`` (a smooth stand-in for ``min_k d_kn``);
* weights ``w_kn = ∂h_n/∂d_kn = u_kn [1 − α (d_kn − h_n)]`` with the membership
  ``u_kn = softmax_k(−α d_kn)``; they sum to 1 over k and are negative when
  ``d_kn > h_n + 1/α`` (centroid repulsion, the point of EKM);
* centroid step ``c_k = Σ_n w_kn x_n / Σ_n w_kn`` (gradient descent on J with step 1/Σ_n w_kn).

The paper's equation numbers differ between its arXiv versions, so docstrings cite the
equations by content. ``sklekmeans`` (the author's package) uses the full squared distance, so
its ``alpha`` is the paper's α / 2; ``alpha_sklekmeans_`` gives that value.

Everything is computed in row chunks of ``chunk_size`` samples in a cluster-major ``(K, m)``
layout (reductions over clusters then run along contiguous memory), so the memory beyond X is
``O(chunk_size × K)`` and there is no Python loop over clusters.
"""

from __future__ import annotations

import functools
import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

import aelab.cluster.distributed as dist_ekm
from aelab.cluster.backends import make_backend
from aelab.cluster.core import _boltzmann, _degenerate, _run_skm
from aelab.cluster.seeding import init_centers, screen_seeds

__all__ = ["EquilibriumKMeans"]


def _resolve_alpha(alpha, scale, mean_half_sqdist: float) -> float:
    """The paper's α: a positive float, or ``scale / mean_n d(x_n, x̄)`` for "dvariance"."""
    if isinstance(alpha, str):
        if alpha != "dvariance":
            raise ValueError(f"alpha must be a positive float or 'dvariance', got {alpha!r}.")
        if not (isinstance(scale, numbers.Real) and np.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive float, got {scale!r}.")
        if mean_half_sqdist <= np.finfo(np.float64).tiny:
            warnings.warn("X has zero variance (all points identical); alpha='dvariance' falls "
                          "back to alpha=scale.", RuntimeWarning, stacklevel=3)
            return float(scale)
        return float(scale) / mean_half_sqdist
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a positive float or 'dvariance', got {alpha!r}.")
    return float(alpha)


#: RMS distance of the points to their mean that a fit accepts. Outside it the half squared
#: distances leave float32's range (screen seeding computes in float32: (1e19)² overflows, (1e-19)²
#: is subnormal) and, further out, float64's: ``X * 1e200`` made every distance ``inf`` and ended in one
#: cluster with only overflow warnings.
SCALE_RANGE = (1e-15, 1e15)


def _check_scale(X, mean_half_sqdist: float) -> None:
    """Refuse data whose scale the fit cannot compute in (see `SCALE_RANGE`), before any ``inf``/``nan``.

    Raises:
        ValueError: the mean half squared distance overflows, underflows to 0 for points that differ,
            or puts the RMS distance to the mean outside `SCALE_RANGE`.
    """
    rms = float(np.sqrt(2.0 * mean_half_sqdist)) if np.isfinite(mean_half_sqdist) else float("inf")
    if rms == 0.0 and (X.shape[0] < 2 or not np.any(np.ptp(X, axis=0) > 0)):
        return  # all points identical: alpha="dvariance" warns and falls back to alpha=scale
    lo, hi = SCALE_RANGE
    if not lo <= rms <= hi:
        raise ValueError(f"X's scale is out of range: the RMS distance of its points to their mean is {rms:.3g} "
                         f"(accepted: {lo:g} to {hi:g}), so squared distances over- or underflow; divide X by its "
                         "scale (e.g. its standard deviation, as StandardScaler does) first.")


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")


def _validate_common(est, X):
    """Checks shared by the EKM estimators; returns ``(init array or str, n_init)``."""
    _check_int("n_clusters", est.n_clusters, 1)
    _check_int("max_iter", est.max_iter, 1)
    if not isinstance(est.tol, numbers.Real) or not est.tol >= 0:
        raise ValueError(f"tol must be a float >= 0, got {est.tol!r}.")
    n, d = X.shape
    if n < est.n_clusters:
        raise ValueError(f"n_samples={n} should be >= n_clusters={est.n_clusters}.")
    init = est.init
    if isinstance(init, str):
        names = type(est)._init_names
        if init not in names:
            raise ValueError(f"init must be {', '.join(map(repr, names))} or an array, got {init!r}.")
    else:
        init = check_array(init, dtype=np.float64)
        if init.shape != (est.n_clusters, d):
            raise ValueError(f"init has shape {init.shape}, expected ({est.n_clusters}, {d}).")
    n_init = getattr(est, "n_init", 1)
    if isinstance(n_init, str) and n_init == "auto":
        n_init = type(est)._auto_n_init.get(init, 1) if isinstance(init, str) else 1
    _check_int("n_init", n_init, 1)
    if not isinstance(init, str) and n_init != 1:
        warnings.warn(f"Explicit initial centers given: performing one init instead of n_init={n_init}.",
                      RuntimeWarning, stacklevel=3)
        n_init = 1
    return init, n_init


def _seedings(est, X, init, n_init, param, random_state):
    """The ``n_init`` starting centroid sets of one fit (``"screen"``: all drawn up front)."""
    if isinstance(init, str) and init == "screen":
        return screen_seeds(X, est.n_clusters, param, n_init, random_state, type(est)._kernel)
    return (init_centers(X, est.n_clusters, init, random_state) for _ in range(n_init))


def _sharded(est) -> bool:
    """``distributed=True``: the fit's sums go through torch.distributed (needs a process group)."""
    if not getattr(est, "distributed", False):
        return False
    if not dist_ekm.is_distributed():
        raise ValueError("distributed=True needs an initialised torch.distributed process group "
                         "(torch.distributed.init_process_group).")
    return True


def one_blas_thread(method):
    """Run ``method`` with BLAS on one thread, as scikit-learn's ``KMeans`` does.

    The products here are thin (K rows), so BLAS threads gain little, and when the cores are
    shared OpenBLAS threads stall: measured on 2 busy cores, a 100k × 32 fit took 8.9 s with the
    default threads and 0.31 s with one.
    """

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return method(*args, **kwargs)

    return wrapper


class _SmoothKMeans(ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, BaseEstimator):
    """Shared machinery of the smooth K-means family (EKM and the baselines in ``baselines.py``).

    A subclass sets ``_kernel`` (``(D, param) -> (W, U, h)`` on cluster-major half squared
    distances), ``_fit_param(backend)`` (validates and stores its parameter, e.g. ``alpha_``),
    ``_param()`` (that value after fit) and optionally ``_accelerate = False``.
    """

    _kernel = staticmethod(_boltzmann)
    _accelerate = True
    _auto_n_init = {"random": 10}  # n_init="auto" per init string (1 otherwise, as KMeans)
    _init_names = ("screen", "k-means++", "random")

    def _backend_for(self, X):
        chunk = getattr(self, "chunk_size", None)
        if chunk is not None:
            _check_int("chunk_size", chunk, 1)
        return make_backend(X, getattr(self, "backend", "numpy"), getattr(self, "device", "cpu"),
                             chunk, self.n_clusters, type(self)._kernel)

    @one_blas_thread
    def fit(self, X, y=None):
        """Fit to X, shape (n_samples, n_features); returns self."""
        X = validate_data(self, X, dtype=[np.float64, np.float32], order="C")
        init, n_init = _validate_common(self, X)
        random_state = check_random_state(self.random_state)
        be = self._backend_for(X)
        sharded = _sharded(self)
        if sharded:
            be.mean_half_sqdist = dist_ekm.global_mean_half_sqdist(X)
        _check_scale(X, be.mean_half_sqdist)
        param = self._fit_param(be)
        stats_fn = self._objective_stats(X, y, be)
        if sharded:
            stats_fn = dist_ekm.ekm_statistics_allreduced(stats_fn)
        # (tol · feature std)², never below what the dtype resolves (float32 would stall)
        tol = max(self.tol, 100 * float(np.finfo(X.dtype).eps))
        tol_abs = tol**2 * 2.0 * be.mean_half_sqdist / X.shape[1]
        rise = 64 * float(np.finfo(X.dtype).eps)
        best = None
        starts = self._starts(dist_ekm.GatheredRows(X) if sharded else X, init, n_init, param, random_state)
        if sharded:  # drawn from all ranks' points as one process would; rank 0's on every rank
            starts = list(dist_ekm.broadcast_array(np.stack(list(starts))))
        for C0 in starts:
            run = _run_skm(stats_fn, C0, param, self.max_iter, tol_abs, rise, self._accelerate, self.verbose)
            if best is None or run[1].objective < best[1].objective:
                best = run
        C, st, self.n_iter_, self.converged_ = best
        self.cluster_centers_ = C.astype(X.dtype)
        self._n_features_out = self.n_clusters
        self.labels_, self.objective_, self.weights_ = be.assign(self.cluster_centers_, param, weights=True)
        if sharded:
            self.objective_ = float(dist_ekm.allreduce_sum(np.array([self.objective_]))[0])
        self._finish(st)
        return self

    def _objective_stats(self, X, y, be):
        """``(C, param) -> EKMStats`` of the objective being minimised (semi-supervised EKM adds a term)."""
        return be.stats

    def _starts(self, X, init, n_init, param, random_state):
        return _seedings(self, X, init, n_init, param, random_state)

    def _finish(self, st):
        """Warnings about the fitted solution (``st``: its statistics)."""
        name = type(self).__name__
        if not self.converged_:
            warnings.warn(f"{name} did not converge in max_iter={self.max_iter} iterations; "
                          "increase max_iter or tol.", ConvergenceWarning, stacklevel=3)
        if _degenerate(st).any():
            warnings.warn(f"{name}: {int(_degenerate(st).sum())} cluster(s) have a non-positive or tiny "
                          "weight sum (strong repulsion); alpha may be too large.", ConvergenceWarning, stacklevel=3)
        n_found = len(np.unique(self.labels_))
        if n_found < self.n_clusters:
            warnings.warn(f"Number of distinct clusters ({n_found}) found smaller than n_clusters "
                          f"({self.n_clusters}).", ConvergenceWarning, stacklevel=3)

    def _test_backend(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], order="C", reset=False)
        return self._backend_for(X)

    @one_blas_thread
    def predict(self, X):
        """Index of the nearest centroid for each row of X; shape (n_samples,), int32."""
        return self._test_backend(X).assign(self.cluster_centers_, None)[0]

    @one_blas_thread
    def transform(self, X):
        """Euclidean distances ``‖x − c_k‖`` (as ``KMeans.transform``), shape (n_samples, n_clusters).

        The paper's distance is ``d = ½ · transform(X)**2``.
        """
        return np.sqrt(2.0 * self._test_backend(X).half_sqdist(self.cluster_centers_))

    @one_blas_thread
    def membership(self, X):
        """Memberships ``U``, shape (n_samples, n_clusters), rows sum to 1 (EKM: softmax(−α d))."""
        return self._test_backend(X).assign(self.cluster_centers_, self._param(), membership=True)[2]

    @one_blas_thread
    def score(self, X, y=None):
        """Opposite of the objective, ``−Σ_n h_n`` on X (as ``KMeans.score`` returns −inertia)."""
        return -self._test_backend(X).assign(self.cluster_centers_, self._param())[1]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


class EquilibriumKMeans(_SmoothKMeans):
    """Equilibrium K-Means (Y. He, arXiv:2402.14490): k-means that resists large-cluster bias.

    Minimises ``J(C) = Σ_n h_n`` with the Boltzmann operator
    ``h_n = Σ_k d_kn e^(−α d_kn) / Σ_i e^(−α d_in)`` over ``d_kn = ½‖x_n − c_k‖²`` by alternating
    the paper's two steps: weights ``w_kn = u_kn [1 − α (d_kn − h_n)]`` (``u = softmax(−α d)``),
    then centroids ``c_k = Σ_n w_kn x_n / Σ_n w_kn``. Weights of far points are negative, so the
    points of a large cluster repel the other centroids. A rise of J (possible: h is not concave)
    halves the step; a centroid whose weight sum is not clearly positive takes a bounded gradient
    step instead of a division by ~0.

    Args:
        n_clusters: number of clusters K.
        alpha: the paper's α (> 0, for the half squared distance), or ``"dvariance"`` for
            ``α = scale / mean_n d(x_n, x̄)``. ``sklekmeans``' α is this α / 2 (it uses the full
            squared distance); with the same ``scale`` both packages pick the same clustering.
        scale: factor of ``"dvariance"`` (default 2, as in ``sklekmeans``).
        init: ``"screen"`` (default), ``"k-means++"``, ``"random"`` or an array (n_clusters,
            n_features). ``"screen"`` draws ``max(24, 8·n_init)`` seedings (k-means++, random rows
            and k-means++ moved to local means, in turn), refines them all by 5 plain EKM steps on at most 2048 rows and
            fully fits the ``n_init`` with the lowest objective (:mod:`aelab.cluster.seeding`):
            k-means++ alone keeps splitting a large cluster on imbalanced data, where often only
            a few % of k-means++ or random starts reach the lowest objective.
        n_init: full fits, keeping the lowest objective. ``"auto"``: 2 for ``"screen"``, 10 for
            ``"k-means++"`` and ``"random"``. Cost (``benchmarks/bench_ekm_seeding.py``, sets of
            1,500–5,000 points): the default takes about 3× one k-means++ fit (two full fits
            plus a screening that costs about one fit and does not grow with n beyond 2048
            rows; on 2,000,000 × 4 points it was 1.4×, the screened starts converging faster);
            ``init="k-means++"`` with ``n_init="auto"`` (10) about 5–10×.
        max_iter: maximum centroid updates per restart.
        tol: relative tolerance on the fixed-point residual: converged when
            ``‖S/N − C‖_F ≤ tol · sqrt(mean feature variance)`` (stricter than ``KMeans``' tol,
            which bounds the squared shift; EKM's soft steps need it).
        random_state: seed or ``RandomState`` for initialisation.
        verbose: print the objective every iteration.
        backend: ``"numpy"`` or ``"torch"`` (same result within float tolerance).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"`` (torch backend only).
        chunk_size: rows per pass; memory beyond X is ``O(chunk_size × n_clusters)``.
        distributed: X is this process's shard of the points: every iteration's statistics are
            summed over the ranks of the initialised ``torch.distributed`` process group (one
            ``all_reduce``), starts are drawn from all ranks' points as one process would draw
            them, so all ranks end with the centroids one process would find on all the points
            (:mod:`aelab.cluster.distributed`).

    Attributes:
        cluster_centers_: (n_clusters, n_features), dtype of X.
        labels_: (n_samples,) int32, nearest centroid.
        weights_: (n_samples, n_clusters) EKM weights W at the solution (rows sum to 1).
        objective_: J at the solution (on the training data).
        alpha_: the paper's α used; ``alpha_sklekmeans_`` is ``alpha_ / 2``.
        n_iter_, converged_, n_features_in_.

    Example:
        >>> X = np.array([[1, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]], dtype=float)
        >>> ekm = EquilibriumKMeans(2, random_state=0).fit(X)
        >>> round(ekm.alpha_sklekmeans_, 6), np.sort(ekm.cluster_centers_[:, 0]).round(4)
        (0.087273, array([ 0.9562, 10.0438]))
    """

    _auto_n_init = {"screen": 2, "k-means++": 10, "random": 10}

    def __init__(self, n_clusters=8, *, alpha="dvariance", scale=2.0, init="screen", n_init="auto",
                 max_iter=300, tol=1e-4, random_state=None, verbose=0, backend="numpy", device="cpu",
                 chunk_size=None, distributed=False):
        self.n_clusters = n_clusters
        self.alpha = alpha
        self.scale = scale
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.verbose = verbose
        self.backend = backend
        self.device = device
        self.chunk_size = chunk_size
        self.distributed = distributed

    @property
    def alpha_sklekmeans_(self) -> float:
        """α in ``sklekmeans``' convention (full squared distance): the paper's α / 2."""
        return self.alpha_ / 2.0

    def _fit_param(self, backend) -> float:
        self.alpha_ = _resolve_alpha(self.alpha, self.scale, backend.mean_half_sqdist)
        return self.alpha_

    def _param(self) -> float:
        return self.alpha_

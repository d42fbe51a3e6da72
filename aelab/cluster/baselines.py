"""Baselines behind the same interface as :class:`~aelab.cluster.EquilibriumKMeans`.

All are smooth K-means (SKM) members in Y. He's frame (arXiv:2402.14490): the objective is
``Σ_n h(d_1n, …, d_Kn)`` with ``d_kn = ½‖x_n − c_k‖²``, weights ``w_kn = ∂h/∂d_kn``, and the
centroid step ``c_k = Σ_n w_kn x_n / Σ_n w_kn``.

=================  ==============================================  ==============================
method             h                                               w_kn
=================  ==============================================  ==============================
``kmeans`` (HKM)   ``min_k d_kn``                                  1 for the nearest centroid
``fkm``  (FKM)     ``(Σ_k d_kn^−p)^(−1/p)``, ``p = 1/(m−1)``       ``u_kn^m`` (Bezdek's update)
``mefc`` (MEFC)    ``−(1/λ) log Σ_k e^(−λ d_kn)``                  ``softmax_k(−λ d_kn)``
``course-softmax`` (none: not a gradient method)                   ``softmax_k(−α ‖x_n − c_k‖)``
=================  ==============================================  ==============================

``kmeans`` is scikit-learn's ``KMeans`` itself (re-exported here), so reports compare against the
reference implementation. ``CourseSoftmaxKMeans`` reproduces the defect of the course report this project grew
from (its "Eq. 38"): unsquared distance and no equilibrium factor. It is a soft k-means variant, **not** EKM, and is
kept only to show in reports how it fails on imbalanced data.

Example:
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(100, 2))
    >>> make_clusterer("fkm", 3, random_state=0).fit(X).cluster_centers_.shape
    (3, 2)
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.cluster import KMeans

from aelab.cluster.ekm import EquilibriumKMeans, _SmoothKMeans
from aelab.cluster.ssekm import SemiSupervisedEquilibriumKMeans

__all__ = ["KMeans", "FuzzyKMeans", "MaxEntropyFuzzyKMeans", "CourseSoftmaxKMeans", "make_clusterer",
           "canonical_method", "METHODS"]

METHODS = ("ekm", "ssekm", "kmeans", "fkm", "mefc", "course-softmax")


def canonical_method(method: str) -> str:
    """``method`` checked against ``METHODS`` (a ``ValueError`` naming them otherwise)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}.")
    return method


def _softmin(E: np.ndarray, beta: float):
    """``softmax(−β E)`` over clusters and ``−(1/β) log Σ e^(−β E)``, for cluster-major E (K, m)."""
    emin = E.min(axis=0)
    U = np.multiply(E - emin, -beta)
    np.exp(U, out=U)
    total = U.sum(axis=0)
    U /= total
    return U, emin - np.log(total) / beta


def _fkm_kernel(D: np.ndarray, m: float):
    """FKM: ``u = d^−p / Σ d^−p`` computed as ``(d_min/d)^p`` (no overflow; d = 0 gets u = 1)."""
    p = 1.0 / (m - 1.0)
    dmin = D.min(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        R = (dmin / D) ** p
    R[np.isnan(R)] = 1.0  # 0/0: the point sits on this centroid
    total = R.sum(axis=0)
    U = R / total
    return U**m, U, dmin * total ** (-1.0 / p)


def _mefc_kernel(D: np.ndarray, lam: float):
    U, h = _softmin(D, lam)
    return U, U, h


def _course_kernel(D: np.ndarray, alpha: float):
    # The course report's weights: softmax of −α·(unsquared) distance. h is the matching soft
    # minimum, reported as the objective only; the report's update does not descend it.
    U, h = _softmin(np.sqrt(2.0 * D), alpha)
    return U, U, h


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive float, got {value!r}.")
    return float(value)


class _Baseline(_SmoothKMeans):
    def __init__(self, n_clusters=8, *, init="k-means++", n_init="auto", max_iter=300, tol=1e-4,
                 random_state=None, verbose=0):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.verbose = verbose


class FuzzyKMeans(_Baseline):
    """Fuzzy K-means (Bezdek's FKM / fuzzy c-means) with fuzzifier ``m`` (> 1, default 2).

    Attributes: ``cluster_centers_``, ``labels_``, ``weights_`` (``u^m``), ``objective_``,
    ``n_iter_``, ``converged_``; methods as :class:`~aelab.cluster.EquilibriumKMeans`.
    """

    _kernel = staticmethod(_fkm_kernel)

    def __init__(self, n_clusters=8, *, m=2.0, init="k-means++", n_init="auto", max_iter=300, tol=1e-4,
                 random_state=None, verbose=0):
        super().__init__(n_clusters, init=init, n_init=n_init, max_iter=max_iter, tol=tol,
                         random_state=random_state, verbose=verbose)
        self.m = m

    def _fit_param(self, backend):
        if _positive("m", self.m) <= 1.0:
            raise ValueError(f"m must be > 1, got {self.m!r}.")
        return float(self.m)

    def _param(self):
        return float(self.m)


class MaxEntropyFuzzyKMeans(_Baseline):
    """Maximum-entropy fuzzy clustering (MEFC): weights ``softmax_k(−λ d_kn)``, ``lam`` = λ > 0.

    λ multiplies the paper's half squared distance, like EKM's α.
    """

    _kernel = staticmethod(_mefc_kernel)

    def __init__(self, n_clusters=8, *, lam=1.0, init="k-means++", n_init="auto", max_iter=300, tol=1e-4,
                 random_state=None, verbose=0):
        super().__init__(n_clusters, init=init, n_init=n_init, max_iter=max_iter, tol=tol,
                         random_state=random_state, verbose=verbose)
        self.lam = lam

    def _fit_param(self, backend):
        return _positive("lam", self.lam)

    def _param(self):
        return float(self.lam)


class CourseSoftmaxKMeans(_Baseline):
    """The course report's "Eq. 38": weights ``softmax_k(−α ‖x_n − c_k‖)``. NOT EKM.

    This is the defect recorded in ``reference/README.md`` (defect 1): unsquared distance and no
    equilibrium factor ``1 − α (d − h)``, so no weight is ever negative and nothing repels a
    centroid from a large cluster (the reference notes measured ARI 0.23 where EKM gets 0.97;
    ``benchmarks/README.md`` has this package's numbers). Kept as a baseline so reports can
    show the difference; run with the plain, unaccelerated update it used.
    """

    _kernel = staticmethod(_course_kernel)
    _accelerate = False

    def __init__(self, n_clusters=8, *, alpha=1.0, init="k-means++", n_init="auto", max_iter=300, tol=1e-4,
                 random_state=None, verbose=0):
        super().__init__(n_clusters, init=init, n_init=n_init, max_iter=max_iter, tol=tol,
                         random_state=random_state, verbose=verbose)
        self.alpha = alpha

    def _fit_param(self, backend):
        self.alpha_ = _positive("alpha", self.alpha)
        return self.alpha_

    def _param(self):
        return self.alpha_


def make_clusterer(method: str, n_clusters: int, alpha: float | str | None = None, random_state=None,
                   n_init: int = 10, **kwargs):
    """One clusterer by name, for side-by-side comparisons.

    Args:
        method: ``"ekm"``, ``"ssekm"`` (semi-supervised EKM: fit it with ``fit(X, y)``),
            ``"kmeans"`` (scikit-learn's ``KMeans``), ``"fkm"``, ``"mefc"`` or ``"course-softmax"``.
        n_clusters: K.
        alpha: EKM's α (paper convention, or ``"dvariance"``), MEFC's λ, the course report's α; ignored
            by ``kmeans`` and ``fkm``. ``None`` means each method's default (EKM ``"dvariance"``,
            otherwise 1).
        random_state: seed.
        n_init: restarts (best objective kept); semi-supervised EKM always uses its own
            ``"auto"`` (one start from the labelled class means).
        **kwargs: passed to the estimator (e.g. ``m=2`` for FKM, ``backend="torch"`` for EKM).

    Returns:
        An unfitted scikit-learn-style estimator with ``fit``, ``predict``, ``labels_`` and
        ``cluster_centers_``.
    """
    method = canonical_method(method)
    common = dict(n_init=n_init, random_state=random_state, **kwargs)
    if method == "ekm":
        return EquilibriumKMeans(n_clusters, alpha="dvariance" if alpha is None else alpha, **common)
    if method == "kmeans":
        return KMeans(n_clusters, **common)
    if method == "fkm":
        return FuzzyKMeans(n_clusters, **common)
    if method == "mefc":
        return MaxEntropyFuzzyKMeans(n_clusters, lam=1.0 if alpha is None else alpha, **common)
    if method == "ssekm":
        common["n_init"] = "auto"
        return SemiSupervisedEquilibriumKMeans(n_clusters, alpha="dvariance" if alpha is None else alpha, **common)
    return CourseSoftmaxKMeans(n_clusters, alpha=1.0 if alpha is None else alpha, **common)

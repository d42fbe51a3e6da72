"""Semi-supervised Equilibrium K-Means (SSEKM): a few labelled points guide the clustering.

Y. He, "Semi-supervised equilibrium K-means for imbalanced data clustering", Knowledge-Based
Systems (2025) 113990; the author's ``sklekmeans.SSEKM`` implements the same update. In this
package's convention (``d_kn = ½‖x_n − c_k‖²``, see :mod:`aelab.cluster.ekm`), with the labelled
set S, a prior ``f_kn`` (one-hot of the label of a labelled point n) and a supervision strength θ,
the objective is

    J(C) = Σ_n h_n + θ Σ_{n∈S} (Σ_k f_kn d_kn − h_n)

(EKM's Boltzmann objective plus, for each labelled point, how much its own class's distance
exceeds its soft minimum). Its weights ``∂J/∂d_kn`` are EKM's ``w_kn`` for unlabelled points and

    w̃_kn = w_kn + θ (f_kn − w_kn)      for n ∈ S,

and the centroid step is EKM's, ``c_k = Σ_n w̃_kn x_n / Σ_n w̃_kn``. With ``theta="auto"``,
``θ = N / |S|`` (the author's choice: the labelled points together weigh as much as all points).
Because the prior is constant, the statistics are EKM's over all points plus a correction over
S only, so every pass over the data is the full-batch estimator's (chunked, numpy or torch).
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.utils.validation import check_array

import aelab.cluster.distributed as dist_ekm
from aelab.cluster.core import EKMStats
from aelab.cluster.ekm import EquilibriumKMeans, _seedings, _sharded
from aelab.cluster.seeding import init_centers

__all__ = ["SemiSupervisedEquilibriumKMeans", "ssekm_statistics"]


def _prior_terms(X_lab, prior, centers):
    """``Σ_{n∈S} f_kn x_n`` (K, d), ``Σ_{n∈S} f_kn`` (K,) and ``Σ_{n∈S} Σ_k f_kn d_kn``."""
    D = 0.5 * ((X_lab[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
    return prior.T @ X_lab, prior.sum(axis=0), float((prior * D).sum())


def ssekm_statistics(st_all: EKMStats, st_lab: EKMStats, X_lab, prior, centers, theta: float) -> EKMStats:
    """SSEKM's statistics from EKM's over all points (``st_all``) and over the labelled ones (``st_lab``).

    ``S = S_all + θ (Σ_S f x − S_lab)``, ``N = N_all + θ (Σ_S f − N_lab)``,
    ``J = J_all + θ (Σ_S Σ_k f d − J_lab)`` (module docstring). ``sum_abs_w`` bounds ``Σ|w̃|``.
    """
    SF, NF, JF = _prior_terms(np.asarray(X_lab, dtype=np.float64), prior, np.asarray(centers, dtype=np.float64))
    return EKMStats(st_all.sum_wx + theta * (SF - st_lab.sum_wx), st_all.sum_w + theta * (NF - st_lab.sum_w),
                    st_all.sum_abs_w + (abs(1.0 - theta) - 1.0) * st_lab.sum_abs_w + theta * NF,
                    st_all.objective + theta * (JF - st_lab.objective))


class SemiSupervisedEquilibriumKMeans(EquilibriumKMeans):
    """Semi-supervised EKM (Y. He, Knowledge-Based Systems 2025): ``fit(X, y)`` with ``y = -1`` unlabelled.

    The labelled classes (sorted, ``classes_``) take the first ``len(classes_)`` clusters:
    cluster ``k`` is class ``classes_[k]``; any further clusters are free. Without labels
    (``y`` None or all −1) this is :class:`~aelab.cluster.EquilibriumKMeans`.

    Args:
        n_clusters: K (≥ the number of labelled classes).
        theta: supervision strength θ ≥ 0, or ``"auto"`` for ``N / |S|``.
        init: ``"labels"`` (default: each class's centroid starts at its labelled points' mean,
            free clusters by k-means++ from there), or any init of ``EquilibriumKMeans``.
        n_init: ``"auto"``: 1 for ``"labels"`` (deterministic), else as ``EquilibriumKMeans``.
        alpha, scale, max_iter, tol, random_state, verbose, backend, device, chunk_size, distributed: as
            :class:`~aelab.cluster.EquilibriumKMeans`.

    Attributes:
        as ``EquilibriumKMeans`` (``weights_`` are EKM's weights; ``objective_`` is EKM's J on
        the training data) plus ``classes_``, ``theta_``, ``n_labelled_``, and
        ``objective_semi_supervised_`` (J with the supervision term).

    Example:
        >>> X = np.array([[0, 0], [0, 1], [4, 0], [4, 1], [2, 0.4]], dtype=float)
        >>> ss = SemiSupervisedEquilibriumKMeans(2, alpha=1.0).fit(X, [0, -1, 1, -1, -1])
        >>> ss.labels_[:4].tolist(), ss.classes_.tolist()
        ([0, 0, 1, 1], [0, 1])
    """

    _auto_n_init = {"labels": 1, "screen": 2, "k-means++": 10, "random": 10}
    _init_names = ("labels", "screen", "k-means++", "random")

    def __init__(self, n_clusters=8, *, alpha="dvariance", scale=2.0, theta="auto", init="labels", n_init="auto",
                 max_iter=300, tol=1e-4, random_state=None, verbose=0, backend="numpy", device="cpu",
                 chunk_size=None, distributed=False):
        super().__init__(n_clusters, alpha=alpha, scale=scale, init=init, n_init=n_init, max_iter=max_iter, tol=tol,
                         random_state=random_state, verbose=verbose, backend=backend, device=device,
                         chunk_size=chunk_size, distributed=distributed)
        self.theta = theta

    def fit(self, X, y=None):
        """Fit to X (n_samples, n_features) with labels ``y`` (−1: unlabelled); returns self."""
        return super().fit(X, y)

    def _labels(self, X, y):
        n = X.shape[0]
        if y is None:
            y = np.full(n, -1)
        y = check_array(y, ensure_2d=False, dtype=None)
        if y.ndim != 1 or y.shape[0] != n:
            raise ValueError(f"y must have shape ({n},), got {y.shape}.")
        lab = np.flatnonzero(y != -1) if y.dtype.kind in "iuf" else np.flatnonzero(y.astype(str) != "-1")
        self.classes_ = np.unique(y[lab])
        if _sharded(self):  # the classes labelled on any rank, in the same order everywhere
            self.classes_ = np.unique(np.concatenate(dist_ekm.allgather_objects(self.classes_)))
        codes = np.searchsorted(self.classes_, y[lab])
        if len(self.classes_) > self.n_clusters:
            raise ValueError(f"y has {len(self.classes_)} labelled classes but n_clusters={self.n_clusters}.")
        prior = np.zeros((len(lab), self.n_clusters))
        prior[np.arange(len(lab)), codes] = 1.0
        return lab, prior

    def _objective_stats(self, X, y, be):
        lab, prior = self._labels(X, y)
        self.n_labelled_ = len(lab)
        theta = self.theta
        if isinstance(theta, str) and theta == "auto":
            counts = np.array([X.shape[0], len(lab)], dtype=np.float64)
            n, n_lab = dist_ekm.allreduce_sum(counts) if _sharded(self) else counts
            theta = n / n_lab if n_lab else 0.0
        elif isinstance(theta, bool) or not isinstance(theta, numbers.Real) or not np.isfinite(theta) or theta < 0:
            raise ValueError(f"theta must be a float >= 0 or 'auto', got {theta!r}.")
        self.theta_ = float(theta)
        self._lab, self._prior, X_lab = lab, prior, X[lab]
        self._X_lab = np.asarray(X_lab, dtype=np.float64)
        if not len(lab) or self.theta_ == 0.0:
            return be.stats

        def stats(C, alpha):
            return ssekm_statistics(be.stats(C, alpha), be.stats(C, alpha, rows=lab), X_lab, prior, C, self.theta_)

        self._stats_fn = stats
        return stats

    def _starts(self, X, init, n_init, param, random_state):
        if not (isinstance(init, str) and init == "labels"):
            return _seedings(self, X, init, n_init, param, random_state)
        return [self._label_means(X, random_state) for _ in range(n_init)]

    def _label_means(self, X, random_state):
        """Class means of the labelled points, then k-means++ (D² draws) for the free clusters."""
        sums = np.column_stack([self._prior.T @ self._X_lab, self._prior.sum(axis=0)])[: len(self.classes_)]
        if _sharded(self):  # the class means of the labelled points of all ranks
            sums = dist_ekm.allreduce_sum(sums)
        C = list(sums[:, :-1] / sums[:, -1:])
        if not C:
            return init_centers(X, self.n_clusters, "k-means++", random_state)
        X64 = np.asarray(X, dtype=np.float64)  # (sharded: all ranks' points, only when clusters are free)
        while len(C) < self.n_clusters:
            d2 = ((X64[:, None, :] - np.asarray(C)[None]) ** 2).sum(-1).min(axis=1)
            p = d2 / d2.sum() if d2.sum() > 0 else None
            C.append(X64[random_state.choice(len(X64), p=p)])
        return np.asarray(C)

    def _finish(self, st):
        super()._finish(st)
        fn = getattr(self, "_stats_fn", None)
        self.objective_semi_supervised_ = (fn(self.cluster_centers_.astype(np.float64), self.alpha_).objective
                                           if fn is not None else self.objective_)
        for name in ("_lab", "_prior", "_X_lab", "_stats_fn"):
            self.__dict__.pop(name, None)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False
        return tags

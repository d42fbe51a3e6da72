"""Mini-batch Equilibrium K-Means on sufficient statistics (Y. He, arXiv:2402.14490, batch learning).

Per batch b at centroids C, the EKM step needs only ``S_k = Σ_{n∈b} w_kn x_n`` and
``N_k = Σ_{n∈b} w_kn`` (:func:`~aelab.cluster.ekm_sufficient_statistics`). The estimator keeps
an exponentially forgotten running sum ``N ← γ N + N_b`` (and ``S``, ``Σ|w|`` alike) and moves
each centroid by the batch's gradient with the learning rate ``1/N_k`` of EKM's gradient-descent
form (``∂J/∂c_k = Σ_n w_kn (c_k − x_n)``, step ``1/Σ_n w_kn``; see :mod:`aelab.cluster.ekm`):

    ``c_k ← c_k + Σ_{n∈b} w_kn (x_n − c_k) / N_k``,

which is the accumulated mean ``c_k = S_k / N_k`` of the mini-batch rule whenever the previous
centroid was ``S_k / N_k`` (as in scikit-learn's ``MiniBatchKMeans``, whose learning rate is one
over the accumulated count). Where ``N_k`` is not clearly positive the full-batch estimator's
guard applies (``N_k`` replaced by ``ρ Σ|w|``). The gradient is always the batch's, at the current
centroids: a repelled centroid (``N_k < 0``, all its weights negative) moved by the *running*
sums, ``c_k ← c_k + (S_k − N_k c_k)/(ρ Σ|w|)``, is pushed ``1/ρ`` times its distance away from
``S_k/N_k``, and as the sums only decay once it has left the data, the same push repeats every
batch: centroids grew ×21 a batch to 1e36 on whitened image patches. Because only sums are
involved, several processes can each compute ``(S_b, N_b)`` on their shard and add them
(:func:`~aelab.cluster.sum_stats`) before the update: the result is the same as one process
seeing all the batches. ``distributed=True`` does that with ``torch.distributed``
(:mod:`aelab.cluster.distributed`).
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import validate_data

import aelab.cluster.distributed as dist_ekm
from aelab.cluster.core import _GUARD_RHO, EKMStats
from aelab.cluster.ekm import (
    _check_int,
    _check_scale,
    _resolve_alpha,
    _seedings,
    _sharded,
    _SmoothKMeans,
    _validate_common,
    one_blas_thread,
)
from aelab.progress import info

__all__ = ["MiniBatchEquilibriumKMeans"]

_PARTIAL_FIT_DECAY = 0.9  # γ for partial_fit streams of unknown length (~10 batches of memory)


def _minibatch_step(C, batch: EKMStats, run: EKMStats) -> np.ndarray:
    """``Σ_{n∈b} w_kn (x_n − c_k) / max(N_k, ρ Σ|w|)``: the batch's gradient at C, the running sums' rate.

    ``batch`` holds the statistics of this batch at C, ``run`` the forgotten running sums (this
    batch included). Only the rate comes from the running sums, so a centroid that has left the
    data (weights ≈ 0) stops, where a step on the running sums would keep being pushed.
    """
    denom = np.maximum(run.sum_w, _GUARD_RHO * run.sum_abs_w)
    denom = np.where(denom > 0, denom, 1.0)  # all-zero weights so far: the gradient is 0 as well
    return (batch.sum_wx - batch.sum_w[:, None] * C) / denom[:, None]


class MiniBatchEquilibriumKMeans(_SmoothKMeans):
    """Equilibrium K-Means on mini-batches; same α convention and attributes as ``EquilibriumKMeans``.

    Args:
        n_clusters: K.
        alpha: the paper's α (half squared distance) or ``"dvariance"`` (``scale / mean d(x, x̄)``,
            on all of X in ``fit``, on the first batch in ``partial_fit``). ``sklekmeans``' α is α / 2.
        scale: factor of ``"dvariance"``.
        init: ``"k-means++"`` (default here: one cheap start per run), ``"screen"`` (EKM's
            screened mixed seeding, on at most 2048 rows), ``"random"`` or an array.
        n_init: independent runs, the lowest objective on X kept; ``"auto"``: 1 (2 for
            ``"screen"``, 10 for ``"random"``).
        batch_size: samples per batch (memory ``O(batch_size × K)``).
        max_iter: maximum epochs (passes over X) in ``fit``.
        tol: converged when an epoch moves the centroids by at most ``tol · feature std``.
        max_no_improvement: also converged when the epoch's objective (sum of the batch
            objectives) has not fallen by a relative ``1e-4`` for this many epochs (the batch
            noise keeps the centroid shift from ever reaching a strict ``tol``).
        decay: forgetting factor γ of the running ``(S, N)``; ``None``: ``1 − batch_size / n``
            in ``fit`` (about one epoch of memory) and 0.9 in ``partial_fit``.
        random_state, verbose, backend, device: as ``EquilibriumKMeans``.
        distributed: X is this process's shard of the points (``torch.distributed`` initialised):
            every rank walks the same global batches (one process's), computes its rows'
            statistics and one ``all_reduce`` per batch sums them, so the centroids are one
            process's on all the points (up to the order of additions; labels_ and weights_
            are for the shard, objective_ for all points). The all-reduce costs ~0.3 ms on gloo
            (``benchmarks/bench_ekm_dist.py``): more than the step of a 512-row batch per rank,
            so use batches of ≥ 10⁴ rows per rank.

    Attributes:
        cluster_centers_, labels_ (of the last batch after ``partial_fit``), weights_ (``fit``
        only), objective_ (``fit`` only), alpha_,
        n_iter_ (epochs), n_steps_ (batches), converged_, stats_ (the running :class:`EKMStats`).

    Example:
        >>> X = np.random.default_rng(0).normal(size=(1000, 2))
        >>> mb = MiniBatchEquilibriumKMeans(3, batch_size=256, random_state=0).fit(X)
        >>> mb.cluster_centers_.shape, mb.labels_.shape
        ((3, 2), (1000,))
    """

    _auto_n_init = {"screen": 2, "random": 10}

    def __init__(self, n_clusters=8, *, alpha="dvariance", scale=2.0, init="k-means++", n_init="auto",
                 batch_size=1024, max_iter=100, tol=1e-4, max_no_improvement=3, decay=None, random_state=None,
                 verbose=0, backend="numpy", device="cpu", distributed=False):
        self.n_clusters = n_clusters
        self.alpha = alpha
        self.scale = scale
        self.init = init
        self.n_init = n_init
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.tol = tol
        self.max_no_improvement = max_no_improvement
        self.decay = decay
        self.random_state = random_state
        self.verbose = verbose
        self.backend = backend
        self.device = device
        self.distributed = distributed

    @property
    def alpha_sklekmeans_(self) -> float:
        """α in ``sklekmeans``' convention (full squared distance): the paper's α / 2."""
        return self.alpha_ / 2.0

    def _param(self) -> float:
        return self.alpha_

    def _check_decay(self, default: float) -> float:
        if self.decay is None:
            return default
        if isinstance(self.decay, bool) or not (isinstance(self.decay, numbers.Real) and 0.0 <= self.decay < 1.0):
            raise ValueError(f"decay must be in [0, 1), got {self.decay!r}.")
        return float(self.decay)

    def _step(self, be, rows, gamma: float) -> float:
        """One batch: add its (S, N) to the forgotten running sums, then move the centroids.

        Sharded (``distributed=True``): ``rows`` are this rank's rows of the global batch and the
        batch's statistics are summed over the ranks (one ``all_reduce``) before the update.
        """
        C = self.cluster_centers_.astype(np.float64)
        if len(rows):
            st = be.stats(C, self.alpha_, rows=rows)
        else:  # no row of this global batch lives on this rank
            K, d = C.shape
            st = EKMStats(np.zeros((K, d)), np.zeros(K), np.zeros(K), 0.0)
        if self._dist:
            st = dist_ekm.allreduce_stats(st)
        run = self.stats_
        self.stats_ = EKMStats(gamma * run.sum_wx + st.sum_wx, gamma * run.sum_w + st.sum_w,
                               gamma * run.sum_abs_w + st.sum_abs_w, st.objective)
        self.cluster_centers_ = (C + _minibatch_step(C, st, self.stats_)).astype(self.cluster_centers_.dtype)
        self.n_steps_ += 1
        return st.objective

    def _reset(self, C0, dtype, d):
        if self._dist:  # rank 0's start on every rank (they agree anyway)
            C0 = dist_ekm.broadcast_array(C0)
        self.cluster_centers_ = np.asarray(C0, dtype=dtype)
        K = self.n_clusters
        self.stats_ = EKMStats(np.zeros((K, d)), np.zeros(K), np.zeros(K), 0.0)
        self.n_steps_ = 0

    def _setup(self, X):
        """Backend, α and the points seeding reads (sharded: all ranks', a `GatheredRows`)."""
        be = self._backend_for(X)
        self._dist = _sharded(self)
        if self._dist:
            be.mean_half_sqdist = dist_ekm.global_mean_half_sqdist(X)
        _check_scale(X, be.mean_half_sqdist)
        self.alpha_ = _resolve_alpha(self.alpha, self.scale, be.mean_half_sqdist)
        return be, (dist_ekm.GatheredRows(X) if self._dist else X)

    def _objective(self, be) -> float:
        J = be.assign(self.cluster_centers_, self.alpha_)[1]
        return float(dist_ekm.allreduce_sum(np.array([J]))[0]) if self._dist else J

    def _epochs(self, be, seen, batch: int, gamma: float, tol_abs: float, rs) -> tuple[int, bool]:
        """Epochs of shuffled global batches from the current centroids; returns ``(epochs, converged)``.

        Every rank draws the same permutation of all ``n`` rows (same seed, same draws as
        one process) and keeps the rows of each batch that it holds.
        """
        n = seen.shape[0]
        lo, m = (seen.start, seen.local.shape[0]) if self._dist else (0, n)
        best_j, stale, epoch = np.inf, 0, 0
        for epoch in range(1, self.max_iter + 1):
            start = self.cluster_centers_.astype(np.float64)
            order = rs.permutation(n)
            j = 0.0  # the epoch objective is measured at the moving centroids
            for s in range(0, n, batch):
                rows = np.sort(order[s : s + batch])  # sorted rows read faster
                j += self._step(be, rows[(rows >= lo) & (rows < lo + m)] - lo, gamma)
            shift = float(np.sum((self.cluster_centers_ - start) ** 2))
            stale = stale + 1 if j > best_j - 1e-4 * abs(best_j) else 0
            best_j = min(best_j, j)
            if self.verbose:
                info(f"MiniBatchEKM epoch {epoch}: objective {j:.6g}, centroid shift {shift:.3g}")
            if shift <= tol_abs or stale >= self.max_no_improvement:
                return epoch, True
        return epoch, False

    @one_blas_thread
    def fit(self, X, y=None):
        """Fit by epochs of shuffled mini-batches; returns self.

        With ``distributed=True`` X is this rank's shard: the global batches are those one
        process would draw on all the points, each rank computes the statistics of its rows
        of a batch and one ``all_reduce`` per batch sums them (:mod:`aelab.cluster.distributed`).
        """
        X = validate_data(self, X, dtype=[np.float64, np.float32], order="C")
        init, n_init = _validate_common(self, X)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("max_no_improvement", self.max_no_improvement, 1)
        rs = check_random_state(self.random_state)
        be, seen = self._setup(X)
        n, d = seen.shape
        batch = min(self.batch_size, n)
        gamma = self._check_decay(max(0.0, 1.0 - batch / n))
        tol = max(self.tol, 100 * float(np.finfo(X.dtype).eps))
        tol_abs = tol**2 * 2.0 * be.mean_half_sqdist / d
        best = None
        for C0 in _seedings(self, seen, init, n_init, self.alpha_, rs):
            self._reset(C0, X.dtype, d)
            epoch, converged = self._epochs(be, seen, batch, gamma, tol_abs, rs)
            objective = self._objective(be)
            if best is None or objective < best[0]:
                best = (objective, self.cluster_centers_, self.stats_, self.n_steps_, epoch, converged)
        (_, self.cluster_centers_, self.stats_, self.n_steps_, self.n_iter_, self.converged_) = best
        self._n_features_out = self.n_clusters
        self.labels_, _, self.weights_ = be.assign(self.cluster_centers_, self.alpha_, weights=True)
        self.objective_ = best[0]
        if not self.converged_:
            warnings.warn(f"MiniBatchEquilibriumKMeans did not converge in max_iter={self.max_iter} epochs.",
                          ConvergenceWarning, stacklevel=2)
        return self

    @one_blas_thread
    def partial_fit(self, X, y=None):
        """Update with one batch X (n_samples, n_features); the first call initialises. Returns self.

        With ``distributed=True`` X is this rank's part of the batch (the parts are summed).
        """
        first = not hasattr(self, "cluster_centers_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], order="C", reset=first)
        if first:
            init, _ = _validate_common(self, X)
            be, seen = self._setup(X)
            rs = check_random_state(self.random_state)
            self._reset(next(iter(_seedings(self, seen, init, 1, self.alpha_, rs))), X.dtype, X.shape[1])
            self.n_iter_, self.converged_ = 0, False
            self._n_features_out = self.n_clusters
        else:
            be = self._backend_for(X)
        self._step(be, np.arange(X.shape[0]), self._check_decay(_PARTIAL_FIT_DECAY))
        self.labels_ = be.assign(self.cluster_centers_, None)[0]
        return self

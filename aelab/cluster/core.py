"""Equilibrium K-Means numerics: weights, sufficient statistics and the fixed-point iteration.

The estimator classes live in :mod:`aelab.cluster.ekm` (whose docstring states the conventions:
``d_kn = ½‖x_n − c_k‖²``, Boltzmann objective, weights ``w_kn = u_kn [1 − α (d_kn − h_n)]``,
centroid step ``c_k = Σ_n w_kn x_n / Σ_n w_kn``; Y. He, arXiv:2402.14490). Everything here works
in row chunks in a cluster-major ``(K, m)`` layout, so memory beyond X is ``O(chunk × K)``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from sklearn.utils.validation import check_array
from threadpoolctl import threadpool_limits

from aelab.progress import info

__all__ = ["EKMStats", "ekm_weights", "centroid_step", "ekm_sufficient_statistics", "sum_stats"]

_GUARD_RHO = 0.05  # N_k below 5 % of Σ|w_kn|: positive and negative weights nearly cancel
_MIN_ETA = 2.0**-10  # give up damping after ten halvings
_AA_MEMORY = 3  # Anderson acceleration history (K × d floats each; measured 6-9 iterations)


class EKMStats(NamedTuple):
    """Sufficient statistics of one EKM step on a batch (sum them across batches or workers).

    Attributes:
        sum_wx: ``S_k = Σ_n w_kn x_n``, shape (K, n_features), float64.
        sum_w: ``N_k = Σ_n w_kn``, shape (K,), float64 (may be ≤ 0 for a repelled centroid).
        sum_abs_w: ``Σ_n |w_kn|``, shape (K,), the scale against which ``N_k`` counts as tiny.
        objective: ``Σ_n h_n`` on the batch.
    """

    sum_wx: np.ndarray
    sum_w: np.ndarray
    sum_abs_w: np.ndarray
    objective: float


def sum_stats(stats) -> EKMStats:
    """Add :class:`EKMStats` from several batches or processes (what an all-reduce would do)."""
    stats = list(stats)
    return EKMStats(*(sum(s[i] for s in stats) for i in range(4)))


def _boltzmann(D: np.ndarray, alpha: float):
    """EKM weights from cluster-major half squared distances ``D`` (K, m), modified in place.

    Returns ``(W, U, h)``: weights ``w = u (1 − α (d − h))`` (K, m), memberships
    ``u = softmax(−α d)`` (K, m) and the Boltzmann operator ``h`` (m,).
    """
    dmin = D.min(axis=0)
    # Subtracting each sample's minimum leaves u, w and h − dmin unchanged and keeps exp ≤ 1.
    D -= dmin
    U = np.multiply(D, -alpha)
    np.exp(U, out=U)
    U /= U.sum(axis=0)
    h_shift = np.einsum("km,km->m", U, D)
    D -= h_shift
    D *= -alpha
    D += 1.0
    D *= U
    return D, U, h_shift + dmin


def ekm_weights(d, alpha: float):
    """EKM weights, memberships and objective terms for a block of distances.

    Args:
        d: half squared distances ``d_kn = ½‖x_n − c_k‖²``, shape (n_samples, n_clusters).
        alpha: the paper's α (> 0).

    Returns:
        ``(W, U, h)``: ``W`` (n_samples, n_clusters) with ``w_kn = ∂h_n/∂d_kn``, rows summing
        to 1; ``U`` the softmax memberships; ``h`` (n_samples,) the Boltzmann operator.

    Example:
        >>> W, U, h = ekm_weights(np.array([[0.0, 1.0, 9.0]]), alpha=1.0)
        >>> bool(W[0, 2] < 0), round(float(W.sum()), 6)
        (True, 1.0)
    """
    D = np.array(np.asarray(d, dtype=np.float64).T, order="C")
    W, U, h = _boltzmann(D, float(alpha))
    return W.T.copy(), U.T.copy(), h


def _default_chunk(n_features: int, n_clusters: int, itemsize: int) -> int:
    # About 4 MB per (chunk × max(d, K)) block: large enough for BLAS, small enough for cache.
    return int(np.clip((1 << 22) // (itemsize * max(n_features, n_clusters, 1)), 1024, 65536))


class _NumpyBackend:
    """Passes over X with numpy; centroids go in and statistics come out in float64.

    ``kernel(D, param) -> (W, U, h)`` turns cluster-major half squared distances into weights,
    memberships and objective terms (EKM's Boltzmann operator by default; baselines pass theirs).
    """

    def __init__(self, X: np.ndarray, chunk_size: int | None = None, n_clusters: int = 8, kernel=None):
        self.X, self.dtype = X, X.dtype
        self.kernel = kernel or _boltzmann
        n, d = X.shape
        self.chunk = chunk_size or _default_chunk(d, n_clusters, X.dtype.itemsize)
        # Distances are computed about the data mean: ‖x‖² − 2x·c + ‖c‖² loses precision when
        # points sit far from the origin, and the centred chunk is reused by both products.
        self.mean = X.mean(axis=0, dtype=np.float64)
        self._mean = self.mean.astype(X.dtype)
        self.xsq_half = np.empty(n, dtype=X.dtype)
        for sl, Xc in self._chunks():
            self.xsq_half[sl] = 0.5 * np.einsum("ij,ij->i", Xc, Xc)
        # mean_n d(x_n, x̄): the data scale used by alpha="dvariance" and by tol.
        self.mean_half_sqdist = float(self.xsq_half.sum(dtype=np.float64) / max(n, 1))

    def _chunks(self, rows=None):
        """``(rows, X[rows] − x̄)`` blocks: all of X in chunks, or the given index array at once."""
        if rows is not None:
            yield rows, self.X[rows] - self._mean
            return
        for s in range(0, self.X.shape[0], self.chunk):
            yield slice(s, s + self.chunk), self.X[s : s + self.chunk] - self._mean

    def _distances(self, sl, Xc, Cc, csq_half):
        # One matrix product per chunk: d = ½‖x‖² − x·c + ½‖c‖², clipped at 0 against rounding.
        D = Cc @ Xc.T
        D *= -1.0
        D += self.xsq_half[sl]
        D += csq_half[:, None]
        return np.maximum(D, 0.0, out=D)

    def _centred(self, C):
        Cc = (np.asarray(C, dtype=np.float64) - self.mean).astype(self.dtype)
        return Cc, 0.5 * np.einsum("ij,ij->i", Cc, Cc)

    def stats(self, C, alpha: float, rows=None) -> EKMStats:
        """Statistics over all of X, or over ``X[rows]`` (a mini-batch)."""
        Cc, csq = self._centred(C)
        K, d = Cc.shape
        S, N, A, J = np.zeros((K, d)), np.zeros(K), np.zeros(K), 0.0
        for sl, Xc in self._chunks(rows):
            W, _, h = self.kernel(self._distances(sl, Xc, Cc, csq), alpha)
            S += W @ Xc  # one product for all centroids: Σ_n w_kn (x_n − x̄)
            N += W.sum(axis=1, dtype=np.float64)
            A += np.abs(W).sum(axis=1, dtype=np.float64)
            J += float(h.sum(dtype=np.float64))
        return EKMStats(S + N[:, None] * self.mean, N, A, J)

    def assign(self, C, alpha: float | None, weights: bool = False, membership: bool = False):
        """Labels (nearest centroid), objective, and optionally W or U, shape (n, K)."""
        Cc, csq = self._centred(C)
        n = self.X.shape[0]
        labels = np.empty(n, dtype=np.int32)
        out = np.empty((n, Cc.shape[0]), dtype=self.dtype) if (weights or membership) else None
        J = 0.0
        for sl, Xc in self._chunks():
            D = self._distances(sl, Xc, Cc, csq)
            labels[sl] = D.T.argmin(axis=1)
            if alpha is not None:
                W, U, h = self.kernel(D, alpha)
                J += float(h.sum(dtype=np.float64))
                if out is not None:
                    out[sl] = (W if weights else U).T
        return labels, J, out

    def half_sqdist(self, C) -> np.ndarray:
        Cc, csq = self._centred(C)
        out = np.empty((self.X.shape[0], Cc.shape[0]), dtype=self.dtype)
        for sl, Xc in self._chunks():
            out[sl] = self._distances(sl, Xc, Cc, csq).T
        return out


def ekm_sufficient_statistics(X, centers, alpha: float, *, chunk_size: int | None = None) -> EKMStats:
    """``(S, N)`` of one EKM step on a batch, so that ``c_k = ΣS_k / ΣN_k`` over batches/workers.

    Args:
        X: batch, shape (n_samples, n_features), float32 or float64.
        centers: current centroids, shape (n_clusters, n_features).
        alpha: the paper's α (> 0).
        chunk_size: rows per pass (memory ``O(chunk_size × n_clusters)``).

    Returns:
        :class:`EKMStats` (float64).

    Example:
        >>> X = np.array([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0]])
        >>> st = ekm_sufficient_statistics(X, X[[0, 2]], alpha=1.0)
        >>> st.sum_wx.shape, round(float(st.sum_w.sum()), 6)
        ((2, 2), 3.0)
    """
    X = check_array(X, dtype=[np.float64, np.float32])
    centers = check_array(centers, dtype=np.float64)
    with threadpool_limits(limits=1, user_api="blas"):
        return _NumpyBackend(X, chunk_size, centers.shape[0]).stats(centers, float(alpha))


def centroid_step(C, st: EKMStats) -> np.ndarray:
    """Step ``S_k/N_k − c_k`` (= −∇_k J / N_k), guarded where N_k is not clearly positive.

    EKM weights can be negative, so ``N_k`` can approach or cross 0. There the step would be
    huge or point uphill; we take a gradient step of size ``1/(ρ Σ_n|w_kn|)`` instead, which
    keeps the move within the data's extent and still descends.
    """
    floor = _GUARD_RHO * st.sum_abs_w
    denom = np.maximum(st.sum_w, floor)
    denom = np.where(denom > 0, denom, 1.0)  # all-zero weights (α huge, far centroid): no move
    return (st.sum_wx - st.sum_w[:, None] * C) / denom[:, None]


def _degenerate(st: EKMStats) -> np.ndarray:
    return st.sum_w < _GUARD_RHO * st.sum_abs_w


def _run_skm(stats_fn, C0, alpha, max_iter, tol_abs, rise_rtol, accelerate=True, verbose=0):
    """Minimise J from ``C0``; returns ``(C, stats at C, n_iter, converged)``.

    The iteration is the paper's fixed point ``C ← G(C) = S/N``. On soft weights (small α) its
    plain form oscillates with a factor just below −1 (measured: successive steps anti-parallel,
    cos ≈ −0.999, and J creeping up for hundreds of iterations), so it is accelerated with
    Anderson mixing over the last ``_AA_MEMORY`` residuals ``r = G(C) − C``. Every candidate must
    not raise J (h is not concave, so nothing else guarantees it): a rise drops the history and
    falls back to the plain step, halved until J falls. Converged means ``‖r‖² ≤ tol_abs``.
    ``accelerate=False`` runs the plain, unguarded update (for the seed's variant, whose update
    is not a descent step on any objective).
    """
    C = np.array(C0, dtype=np.float64)
    st = stats_fn(C, alpha)
    r = centroid_step(C, st)
    dC, dR = [], []
    eta, converged, n_iter = 1.0, False, 0
    while n_iter < max_iter:
        n_iter += 1
        if float(np.sum(r * r)) <= tol_abs:
            converged = True
            break
        if not accelerate:
            C = C + r
            st = stats_fn(C, alpha)
            r = centroid_step(C, st)
            continue
        if dC and eta == 1.0:
            DC = np.stack([v.ravel() for v in dC], axis=1)
            DR = np.stack([v.ravel() for v in dR], axis=1)
            gamma = np.linalg.lstsq(DR, r.ravel(), rcond=None)[0]
            C_new = C + r - ((DC + DR) @ gamma).reshape(C.shape)
        else:
            C_new = C + eta * r
        st_new = stats_fn(C_new, alpha)
        if not st_new.objective <= st.objective + rise_rtol * abs(st.objective):
            if verbose:
                info(f"iter {n_iter}: objective would rise to {st_new.objective:.6g}; damping")
            if dC:
                dC.clear(), dR.clear()
            else:
                eta *= 0.5
                if eta < _MIN_ETA:
                    break
            continue
        r_new = centroid_step(C_new, st_new)
        dC.append(C_new - C), dR.append(r_new - r)
        if len(dC) > _AA_MEMORY:
            dC.pop(0), dR.pop(0)
        C, st, r, eta = C_new, st_new, r_new, min(1.0, 2.0 * eta)
        if verbose:
            info(f"iter {n_iter}: objective {st.objective:.6g}, residual {float(np.sum(r * r)):.3g}")
    return C, st, n_iter, converged

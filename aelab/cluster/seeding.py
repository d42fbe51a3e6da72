"""Initial centroids for the smooth K-means family, and EKM's default: screened mixed seeding.

Why k-means++ alone is not enough for EKM (measured, ``benchmarks/bench_ekm_seeding.py``):
k-means++ draws seeds with probability ∝ squared distance to the seeds so far, so on a large
cluster with tails many of its seeds are tail points. EKM's good solution on imbalanced data
has one centroid near each small cluster's mean, held there against the repulsion of the large
cluster (weights ``w_kn < 0`` for its far points), and a split of the large cluster is a local
minimum of EKM's objective too; from many k-means++ starts EKM ends in that split. Started at
the true class means it reaches the lowest objective. On some imbalanced 2-D sets only 2–5 % of
k-means++ starts (and of random starts) reach it, so ten k-means++ restarts still miss it.

``init="screen"`` (EKM's default) therefore searches wide and cheaply before it fits:

1. draw ``n_candidates`` seedings, in turn k-means++, uniform random rows, and k-means++ with
   each seed moved to the mean of its 10 nearest rows (towards a density mode: EKM's good
   solution sits near the small clusters' means, and a seed on a tail point often is not in
   its basin). The kinds fail on different sets;
2. refine all of them together by a few plain EKM steps (``c_k ← Σ w x / Σ w``, the paper's
   two-step update) on a subsample of at most ``SCREEN_SUBSAMPLE`` points: one matrix product
   per step for all candidates (cluster-major ``(K, M·m)`` distances, so the Boltzmann kernel
   runs once on all of them);
3. rank the candidates by the objective ``J = Σ_n h_n`` on that subsample and return the
   ``n_init`` best (each then gets a full, accelerated fit).
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import kmeans_plusplus

from aelab.cluster.core import _GUARD_RHO

__all__ = ["init_centers", "screen_seeds", "SCREEN_SUBSAMPLE", "SCREEN_STEPS", "screen_candidates"]

INIT_SUBSAMPLE = 100_000  # k-means++ seeds on at most this many points (O(n) memory otherwise)
SCREEN_SUBSAMPLE = 2048  # rows on which the candidates are refined and ranked
SCREEN_STEPS = 5  # plain EKM steps per candidate before ranking
_LOCAL_NEIGHBOURS = 10  # a "local" candidate moves each k-means++ seed to the mean of this many rows


def screen_candidates(n_init: int) -> int:
    """Seedings drawn by ``init="screen"`` for ``n_init`` full fits: ``max(24, 8 · n_init)``."""
    return max(24, 8 * int(n_init))


def _sample_rows(n: int, m: int, random_state) -> np.ndarray:
    """``m`` distinct row indices of ``n``, sorted, in O(m) (``RandomState.choice`` permutes all n)."""
    rng = np.random.default_rng(random_state.randint(np.iinfo(np.int32).max))
    return np.sort(rng.choice(n, m, replace=False))


def init_centers(X, n_clusters: int, init, random_state) -> np.ndarray:
    """Initial centroids (float64): ``"k-means++"`` (on ≤ 100,000 rows), ``"random"`` rows, or an array."""
    if not isinstance(init, str):
        return np.array(init, dtype=np.float64)
    n = X.shape[0]
    if init == "random":
        return X[random_state.choice(n, n_clusters, replace=False)].astype(np.float64)
    Xs = np.asarray(X) if n <= INIT_SUBSAMPLE else X[_sample_rows(n, INIT_SUBSAMPLE, random_state)]
    centers, _ = kmeans_plusplus(Xs, n_clusters, random_state=random_state)
    return centers.astype(np.float64)


def _local_means(X, C, m):
    """Move each seed to the mean of its ``m`` nearest rows (towards the local density mode)."""
    d = ((X[None, :, :] - C[:, None, :]) ** 2).sum(-1)
    idx = np.argpartition(d, m - 1, axis=1)[:, :m]
    return X[idx].mean(axis=1)


def _d2_sampling(X, xsq, n_clusters, random_state):
    """Plain k-means++ (Arthur & Vassilvitskii 2007): each next seed drawn ∝ squared distance.

    One draw per seed (scikit-learn's greedy variant tries 2 + log K and costs ~1 ms a call,
    too much for dozens of candidates); ``xsq`` is ``‖x‖²`` per row.
    """
    n = X.shape[0]
    idx = [random_state.randint(n)]
    d2 = np.maximum(xsq - 2.0 * X @ X[idx[0]] + xsq[idx[0]], 0.0)
    for _ in range(1, n_clusters):
        total = d2.sum()
        if total > 0:
            i = int(np.searchsorted(np.cumsum(d2), random_state.rand() * total))
        else:
            i = random_state.randint(n)
        idx.append(min(i, n - 1))
        np.minimum(d2, np.maximum(xsq - 2.0 * X @ X[idx[-1]] + xsq[idx[-1]], 0.0), out=d2)
    return X[idx]


def _candidate(X, xsq, n_clusters, kind, random_state):
    """One seeding of the given kind ("k-means++", "random" or "local"), float64 (K, d)."""
    if kind == "random":
        return X[random_state.choice(X.shape[0], n_clusters, replace=False)]
    C = _d2_sampling(X, xsq, n_clusters, random_state)
    return _local_means(X, C, min(X.shape[0], _LOCAL_NEIGHBOURS)) if kind == "local" else C


def _batched_stats(Xc, xsq_half, C, param, kernel):
    """Statistics of M candidate centroid sets at once. ``C`` (M, K, d) → S (M, K, d), N, A (M, K), J (M,)."""
    M, K, d = C.shape
    m = Xc.shape[0]
    # cluster-major: row k·M + j is candidate j's c_k
    Cf = np.ascontiguousarray(C.transpose(1, 0, 2).reshape(K * M, d), dtype=Xc.dtype)
    D = Cf @ Xc.T
    D *= -1.0
    D += xsq_half
    D += 0.5 * np.einsum("ij,ij->i", Cf, Cf)[:, None]
    np.maximum(D, 0.0, out=D)
    W, _, h = kernel(D.reshape(K, M * m), Xc.dtype.type(param))  # the columns are (candidate, point) pairs
    W = W.reshape(K, M, m)
    S = (W.reshape(K * M, m) @ Xc).reshape(K, M, d).transpose(1, 0, 2)
    N = W.sum(axis=2, dtype=np.float64).T
    A = np.abs(W).sum(axis=2, dtype=np.float64).T
    return S.astype(np.float64), N, A, h.reshape(M, m).sum(axis=1, dtype=np.float64)


def screen_seeds(X, n_clusters: int, param, n_keep: int, random_state, kernel, n_candidates: int | None = None,
                 n_steps: int = SCREEN_STEPS, subsample: int = SCREEN_SUBSAMPLE) -> list:
    """The ``n_keep`` most promising of ``n_candidates`` mixed seedings (see the module docstring).

    Args:
        X: data (n_samples, n_features).
        n_clusters: K.
        param: the kernel's parameter (EKM: the paper's α, already resolved).
        n_keep: how many seedings to return (the estimator's ``n_init``).
        random_state: a ``numpy.random.RandomState``.
        kernel: ``(D, param) -> (W, U, h)`` on cluster-major half squared distances.
        n_candidates: seedings drawn (default :func:`screen_candidates`).
        n_steps: plain two-step updates before ranking.
        subsample: rows on which the candidates are drawn, refined and ranked.

    Returns:
        ``n_keep`` arrays (n_clusters, n_features), float64, best screened objective first.
        Cost: ``n_candidates × n_steps`` passes over at most ``SCREEN_SUBSAMPLE`` rows, done
        as ``n_steps`` matrix products of ``(K · n_candidates) × d`` by ``d × m``.
    """
    M = n_candidates or screen_candidates(n_keep)
    n = X.shape[0]
    rows = np.arange(n) if n <= subsample else _sample_rows(n, subsample, random_state)
    Xs = np.asarray(X[rows], dtype=np.float64)
    mean = Xs.mean(axis=0)  # refined in float32 about the mean (ranking only: halves the cost of exp)
    Xc = Xs - mean
    xsq_half = 0.5 * np.einsum("ij,ij->i", Xc, Xc)
    kinds = ("k-means++", "random", "local")
    C = np.stack([_candidate(Xc, 2.0 * xsq_half, n_clusters, kinds[j % 3], random_state) for j in range(M)])
    Xc, C, xsq_half = Xc.astype(np.float32), C.astype(np.float32), xsq_half.astype(np.float32)
    for _ in range(n_steps):
        S, N, A, _ = _batched_stats(Xc, xsq_half, C, param, kernel)
        denom = np.maximum(N, _GUARD_RHO * A)
        denom = np.where(denom > 0, denom, 1.0)
        C = (C + (S - N[..., None] * C) / denom[..., None]).astype(np.float32)
    J = _batched_stats(Xc, xsq_half, C, param, kernel)[3].astype(np.float64)
    J = np.where(np.isfinite(J), J, np.inf)
    order = np.argsort(J, kind="stable")[: max(1, int(n_keep))]
    return [C[j].astype(np.float64) + mean for j in order]

"""EKM across processes with ``torch.distributed``: shard the points, all-reduce the sums.

Every EKM update is a sum over points of per-cluster statistics (:class:`~aelab.cluster.EKMStats`:
``Σ_n w_kn x_n``, ``Σ_n w_kn``, ``Σ_n |w_kn|`` and the objective ``Σ_n h_n``; Y. He,
arXiv:2402.14490, the centroid step ``c_k = Σ w x / Σ w``). With the points split across ranks,
each rank computes its shard's statistics and one ``all_reduce`` (SUM, float64, one flat tensor)
per iteration gives every rank the full sums, so every rank takes the same step and the
centroids equal one process's (up to the order of floating-point additions).

Used by ``EquilibriumKMeans(distributed=True)`` (and the semi-supervised estimator) when a
process group is initialised (``torch.distributed.init_process_group``; gloo on CPU, nccl on
GPU). What else is made global: the data scale (``alpha="dvariance"``, ``tol``) from all-reduced
``(n, Σx, Σ ½‖x‖²)``, and the starting centroids, computed on rank 0 (from its shard) and
broadcast. ``labels_`` and ``weights_`` are for the local shard; ``objective_`` is global.
"""

from __future__ import annotations

import numpy as np

from aelab.cluster.core import EKMStats

__all__ = ["is_distributed", "allreduce_sum", "allreduce_stats", "global_mean_half_sqdist", "broadcast_array"]


def is_distributed() -> bool:
    """True when torch.distributed is available and a process group is initialised."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return False
    return dist.is_available() and dist.is_initialized()


def allreduce_sum(values: np.ndarray) -> np.ndarray:
    """Sum a float64 array over all ranks (one collective call)."""
    import torch
    import torch.distributed as dist

    t = torch.as_tensor(np.ascontiguousarray(values, dtype=np.float64)).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.numpy()


def allreduce_stats(st: EKMStats) -> EKMStats:
    """:class:`EKMStats` summed over all ranks: one flat ``all_reduce`` of ``K·d + 2K + 1`` floats."""
    K, d = st.sum_wx.shape
    flat = allreduce_sum(np.concatenate([st.sum_wx.ravel(), st.sum_w, st.sum_abs_w, [st.objective]]))
    return EKMStats(flat[: K * d].reshape(K, d), flat[K * d : K * d + K], flat[K * d + K : K * d + 2 * K],
                    float(flat[-1]))


def global_mean_half_sqdist(X) -> float:
    """``mean_n ½‖x_n − x̄‖²`` over the points of all ranks (x̄ the global mean)."""
    X = np.asarray(X)
    n, d = X.shape
    local = np.concatenate([[n], X.sum(axis=0, dtype=np.float64),
                            [0.5 * float(np.einsum("ij,ij->", X, X, dtype=np.float64))]])
    tot = allreduce_sum(local)
    N = max(tot[0], 1.0)
    mean = tot[1 : 1 + d] / N
    return float((tot[-1] - 0.5 * N * mean @ mean) / N)


def broadcast_array(values: np.ndarray, src: int = 0) -> np.ndarray:
    """Rank ``src``'s float64 array on every rank (same shape on all ranks)."""
    import torch
    import torch.distributed as dist

    t = torch.as_tensor(np.ascontiguousarray(values, dtype=np.float64)).clone()
    dist.broadcast(t, src=src)
    return t.numpy()


def ekm_statistics_allreduced(stats_fn):
    """Wrap ``(C, α) -> EKMStats`` on the local shard into the sum over all ranks."""

    def stats(C, alpha):
        return allreduce_stats(stats_fn(C, alpha))

    return stats

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
``(n, Σx, Σ ½‖x‖²)``, and the starting centroids: seeding reads the points through
:class:`GatheredRows`, which shows the shards as one array of all ``n`` points (in rank order)
and fetches only the rows the seeding asks for (at most ``INIT_SUBSAMPLE`` for k-means++,
``SCREEN_SUBSAMPLE`` for the screen), so the starts, and the random state after them, are
exactly one process's; rank 0's are broadcast so every rank starts alike. ``labels_`` and
``weights_`` are for the local shard (:func:`gather_rows` joins them); ``objective_`` is global.
"""

from __future__ import annotations

import numpy as np

from aelab.cluster.core import EKMStats

__all__ = ["is_distributed", "allreduce_sum", "allreduce_stats", "global_mean_half_sqdist", "broadcast_array",
           "GatheredRows", "shard_bounds", "gather_rows", "allgather_objects", "fit_on_shard"]


def is_distributed() -> bool:
    """True when torch.distributed is available and a process group is initialised."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return False
    return dist.is_available() and dist.is_initialized()


def _tensor(values: np.ndarray):
    """A float64 copy of ``values`` on the device the group's backend reduces on (nccl: this rank's GPU)."""
    import torch
    import torch.distributed as dist

    t = torch.as_tensor(np.ascontiguousarray(values, dtype=np.float64)).clone()
    return t.cuda() if dist.get_backend() == "nccl" else t


def allreduce_sum(values: np.ndarray) -> np.ndarray:
    """Sum a float64 array over all ranks (one collective call)."""
    import torch.distributed as dist

    t = _tensor(values)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().numpy()


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
    import torch.distributed as dist

    t = _tensor(values)
    dist.broadcast(t, src=src)
    return t.cpu().numpy()


def ekm_statistics_allreduced(stats_fn):
    """Wrap ``(C, α) -> EKMStats`` on the local shard into the sum over all ranks."""

    def stats(C, alpha):
        return allreduce_stats(stats_fn(C, alpha))

    return stats


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def _offsets(n_local: int) -> np.ndarray:
    """``offsets[r]``: the global index of rank r's first row (shards in rank order); length world + 1."""
    rank, world = _rank_world()
    counts = np.zeros(world)
    counts[rank] = n_local
    return np.concatenate([[0], np.cumsum(allreduce_sum(counts))]).astype(np.int64)


class GatheredRows:
    """Every rank's shard seen as one ``(n, d)`` array of all the points, rows in rank order.

    Indexing with rows (an index array, a slice or ``np.asarray``) is a collective call: every
    rank must ask for the same rows, and each gets them all (each rank fills the rows it holds,
    one ``all_reduce`` adds the blocks; exact, as every row comes from one rank). Seeding draws
    its rows through this, so it sees what one process holding all the points would see.
    """

    def __init__(self, X_local):
        self.local = np.asarray(X_local)
        self.offsets = _offsets(self.local.shape[0])
        self.start = int(self.offsets[_rank_world()[0]])
        self.shape = (int(self.offsets[-1]), self.local.shape[1])
        self.dtype, self.ndim = self.local.dtype, 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows):
        rows = np.arange(self.shape[0])[rows]
        scalar = rows.ndim == 0
        rows = np.atleast_1d(rows)
        block = np.zeros((len(rows), self.shape[1]))
        mine = (rows >= self.start) & (rows < self.start + self.local.shape[0])
        block[mine] = self.local[rows[mine] - self.start]
        out = allreduce_sum(block).astype(self.dtype)
        return out[0] if scalar else out

    def __array__(self, dtype=None, copy=None):
        out = self[np.arange(self.shape[0])]
        return out if dtype is None else out.astype(dtype)


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """``(start, stop)``: rank's contiguous block of ``n`` rows (``np.array_split``'s blocks)."""
    size, extra = divmod(n, world)
    start = rank * size + min(rank, extra)
    return start, start + size + (rank < extra)


def gather_rows(local: np.ndarray) -> np.ndarray:
    """Every rank's rows of ``local`` (same trailing shape and dtype on all ranks), joined in rank order."""
    local = np.asarray(local)
    offsets = _offsets(local.shape[0])
    rank = _rank_world()[0]
    full = np.zeros((int(offsets[-1]), *local.shape[1:]))
    full[offsets[rank] : offsets[rank + 1]] = local
    return allreduce_sum(full).astype(local.dtype)


def allgather_objects(obj) -> list:
    """Every rank's (picklable) ``obj``, in rank order."""
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def fit_on_shard(est, X, y=None, bounds: tuple[int, int] | None = None):
    """Fit ``est`` across the process group as one process would fit it on all of ``X``; returns ``est``.

    For a caller whose every rank holds all the points (say, an embeddings file each rank reads):
    an estimator with a ``distributed`` parameter fits on this rank's rows ``X[start:stop]``
    (``bounds``; default :func:`shard_bounds`) with its sums all-reduced, then ``labels_`` and
    ``weights_`` are gathered so that they cover all of X; any other estimator fits all of X on
    every rank (the same result everywhere, no speed-up).
    """
    if "distributed" not in est.get_params():
        return est.fit(X) if y is None else est.fit(X, y)
    rank, world = _rank_world()
    start, stop = bounds or shard_bounds(len(X), rank, world)
    est.set_params(distributed=True)
    est.fit(X[start:stop]) if y is None else est.fit(X[start:stop], np.asarray(y)[start:stop])
    est.labels_ = gather_rows(est.labels_)
    if getattr(est, "weights_", None) is not None:
        est.weights_ = gather_rows(est.weights_)
    return est.set_params(distributed=False)  # fitted: it now describes all the points

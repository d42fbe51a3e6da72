"""PyTorch backend for :class:`~aelab.cluster.EquilibriumKMeans` (CPU and CUDA).

Implements the same passes as the numpy backend in :mod:`aelab.cluster.core` (half squared
distances by one matrix product about the data mean, the row-minimum shift before ``exp``,
weights ``w = u (1 − α (d − h))``, statistics ``S = W X`` and ``N = Σ w``) on a torch device.
X is moved to the device once; only the small ``(K, d)`` statistics come back each iteration,
as float64 numpy arrays, so the outer loop (acceleration, guards, convergence) is shared.

Example:
    >>> import numpy as np
    >>> from aelab.cluster import EquilibriumKMeans
    >>> X = np.random.default_rng(0).normal(size=(200, 2))
    >>> EquilibriumKMeans(3, backend="torch", random_state=0).fit(X).cluster_centers_.shape
    (3, 2)
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from aelab.cluster.core import EKMStats, _default_chunk
from aelab.devices import resolve_device as _resolve

__all__ = ["TorchBackend", "resolve_device"]


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """``"auto"`` picks CUDA when available (else the CPU); an unavailable CUDA device is a ValueError
    (`aelab.devices.resolve_device`, the one resolver; no MPS here: the backend runs float64)."""
    return _resolve(device, mps=False)


def _boltzmann(D: torch.Tensor, alpha: float):
    """Weights, memberships and h from cluster-major distances ``D`` (K, m); D is overwritten."""
    dmin = D.min(dim=0).values
    D -= dmin  # shift by the per-sample minimum: exp stays ≤ 1, results unchanged
    U = torch.softmax(D * -alpha, dim=0)
    h_shift = (U * D).sum(dim=0)
    D -= h_shift
    D.mul_(-alpha).add_(1.0).mul_(U)
    return D, U, h_shift + dmin


class TorchBackend:
    """EKM passes over X (n, d) held as a tensor on ``device`` in X's dtype (float32/float64)."""

    def __init__(self, X: np.ndarray, device="cpu", chunk_size: int | None = None, n_clusters: int = 8):
        self.device = resolve_device(device)
        self.dtype = X.dtype
        with warnings.catch_warnings():  # a read-only array (memmap) is only ever read here
            warnings.simplefilter("ignore", UserWarning)
            self.X = torch.as_tensor(X, device=self.device)
        n, d = X.shape
        big = 1 << 18 if self.device.type == "cuda" else 0  # a GPU wants large blocks
        self.chunk = chunk_size or max(_default_chunk(d, n_clusters, X.dtype.itemsize), big)
        self.mean = self.X.mean(dim=0, dtype=torch.float64).cpu().numpy()
        self._mean = torch.as_tensor(self.mean, device=self.device, dtype=self.X.dtype)
        self.xsq_half = torch.empty(n, dtype=self.X.dtype, device=self.device)
        for sl, Xc in self._chunks():
            self.xsq_half[sl] = 0.5 * (Xc * Xc).sum(dim=1)
        self.mean_half_sqdist = float(self.xsq_half.sum(dtype=torch.float64)) / max(n, 1)

    def _chunks(self, rows=None):
        if rows is not None:
            rows = torch.as_tensor(rows, device=self.device)
            yield rows, self.X[rows] - self._mean
            return
        for s in range(0, self.X.shape[0], self.chunk):
            yield slice(s, s + self.chunk), self.X[s : s + self.chunk] - self._mean

    def _centred(self, C):
        Cc = torch.as_tensor(np.asarray(C, dtype=np.float64) - self.mean, device=self.device).to(self.X.dtype)
        return Cc, 0.5 * (Cc * Cc).sum(dim=1)

    def _distances(self, sl, Xc, Cc, csq_half):
        D = torch.addmm(csq_half[:, None], Cc, Xc.T, alpha=-1.0)  # ½‖c‖² − c·x
        D += self.xsq_half[sl]
        return D.clamp_(min=0.0)

    @torch.no_grad()
    def stats(self, C, alpha: float, rows=None) -> EKMStats:
        Cc, csq = self._centred(C)
        K, d = Cc.shape
        f64 = dict(dtype=torch.float64, device=self.device)
        S, N, A, J = torch.zeros(K, d, **f64), torch.zeros(K, **f64), torch.zeros(K, **f64), torch.zeros((), **f64)
        for sl, Xc in self._chunks(rows):
            W, _, h = _boltzmann(self._distances(sl, Xc, Cc, csq), alpha)
            S += W @ Xc
            N += W.sum(dim=1, dtype=torch.float64)
            A += W.abs().sum(dim=1, dtype=torch.float64)
            J += h.sum(dtype=torch.float64)
        S, N, A = S.cpu().numpy(), N.cpu().numpy(), A.cpu().numpy()
        return EKMStats(S + N[:, None] * self.mean, N, A, float(J))

    @torch.no_grad()
    def assign(self, C, alpha: float | None, weights: bool = False, membership: bool = False):
        Cc, csq = self._centred(C)
        labels, blocks, J = [], [], 0.0
        for sl, Xc in self._chunks():
            D = self._distances(sl, Xc, Cc, csq)
            labels.append(D.argmin(dim=0).to(torch.int32).cpu())
            if alpha is not None:
                W, U, h = _boltzmann(D, alpha)
                J += float(h.sum(dtype=torch.float64))
                if weights or membership:
                    blocks.append((W if weights else U).T.cpu())
        out = torch.cat(blocks).numpy() if blocks else None
        return torch.cat(labels).numpy(), J, out

    @torch.no_grad()
    def half_sqdist(self, C) -> np.ndarray:
        Cc, csq = self._centred(C)
        return torch.cat([self._distances(sl, Xc, Cc, csq).T.cpu() for sl, Xc in self._chunks()]).numpy()

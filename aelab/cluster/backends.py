"""Choosing the backend of the smooth K-means passes: numpy (:mod:`aelab.cluster.core`) or torch.

Kept apart from both so that neither imports the other: :mod:`aelab.cluster.torch_backend`
needs :class:`~aelab.cluster.core.EKMStats`, and this module needs both backends. torch is
imported only when ``backend="torch"`` is asked for.
"""

from __future__ import annotations

from aelab.cluster.core import _boltzmann, _NumpyBackend

__all__ = ["make_backend"]


def make_backend(X, backend: str, device: str, chunk_size, n_clusters: int, kernel=None):
    """The object whose ``stats``/``assign``/``half_sqdist`` passes run over X (numpy or torch)."""
    if backend == "numpy":
        if str(device) != "cpu":
            raise ValueError(f"backend='numpy' runs on the CPU only, got device={device!r}.")
        return _NumpyBackend(X, chunk_size, n_clusters, kernel)
    if backend == "torch":
        if kernel not in (None, _boltzmann):
            raise ValueError("backend='torch' implements EKM only; use backend='numpy'.")
        from aelab.cluster.torch_backend import TorchBackend

        return TorchBackend(X, device=device, chunk_size=chunk_size, n_clusters=n_clusters)
    raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}.")

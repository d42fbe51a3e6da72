"""Shared by the clustering tests: one BLAS/OpenMP thread."""

from __future__ import annotations

import pytest
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True)
def one_thread():
    """KMeans' OpenMP and BLAS threads stall when the 2 CI cores are shared (measured 60x)."""
    with threadpool_limits(limits=1):
        yield

"""Shared fixtures: an isolated image cache for every test and a small demo data set."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def aelab_cache_dir(tmp_path_factory, monkeypatch):
    """Point the image cache at a fresh folder, so no test reads another's (or the user's) cache."""
    cache = tmp_path_factory.mktemp("aelab_cache")
    monkeypatch.setenv("AELAB_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A small demo data set in the seed layout (10 digits x 5 labelled, 100 unlabelled, 50 test,
    20 normal "0"s and 20 anomalous digits, 32x32 grayscale PNGs). Treat it as read-only."""
    from aelab.data import make_demo_data

    root = tmp_path_factory.mktemp("demo") / "data"
    make_demo_data(
        root, seed=0, labelled_per_class=5, n_unlabelled=100, n_test=50, image_size=32,
        n_anomaly_normal=20, n_anomalous=20,
    )
    return root

"""One device resolver: ``cuda:N`` reaches Lightning Fabric as GPU N, from the CLI's flags on (CUDA mocked)."""

from __future__ import annotations

import pytest
import torch

from aelab.devices import fabric_device, resolve_device
from aelab.errors import AelabError


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def test_cuda_index_resolves_to_that_gpu(two_gpus):
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda")
    assert fabric_device("cuda:1") == ("cuda", [1])
    assert fabric_device("cuda", 2) == ("cuda", 2)


def test_a_gpu_past_the_last_or_none_at_all_is_one_line(two_gpus, monkeypatch):
    with pytest.raises(AelabError, match="2 CUDA GPU"):
        resolve_device("cuda:2")
    with pytest.raises(AelabError, match="--devices 1"):
        fabric_device("cuda:1", 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU"):  # a ParameterError is a ValueError too
        resolve_device("cuda:0")
    assert resolve_device("auto", mps=False) == torch.device("cpu")


class _Stop(Exception):
    pass


def test_cli_device_cuda_1_reaches_fabric_as_accelerator_cuda_devices_1(two_gpus, monkeypatch, tmp_path):
    import lightning

    from aelab.cli.main import main

    seen = {}

    def fake_fabric(**kwargs):
        seen.update(kwargs)
        raise _Stop  # no CUDA is started

    monkeypatch.setattr(lightning, "Fabric", fake_fabric)
    normal = tmp_path / "normal"
    normal.mkdir()
    with pytest.raises(_Stop):
        main(["anomaly", "fit", "--normal", str(normal), "--device", "cuda:1", "--out", str(tmp_path / "run")])
    assert seen["accelerator"] == "cuda" and seen["devices"] == [1] and seen["precision"] == "bf16-mixed"


def test_kmeans_torch_backend_takes_cuda_n(two_gpus):
    from aelab.cluster.torch_backend import resolve_device as backend_device
    from aelab.train.inference import pick_device

    assert backend_device("cuda:1") == pick_device("cuda:1") == torch.device("cuda", 1)


def test_cluster_takes_a_cuda_index_to_the_torch_backend(two_gpus):
    """`aelab cluster --device cuda:1`: EKM's torch backend runs on GPU 1 (no Fabric for one process)."""
    from aelab.cluster.study import ClusterConfig, _launch

    fabric, estimator = _launch(ClusterConfig(input="emb.npy", device="cuda:1"), n_samples=100, K=3)
    assert fabric is None and estimator == dict(backend="torch", device="cuda:1")
    assert _launch(ClusterConfig(input="emb.npy", device="cpu"), n_samples=100, K=3) == (None, {})

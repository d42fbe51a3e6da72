"""``predict`` and ``embed`` under ``--devices 2`` (two CPU processes over gloo) equal one process, byte for byte."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aelab.data import Preprocessing
from aelab.errors import AelabError
from aelab.models import build_model, preset_config
from aelab.train import PredictConfig, predict, save_checkpoint
from aelab.train.engine import shared_run_dir
from aelab.train.inference import shard_range

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_and_images(tmp_path_factory):
    base = tmp_path_factory.mktemp("dist")
    torch.manual_seed(0)
    cfg = preset_config("tiny", num_classes=3)
    save_checkpoint(base / "m.ckpt", model_config=cfg.to_dict(), preprocessing=Preprocessing(32, 3).to_dict(),
                    classes=["a", "b", "c"], state_dict=build_model(cfg).state_dict())
    rng = np.random.default_rng(0)
    folder = base / "images"
    folder.mkdir()
    for i in range(45):  # 45 = 2 full batches of 16 on rank 0 + 13 on rank 1: a short last shard
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "7.png").write_bytes(b"")  # skipped by every rank alike
    return base / "m.ckpt", folder


def _cli(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", AELAB_CACHE_DIR=str(cache))
    return subprocess.run([sys.executable, "-m", "aelab.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("n, batch, world", [(45, 16, 2), (5, 16, 2), (100, 7, 3), (0, 4, 2), (16, 16, 4)])
def test_shards_are_contiguous_whole_batches_covering_every_row_once(n, batch, world):
    ranges = [shard_range(n, batch, r, world) for r in range(world)]
    rows = [i for start, stop, _ in ranges for i in range(start, stop)]
    assert rows == list(range(n))
    block = ranges[0][2]
    assert block % batch == 0
    assert all(start == min(n, r * block) for r, (start, _, _) in enumerate(ranges))


@pytest.mark.slow
def test_predict_and_embed_with_two_processes_equal_one_process_byte_for_byte(model_and_images, tmp_path,
                                                                              aelab_cache_dir):
    ckpt, folder = model_and_images
    common = ["--model", str(ckpt), "--images", str(folder), "--device", "cpu", "--batch_size", "16"]
    with pytest.warns(UserWarning, match="skipped 1"):
        one = predict(PredictConfig(model=str(ckpt), images=str(folder), device="cpu", batch_size=16,
                                    probabilities=True, out=str(tmp_path / "p1")))
    res = _cli("predict", *common, "--devices", "2", "--probabilities", "--out", str(tmp_path / "p2"), cwd=tmp_path,
               cache=aelab_cache_dir)
    assert res.returncode == 0, res.stderr
    two = tmp_path / "p2"
    # (the in-process run still holds its run-folder lock file until this process ends)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir() if p.name != ".aelab.lock")
    for name in ("predictions.csv", "probabilities.csv", "metrics.json"):
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    assert res.stderr.count("[predict] 44 predictions") == 1  # rank 0 alone reports and writes

    # Embeddings are floats: the reference runs under the same thread settings (one thread, as each rank),
    # since a convolution may sum in another order with more threads.
    ref = _cli("embed", *common, "--devices", "1", "--pooling", "flatten", "--out", str(tmp_path / "e1"), cwd=tmp_path,
               cache=aelab_cache_dir)
    assert ref.returncode == 0 and "skipped 1" in ref.stderr, ref.stderr
    one = tmp_path / "e1"
    res = _cli("embed", *common, "--devices", "2", "--pooling", "flatten", "--out", str(tmp_path / "e2"), cwd=tmp_path,
               cache=aelab_cache_dir)
    assert res.returncode == 0, res.stderr
    for name in ("embeddings.npy", "embeddings.csv"):
        assert (tmp_path / "e2" / name).read_bytes() == (one / name).read_bytes(), name


class _StubFabric:
    """Rank ``rank`` of ``world``; ``broadcast`` returns what rank 0 sent (``sent``, or the caller's own on rank 0)."""

    def __init__(self, rank, world, sent=None):
        self.global_rank, self.world_size, self.sent = rank, world, sent

    def broadcast(self, obj, src=0):
        return obj if self.global_rank == src else self.sent


def test_rank_0_alone_creates_the_run_folder_and_a_refusal_stops_every_rank(tmp_path):
    made = shared_run_dir(_StubFabric(0, 2), tmp_path / "run", "predict")
    assert made == tmp_path / "run" and made.is_dir()
    # Rank 1 creates nothing: it takes rank 0's path.
    stub = _StubFabric(1, 2, ("ok", str(tmp_path / "elsewhere")))
    assert shared_run_dir(stub, None, "predict") == tmp_path / "elsewhere"
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "runs").exists()
    (made / "config.yaml").write_text("seed: 0\n")  # a finished run: rank 0 refuses it ...
    with pytest.raises(AelabError, match="run"):
        shared_run_dir(_StubFabric(0, 2), made, "predict")
    with pytest.raises(AelabError, match="already holds"):  # ... and the other ranks raise rank 0's message
        shared_run_dir(_StubFabric(1, 2, ("error", f"{made} already holds a run")), made, "predict")

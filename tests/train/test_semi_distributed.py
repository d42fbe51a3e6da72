"""FlexMatch's per-image memory and distribution alignment over 2 processes (gloo) equal one process."""

from __future__ import annotations

import os

import numpy as np
import torch

from aelab.train.semi import CurriculumThresholds, DistributionAlignment
from tests.processes import run_processes

N, K, STEPS, B = 40, 4, 6, 8  # each step: B images per process, 2B in all


def _batches():
    """Per step: the rows, confidences, pseudo-labels and probabilities of all 2B images (rank r holds half r)."""
    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        rows = rng.choice(N, size=2 * B, replace=False)
        logits = rng.normal(size=(2 * B, K)) * 3
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        yield (torch.tensor(rows), torch.tensor(probs.max(1), dtype=torch.float32),
               torch.tensor(probs.argmax(1)), torch.tensor(probs, dtype=torch.float32))


def _replay(part):
    ct, da = CurriculumThresholds(N, K, 0.8), DistributionAlignment(torch.tensor([4.0, 3.0, 2.0, 1.0]), momentum=0.5)
    thresholds = []
    for rows, conf, pseudo, probs in _batches():
        thresholds.append(ct.thresholds())
        ct.update(rows[part], conf[part], pseudo[part])
        aligned = da(probs[part])
    return torch.stack(thresholds).numpy(), ct.latest.numpy(), da.running.numpy(), aligned.numpy()


def _worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        thresholds, latest, running, aligned = _replay(slice(rank * B, (rank + 1) * B))
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), thresholds=thresholds, latest=latest, running=running,
                 aligned=aligned)
    finally:
        dist.destroy_process_group()


def test_two_processes_remember_and_align_as_one(tmp_path):
    run_processes(_worker, (2, str(tmp_path / "init"), str(tmp_path)), "FlexMatch", timeout=120)
    thresholds, latest, running, aligned = _replay(slice(None))  # one process, all 2B images per step
    assert (latest >= 0).sum() > N // 4 and thresholds[-1].max() > 0  # the memory really filled up
    for r in range(2):
        got = np.load(tmp_path / f"rank{r}.npz")
        np.testing.assert_array_equal(got["latest"], latest)
        np.testing.assert_allclose(got["thresholds"], thresholds, atol=1e-6)
        np.testing.assert_allclose(got["running"], running, atol=1e-6)
        # Each process aligns its own images with the shared running average.
        np.testing.assert_allclose(got["aligned"], aligned[r * B:(r + 1) * B], atol=1e-6)

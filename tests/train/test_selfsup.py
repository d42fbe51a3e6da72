"""VICReg's loss against a reference written with plain loops from Bardes, Ponce & LeCun (ICLR 2022).

The reference follows the paper's Eqs. (1)-(6) term by term, with the two constant factors of the authors'
implementation (facebookresearch/vicreg, ``main_vicreg.py``): the invariance is also divided by d, and the
variance term is the mean of the two branches (the paper's Eq. (6) sums them).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from aelab.train.selfsup import make_projector, vicreg_loss
from tests.processes import run_processes


def _std(column: list[float], eps: float) -> float:
    """Eq. (2): S(x, eps) = sqrt(Var(x) + eps), with the unbiased variance."""
    n = len(column)
    mean = sum(column) / n
    return math.sqrt(sum((x - mean) ** 2 for x in column) / (n - 1) + eps)


def _reference(z1: list, z2: list, lam=25.0, mu=25.0, nu=1.0, gamma=1.0, eps=1e-4) -> dict:
    """The loss and its terms for two views given as lists of n rows of d numbers."""
    n, d = len(z1), len(z1[0])

    def v(z):  # Eq. (1): hinge on the standard deviation of every dimension, averaged over the d dimensions
        return sum(max(0.0, gamma - _std([z[i][j] for i in range(n)], eps)) for j in range(d)) / d

    def c(z):  # Eqs. (3)-(4): squared off-diagonal entries of the covariance matrix, divided by d
        mean = [sum(z[i][j] for i in range(n)) / n for j in range(d)]
        total = 0.0
        for a in range(d):
            for b in range(d):
                if a != b:
                    cov = sum((z[i][a] - mean[a]) * (z[i][b] - mean[b]) for i in range(n)) / (n - 1)
                    total += cov**2
        return total / d

    # Eq. (5), the mean squared distance of the pairs, also divided by d as in the authors' code
    s = sum(sum((z1[i][j] - z2[i][j]) ** 2 for j in range(d)) for i in range(n)) / n / d
    var = (v(z1) + v(z2)) / 2  # the authors' code: the mean of the two branches
    cov = c(z1) + c(z2)
    return {"loss": lam * s + mu * var + nu * cov, "invariance": s, "variance": var, "covariance": cov}


def test_loss_and_its_terms_equal_the_reference():
    rng = np.random.default_rng(0)
    for scale in (0.1, 1.0, 3.0):  # all dimensions under the hinge, some, none
        z1 = rng.normal(size=(24, 6)) * scale
        z2 = z1 + rng.normal(size=(24, 6)) * 0.3
        got = vicreg_loss(torch.tensor(z1), torch.tensor(z2))
        ref = _reference(z1.tolist(), z2.tolist())
        for name, value in ref.items():
            assert abs(float(got[name]) - value) < 1e-5 * max(1.0, abs(value)), (scale, name)


def test_the_variance_term_is_the_mean_of_the_two_branches():
    """One collapsed branch, one spread: half of one branch's hinge, as in the authors' code."""
    collapsed = torch.zeros(64, 16) + 0.5
    spread = torch.tensor(np.random.default_rng(1).normal(size=(64, 16)) * 2.0, dtype=torch.float32)
    one_branch = 1.0 - math.sqrt(1e-4)  # gamma - sqrt(eps) in every dimension
    assert abs(float(vicreg_loss(collapsed, collapsed)["variance"]) - one_branch) < 1e-6
    assert abs(float(vicreg_loss(collapsed, spread)["variance"]) - one_branch / 2) < 1e-6
    assert float(vicreg_loss(spread, spread)["variance"]) == 0.0
    assert float(vicreg_loss(spread, spread)["invariance"]) == 0.0


def test_projector_shapes():
    p = make_projector(32, dim=64)
    assert p(torch.randn(5, 32)).shape == (5, 64)


# --- several processes: the variance and covariance of the whole batch ----------------------------------

WORLD, N, D = 2, 12, 5


def _views():
    rng = np.random.default_rng(3)
    z1 = rng.normal(size=(WORLD * N, D)) * 0.5
    return torch.tensor(z1, dtype=torch.float32), torch.tensor(z1 + rng.normal(size=z1.shape) * 0.2,
                                                               dtype=torch.float32)


class _Fabric:
    """What `aelab.train.pretrain` calls on Lightning Fabric, through Fabric's own DDP gather."""

    def all_gather(self, data, sync_grads=False):
        from lightning.fabric.utilities.distributed import _all_gather_ddp_if_available

        return _all_gather_ddp_if_available(data, sync_grads=sync_grads)


def _worker(rank, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        z1, z2 = (z[rank * N:(rank + 1) * N].clone().requires_grad_() for z in _views())
        fabric = _Fabric()
        terms = vicreg_loss(z1, z2, gather=lambda z: fabric.all_gather(z, sync_grads=True).reshape(-1, D))
        terms["loss"].backward()
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), g1=z1.grad.numpy(), g2=z2.grad.numpy(),
                 **{k: float(v) for k, v in terms.items()})
    finally:
        dist.destroy_process_group()


def test_two_processes_optimise_the_loss_of_the_whole_batch(tmp_path):
    """Each process's variance and covariance terms are the whole batch's; after DDP averages the gradients
    (1/WORLD of each process's), every row's gradient is the one-process gradient of the whole batch."""
    run_processes(_worker, (str(tmp_path / "init"), str(tmp_path)), "VICReg", nprocs=WORLD, timeout=120)
    z1, z2 = (z.clone().requires_grad_() for z in _views())
    terms = vicreg_loss(z1, z2)
    terms["loss"].backward()
    whole = {k: float(v.detach()) for k, v in terms.items()}
    got = [np.load(tmp_path / f"rank{r}.npz") for r in range(WORLD)]
    for r, part in enumerate(got):
        assert abs(float(part["variance"]) - whole["variance"]) < 1e-6
        assert abs(float(part["covariance"]) - whole["covariance"]) < 1e-6
        rows = slice(r * N, (r + 1) * N)
        np.testing.assert_allclose(part["g1"] / WORLD, z1.grad[rows].numpy(), atol=1e-6)
        np.testing.assert_allclose(part["g2"] / WORLD, z2.grad[rows].numpy(), atol=1e-6)
    # The invariance is each process's own pairs; their mean is the whole batch's.
    assert abs(np.mean([float(p["invariance"]) for p in got]) - whole["invariance"]) < 1e-6

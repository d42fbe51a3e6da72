"""VICReg's loss against a plain-numpy reference written from Bardes, Ponce & LeCun (2022)."""

from __future__ import annotations

import numpy as np
import torch

from aelab.train.selfsup import make_projector, vicreg_loss


def _reference(z1: np.ndarray, z2: np.ndarray, lam=25.0, mu=25.0, nu=1.0, gamma=1.0, eps=1e-4) -> float:
    n, d = z1.shape

    def v(z):  # Eq. (1): hinge on the standard deviation of every dimension
        return np.mean(np.maximum(0.0, gamma - np.sqrt(z.var(axis=0, ddof=1) + eps)))

    def c(z):  # Eqs. (2)-(3): squared off-diagonal covariances / d
        zc = z - z.mean(0)
        cov = zc.T @ zc / (n - 1)
        return (np.sum(cov**2) - np.sum(np.diag(cov) ** 2)) / d

    s = np.mean((z1 - z2) ** 2)  # Eq. (4), averaged over dimensions as in the authors' code
    return lam * s + mu * (v(z1) + v(z2)) + nu * (c(z1) + c(z2))


def test_loss_equals_the_reference():
    rng = np.random.default_rng(0)
    for scale in (0.1, 1.0, 3.0):
        z1 = rng.normal(size=(32, 8)) * scale
        z2 = z1 + rng.normal(size=(32, 8)) * 0.3
        got = vicreg_loss(torch.tensor(z1), torch.tensor(z2))
        assert abs(float(got["loss"]) - _reference(z1, z2)) < 1e-4 * max(1.0, _reference(z1, z2))


def test_collapse_is_penalised_and_decorrelated_spread_is_not():
    rng = np.random.default_rng(1)
    collapsed = torch.zeros(64, 16) + 0.5
    spread = torch.tensor(rng.normal(size=(64, 16)) * 2.0, dtype=torch.float32)
    assert float(vicreg_loss(collapsed, collapsed)["variance"]) > 1.9  # 2 views x (gamma - sqrt(eps))
    assert float(vicreg_loss(spread, spread)["variance"]) == 0.0
    assert float(vicreg_loss(spread, spread)["invariance"]) == 0.0


def test_projector_shapes():
    p = make_projector(32, dim=64)
    assert p(torch.randn(5, 32)).shape == (5, 64)

"""Self-supervised pretraining objective: VICReg (Bardes, Ponce & LeCun, ICLR 2022).

Why VICReg and not SimCLR or BYOL: SimCLR's NT-Xent needs many negatives, i.e. large batches,
which a laptop CPU cannot afford; BYOL needs a second, momentum-updated network and a predictor.
VICReg needs neither: two augmented views, a small projector and a three-term loss that stays
well-behaved at batch sizes of 64–256.

The loss is the authors' implementation (``VICReg.forward`` in facebookresearch/vicreg,
``main_vicreg.py``, with their default coefficients), which differs from the paper's Eq. (6) by
constant factors only. For projections ``Z, Z'`` of shape ``(n, d)`` of two views:

- invariance, Eq. (5) divided by d: ``s(Z, Z') = 1/(n d) Σ_i ‖z_i − z'_i‖²`` (``F.mse_loss``),
  on each process's own batch;
- variance, Eqs. (1)–(2): ``v(Z) = 1/d Σ_j max(0, γ − sqrt(Var(z^j) + ε))`` with γ = 1,
  ε = 1e-4 and the unbiased variance; the term is **averaged** over the two branches,
  ``[v(Z) + v(Z')] / 2`` (the paper's Eq. (6) sums them);
- covariance, Eqs. (3)–(4): ``C(Z) = 1/(n−1) Σ_i (z_i − z̄)(z_i − z̄)^T``,
  ``c(Z) = 1/d Σ_{i≠j} C(Z)_{ij}²``, **summed** over the two branches, ``c(Z) + c(Z')``;
- loss: ``λ s(Z, Z') + μ [v(Z) + v(Z')] / 2 + ν [c(Z) + c(Z')]`` with the authors' λ = μ = 25, ν = 1
  (their defaults ``--sim-coeff 25 --std-coeff 25 --cov-coeff 1``, tuned with the halved variance term,
  so the weights stay as published).

Under several processes the variance and covariance terms are computed on the projections of all
processes together (``gather``: the authors' ``FullGatherLayer``, here Fabric's ``all_gather`` with
``sync_grads=True``, whose backward sums each process's gradient for its own rows as theirs does),
so ``--devices N`` optimises the loss of the whole batch; the invariance term is local, as in theirs.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["vicreg_loss", "make_projector"]


def _variance(z: torch.Tensor, gamma: float, eps: float) -> torch.Tensor:
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(gamma - std).mean()


def _covariance(z: torch.Tensor) -> torch.Tensor:
    n, d = z.shape
    zc = z - z.mean(dim=0)
    cov = (zc.T @ zc) / (n - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return off.pow(2).sum() / d


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
                cov_weight: float = 1.0, gamma: float = 1.0, eps: float = 1e-4,
                gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The VICReg loss of two batches of projections ``(n, d)``; returns ``loss`` and its three terms.

    ``variance`` is the branch average ``[v(Z) + v(Z')] / 2`` and ``covariance`` the sum ``c(Z) + c(Z')``
    (see the module docstring). ``gather`` (``(n, d)`` → ``(N, d)``, the rows of every process, differentiable)
    gives the variance and covariance terms the whole batch of all processes; None = this batch only.

    Example:
        >>> z = torch.randn(64, 16)
        >>> terms = vicreg_loss(z, z)
        >>> float(terms["invariance"])
        0.0
    """
    z1, z2 = z1.float(), z2.float()
    inv = F.mse_loss(z1, z2)
    if gather is not None:
        z1, z2 = gather(z1).float(), gather(z2).float()
    var = (_variance(z1, gamma, eps) + _variance(z2, gamma, eps)) / 2
    cov = _covariance(z1) + _covariance(z2)
    loss = sim_weight * inv + var_weight * var + cov_weight * cov
    return {"loss": loss, "invariance": inv, "variance": var, "covariance": cov}


def make_projector(in_dim: int, dim: int = 256) -> nn.Sequential:
    """VICReg's expander: two Linear-BatchNorm-ReLU layers and a final Linear (Sec. 4.1), narrowed for CPUs."""
    return nn.Sequential(
        nn.Linear(in_dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
        nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
        nn.Linear(dim, dim),
    )

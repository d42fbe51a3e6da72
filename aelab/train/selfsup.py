"""Self-supervised pretraining objective: VICReg (Bardes, Ponce & LeCun, ICLR 2022).

Why VICReg and not SimCLR or BYOL: SimCLR's NT-Xent needs many negatives, i.e. large batches,
which a laptop CPU cannot afford; BYOL needs a second, momentum-updated network and a predictor.
VICReg needs neither: two augmented views, a small projector and a three-term loss that stays
well-behaved at batch sizes of 64–256.

For embeddings ``Z, Z'`` of shape ``(n, d)`` (the projector's outputs of two views):

- variance, Eq. (1): ``v(Z) = 1/d Σ_j max(0, γ − sqrt(Var(z^j) + ε))``
- covariance, Eqs. (2)–(3): ``C(Z) = 1/(n−1) Σ_i (z_i − z̄)(z_i − z̄)^T``,
  ``c(Z) = 1/d Σ_{i≠j} C(Z)_{ij}²``
- invariance, Eq. (4): ``s(Z, Z') = 1/n Σ_i ‖z_i − z'_i‖²`` (divided by d as well, as in the
  authors' implementation, which is what the weights below were tuned for)
- loss, Eq. (6): ``λ s(Z, Z') + μ [v(Z) + v(Z')] + ν [c(Z) + c(Z')]`` with λ = μ = 25, ν = 1, γ = 1.
"""

from __future__ import annotations

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
                cov_weight: float = 1.0, gamma: float = 1.0, eps: float = 1e-4) -> dict[str, torch.Tensor]:
    """The VICReg loss of two batches of projections ``(n, d)``; returns ``loss`` and its three terms.

    Example:
        >>> z = torch.randn(64, 16)
        >>> terms = vicreg_loss(z, z)
        >>> float(terms["invariance"])
        0.0
    """
    z1, z2 = z1.float(), z2.float()
    inv = F.mse_loss(z1, z2)
    var = _variance(z1, gamma, eps) + _variance(z2, gamma, eps)
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

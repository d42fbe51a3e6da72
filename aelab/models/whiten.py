"""A fixed first layer that whitens 3×3 patches, fitted on the training images.

Natural images have strongly correlated neighbouring pixels: the covariance of their small patches
has a few large eigenvalues (smooth, low-frequency patterns) and many small ones (edges). Gradient
descent on such inputs is badly conditioned. Whitening the patches first — projecting them on the
leading eigenvectors of their covariance and dividing by the square root of the eigenvalues (PCA
whitening; Coates, Lee & Ng 2011, Sec. 3.1.1; as a frozen first convolution in Keller Jordan's
airbench, 2024) — gives the network inputs of equal variance in every direction. Each direction is
kept with both signs (``+w`` and ``-w``), so the layer that follows can react to either side of an edge.

Example:
    >>> x = torch.randn(64, 3, 16, 16)
    >>> w, b = patch_whitening(x, components=8)
    >>> tuple(w.shape), tuple(b.shape)
    ((16, 3, 3, 3), (16,))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["WhiteningStem", "patch_whitening"]


@torch.no_grad()
def patch_whitening(x: torch.Tensor, components: int, eps: float = 1e-2, max_patches: int = 100_000,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``(2·components, C, 3, 3)`` and bias of a 3×3 convolution that PCA-whitens the patches of ``x``.

    ``x`` is the network input (float ``(N, C, H, W)``). With ``P`` the patches (rows, ``C·9`` values),
    ``μ`` their mean and ``Σ = V Λ Vᵀ`` their covariance, output channel ``j`` (and ``j + components``,
    negated) is ``(v_j · (p − μ)) / sqrt(λ_j + ε)`` for the ``components`` largest eigenvalues ``λ_j``:
    on the patches it was fitted on, each channel has mean 0 and variance ``λ_j / (λ_j + ε)`` (≈ 1),
    and the channels are uncorrelated.
    """
    n, c = x.shape[:2]
    patches = F.unfold(x.float(), kernel_size=3).transpose(1, 2).reshape(-1, c * 9)
    if len(patches) > max_patches:
        g = torch.Generator().manual_seed(seed)
        patches = patches[torch.randperm(len(patches), generator=g)[:max_patches]]
    mean = patches.mean(0)
    centred = (patches - mean).double()
    cov = centred.T @ centred / max(len(centred) - 1, 1)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    k = min(components, c * 9)
    lam, vec = evals.flip(0)[:k].clamp_min(0), evecs.flip(1)[:, :k]
    w = (vec.T / torch.sqrt(lam + eps)[:, None]).float()  # (k, C·9)
    w = torch.cat([w, -w])
    return w.reshape(2 * k, c, 3, 3), -(w @ mean)


class WhiteningStem:
    """What a network with the optional fixed whitening first layer (``self.stem``) shares: making and fitting it."""

    stem: torch.nn.Conv2d | None

    @staticmethod
    def make_stem(in_channels: int, channels: int) -> torch.nn.Conv2d | None:
        """A 3×3 convolution to ``channels`` outputs that is never trained (0 channels: None)."""
        if not channels:
            return None
        stem = torch.nn.Conv2d(in_channels, channels, kernel_size=3, padding=1)
        stem.requires_grad_(False)  # fitted on the data (`fit_stem`), never trained
        return stem

    @torch.no_grad()
    def fit_stem(self, x: torch.Tensor, seed: int = 0) -> None:
        """Fit the whitening layer (if the network has one) on network inputs ``x`` ``(N, C, H, W)``."""
        if self.stem is not None:
            w, b = patch_whitening(x, self.stem.out_channels // 2, seed=seed)
            self.stem.weight.copy_(w)
            self.stem.bias.copy_(b)

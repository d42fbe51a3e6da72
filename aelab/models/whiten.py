"""A fixed first layer that whitens 3×3 patches, fitted on the training images.

Natural images have strongly correlated neighbouring pixels: the covariance of their small patches
has a few large eigenvalues (smooth, low-frequency patterns) and many small ones (edges). Gradient
descent on such inputs is badly conditioned. Whitening the patches first — projecting them on the
leading eigenvectors of their covariance and dividing by the square root of the eigenvalues (PCA
whitening; Coates, Lee & Ng 2011, Sec. 3.1.1; as a frozen first convolution in Keller Jordan's
airbench, 2024) — gives the network inputs of equal variance in every direction. Each direction is
kept with both signs (``+w`` and ``-w``), so the layer that follows can react to either side of an edge.

The ``"kmeans"`` stem (`KMeansStem`) goes one step further, after Coates, Lee & Ng 2011 (Sec. 3.1.2, without
their per-patch brightness and contrast normalisation): it whitens every direction of the 3×3 patches, learns
``k`` centroids of the whitened patches with k-means, and outputs each position's "triangle" code
``f_j(z) = max(0, mean_i d_i(z) − d_j(z))`` with ``d_j`` the distance to centroid ``j`` (a centroid nearer than
the average one scores by how much nearer; the others 0): a fixed, sparse, non-linear dictionary of the patterns
the training images hold.

Example:
    >>> x = torch.randn(64, 3, 16, 16)
    >>> w, b = patch_whitening(x, components=8)
    >>> tuple(w.shape), tuple(b.shape)
    ((16, 3, 3, 3), (16,))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aelab.errors import AelabError

__all__ = ["STEM_KINDS", "KMeansStem", "WhiteningStem", "patch_kmeans", "patch_whitening"]

#: Kinds of fixed first layer: PCA whitening (`patch_whitening`) or whitening then k-means triangle codes
#: (`KMeansStem`).
STEM_KINDS: tuple[str, ...] = ("whiten", "kmeans")


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


@torch.no_grad()
def patch_kmeans(x: torch.Tensor, k: int, seed: int = 0, max_patches: int = 50_000
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`KMeansStem`'s fixed weights from network inputs ``x`` (float ``(N, C, H, W)``): the whitening convolution
    of every direction of the 3×3 patches (weights ``(9C, C, 3, 3)``, bias ``(9C,)``, `patch_whitening`'s first
    half) and ``k`` centroids ``(k, 9C)`` of up to ``max_patches`` whitened patches (scikit-learn's k-means,
    k-means++ seeding, one run)."""
    from sklearn.cluster import KMeans

    d = 9 * x.shape[1]
    w, b = patch_whitening(x, d, seed=seed)
    w, b = w[:d], b[:d]
    z = F.conv2d(x.float(), w, b).permute(0, 2, 3, 1).reshape(-1, d)
    if len(z) > max_patches:
        z = z[torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))[:max_patches]]
    if len(z) < k:
        raise AelabError(f"a k-means first layer of {k} centroids needs at least {k} patches of 3x3 pixels, "
                         f"got {len(z)}: use fewer centroids (--stem) or larger images")
    centres = KMeans(k, n_init=1, random_state=seed).fit(z.detach().cpu().double().numpy()).cluster_centers_
    return w, b, torch.from_numpy(centres).float().to(x.device)


class KMeansStem(torch.nn.Module):
    """A fixed first layer: whiten each 3×3 patch (all ``9C`` directions), then its triangle code against ``k``
    centroids (Coates et al. 2011, Sec. 3.1.2): ``out_j = max(0, mean_i d_i − d_j)``, ``d_j`` the Euclidean
    distance of the whitened patch to centroid ``j``. Nothing in it is trained; `fit` sets it from images. It
    computes in float32 whatever the precision around it (the distances subtract large numbers).

    Shapes:
        ``(B, C, H, W) -> (B, k, H, W)`` (zero padding, as the whitening stem).
    """

    def __init__(self, in_channels: int, k: int):
        super().__init__()
        d = 9 * in_channels
        self.in_channels, self.out_channels = in_channels, k
        # Parameters that are never trained, as the whitening stem's convolution: counted with the network's.
        fixed = lambda *shape: torch.nn.Parameter(torch.zeros(*shape), requires_grad=False)  # noqa: E731
        self.weight, self.bias = fixed(d, in_channels, 3, 3), fixed(d)
        self.centroids = fixed(k, d, 1, 1)

    @torch.no_grad()
    def fit(self, x: torch.Tensor, seed: int = 0) -> None:
        w, b, c = patch_kmeans(x, self.out_channels, seed=seed)
        self.weight.copy_(w)
        self.bias.copy_(b)
        self.centroids.copy_(c.view(*self.centroids.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            c = self.centroids.float()
            z = F.conv2d(x.float(), self.weight.float(), self.bias.float(), padding=1)
            # ||z − c_j||² = ||z||² − 2 z·c_j + ||c_j||², one 1×1 convolution for every centroid
            sq = (z * z).sum(1, keepdim=True) - 2 * F.conv2d(z, c) + (c * c).sum((1, 2, 3)).view(1, -1, 1, 1)
            dist = sq.clamp_min(0).sqrt()
            return F.relu(dist.mean(1, keepdim=True) - dist).to(x.dtype)


class WhiteningStem:
    """What a network with the optional fixed first layer (``self.stem``: whitening, or `KMeansStem`) shares: making
    and fitting it."""

    stem: torch.nn.Conv2d | KMeansStem | None

    @staticmethod
    def make_stem(in_channels: int, channels: int, kind: str = "whiten") -> torch.nn.Module | None:
        """A 3×3 convolution to ``channels`` outputs that is never trained, or with ``kind="kmeans"`` a
        `KMeansStem` of ``channels`` centroids (0 channels: None)."""
        if not channels:
            return None
        if kind == "kmeans":
            return KMeansStem(in_channels, channels)
        stem = torch.nn.Conv2d(in_channels, channels, kernel_size=3, padding=1)
        stem.requires_grad_(False)  # fitted on the data (`fit_stem`), never trained
        return stem

    @torch.no_grad()
    def fit_stem(self, x: torch.Tensor, seed: int = 0) -> None:
        """Fit the fixed first layer (if the network has one) on network inputs ``x`` ``(N, C, H, W)``."""
        if isinstance(self.stem, KMeansStem):
            self.stem.fit(x, seed=seed)
        elif self.stem is not None:
            w, b = patch_whitening(x, self.stem.out_channels // 2, seed=seed)
            self.stem.weight.copy_(w)
            self.stem.bias.copy_(b)

"""Single-layer k-means features (Coates, Lee & Ng, "An Analysis of Single-Layer Networks in
Unsupervised Feature Learning", AISTATS 2011): a patch dictionary learned on unlabelled images.

The pipeline of the paper's Sec. 3 (and of its released ``kmeans_demo.m``):

1. sample random ``p × p`` patches of the unlabelled images (Sec. 3.1);
2. normalise every patch: subtract its mean, divide by ``sqrt(var + 10)`` for pixel values in
   [0, 255] (Sec. 3.1.1, "normalization"; 10 is the demo's constant);
3. ZCA whitening (Sec. 3.1.1): ``x ← (x − m) V (D + ε I)^(-1/2) Vᵀ`` with ``ε = 0.1`` on the
   normalised patches (the demo's value);
4. a dictionary of K centroids by k-means (Sec. 3.1.2) — here scikit-learn's ``MiniBatchKMeans``,
   or aelab's Equilibrium K-Means (Y. He, arXiv:2402.14490), which does not split a large
   cluster of near-flat patches into many centroids;
5. encoding of every patch at stride ``s`` by "k-means (triangle)" (Sec. 3.1.2):
   ``f_k(x) = max(0, μ(z) − z_k)`` with ``z_k = ‖x − c_k‖₂`` and ``μ(z)`` the mean of ``z`` over k;
6. pooling of the response map over a ``g × g`` grid of regions: the paper sums over the four quadrants
   (Sec. 3.2; ``pooling="sum", grid=2``, ``4K`` features); aelab's default takes the maximum over a 3 × 3 grid
   (``9K`` features). Max pooling suits sparse codes such as the triangle's, most of which are zero (Boureau,
   Ponce & LeCun, "A Theoretical Analysis of Feature Pooling in Visual Recognition", ICML 2010); on the CIFAR-10
   tuning draws it added 2.45 and 2.95 points over the quadrant sums (benchmarks/README.md).

The encoding is one matrix product per batch of images (``torch`` unfold + matmul), so it runs at
about ``N·L·K·C·p²`` multiply-adds (``L`` patch positions per image).
"""

from __future__ import annotations

import numbers

import numpy as np

from aelab.train.options import KMEANS_FEATURES_POOLINGS as POOLINGS

__all__ = ["KMeansFeatures", "POOLINGS", "grid_edges", "triangle_encode", "normalise_patches", "sample_patches"]

NORM_EPS = 10.0  # Coates et al.'s variance offset for pixel values in [0, 255]
ZCA_EPS = 0.1  # their ZCA eigenvalue offset, on the normalised patches


def sample_patches(images: np.ndarray, n: int, patch: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random ``patch × patch`` patches of uint8 ``(N, C, H, W)`` images as float32 rows.

    Each row is ordered channel, row, column (the order of ``torch.nn.functional.unfold``).
    """
    N, C, H, W = images.shape
    if H < patch or W < patch:
        raise ValueError(f"images of {H}x{W} pixels are smaller than the {patch}x{patch} patches")
    windows = np.lib.stride_tricks.sliding_window_view(images, (patch, patch), axis=(2, 3))
    idx = rng.integers(0, N, n)
    order = np.argsort(idx, kind="stable")  # read the images in order (memory maps read faster)
    r = rng.integers(0, H - patch + 1, n)
    c = rng.integers(0, W - patch + 1, n)
    out = np.asarray(windows[idx[order], :, r[order], c[order]], dtype=np.float32)  # (n, C, p, p)
    return out.reshape(n, -1)


def normalise_patches(x):
    """Per-patch brightness and contrast normalisation (Sec. 3.1.1): ``(x − mean) / sqrt(var + 10)``.

    Works on numpy arrays and torch tensors of rows (``var`` is the unbiased one, as MATLAB's).
    """
    mean = x.mean(1, keepdims=True) if isinstance(x, np.ndarray) else x.mean(1, keepdim=True)
    var = x.var(1, ddof=1, keepdims=True) if isinstance(x, np.ndarray) else x.var(1, keepdim=True)
    return (x - mean) / (var + NORM_EPS) ** 0.5


def grid_edges(n: int, grid: int) -> list[int]:
    """Where ``grid`` pooling regions split ``n`` rows (or columns): ``ceil(i · n / grid)`` for i = 0 … grid.

    With ``grid`` 2 this is the demo's ``round(rows / 2)``: the first half takes the middle row when ``n`` is odd.

    Example:
        >>> grid_edges(27, 2), grid_edges(27, 3), grid_edges(23, 3)
        ([0, 14, 27], [0, 9, 18, 27], [0, 8, 16, 23])
    """
    return [(i * n + grid - 1) // grid for i in range(grid + 1)]


def triangle_encode(z):
    """"k-means (triangle)" (Sec. 3.1.2): ``f_k = max(0, μ(z) − z_k)`` for distances ``z`` (rows × K)."""
    if isinstance(z, np.ndarray):
        return np.maximum(0.0, z.mean(1, keepdims=True) - z)
    return (z.mean(1, keepdim=True) - z).clamp_min(0.0)


class KMeansFeatures:
    """Coates et al.'s single-layer features: fit a whitened patch dictionary, encode images to ``grid² · K`` numbers.

    Args:
        n_centroids: K, the dictionary size (the paper's curve rises up to 1600–4000).
        patch: receptive field ``p`` in pixels (the paper's best: 6).
        stride: step between encoded patches (the paper's best: 1).
        learner: ``"kmeans"`` (scikit-learn ``MiniBatchKMeans``) or ``"ekm"`` (aelab's
            ``MiniBatchEquilibriumKMeans``).
        n_patches: random patches the dictionary is learned on (the paper: 400,000; fewer are
            nearly as good and faster).
        pooling: ``"max"`` or ``"sum"`` of the codes over each region of the grid (the paper: sum).
        grid: the response map is pooled over ``grid × grid`` regions (the paper: 2, its quadrants), giving
            ``grid² · K`` features.
        batch_images: images per encoding batch (memory about ``batch_images · L · K`` floats).
        ekm_scale: EKM's α as ``ekm_scale / mean ½‖x − x̄‖²`` (its ``"dvariance"`` rule; its default
            2 suits a few clusters in a few dimensions; on CIFAR-10 patches with 400 centroids 2, 10,
            30, 100, 300 gave 0.25, 0.29, 0.34, 0.374, 0.372 test accuracy: hundreds of centroids need
            a near-hard α, where EKM approaches k-means).
        ekm_patches, ekm_iter: EKM runs full-batch on this many of the patches, at most this many steps.
        zca_eps: ε added to the eigenvalues in the ZCA whitening (the paper's demo: 0.1).
        random_state: seed of the patch draw and of the dictionary learner.

    Attributes (after ``fit``): ``mean_``, ``whiten_`` (the ZCA matrix), ``centroids_`` (K × C·p²).
    """

    def __init__(self, n_centroids: int = 800, patch: int = 6, stride: int = 1, learner: str = "kmeans",
                 n_patches: int = 200_000, batch_images: int = 4, ekm_scale: float = 100.0, ekm_patches: int = 50_000,
                 ekm_iter: int = 50, zca_eps: float = ZCA_EPS, pooling: str = "max", grid: int = 3,
                 random_state: int | None = 0):
        if learner not in ("kmeans", "ekm"):
            raise ValueError(f"learner must be 'kmeans' or 'ekm', got {learner!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if isinstance(grid, bool) or not isinstance(grid, numbers.Integral) or grid < 1:
            raise ValueError(f"grid must be a whole number >= 1, got {grid!r}")
        if n_centroids < 2 or patch < 1 or stride < 1 or n_patches < n_centroids:
            raise ValueError("need n_centroids >= 2, patch >= 1, stride >= 1 and n_patches >= n_centroids")
        self.n_centroids = n_centroids
        self.patch = patch
        self.stride = stride
        self.learner = learner
        self.n_patches = n_patches
        self.batch_images = batch_images
        self.ekm_scale = ekm_scale
        self.ekm_patches = ekm_patches
        self.ekm_iter = ekm_iter
        self.zca_eps = zca_eps
        self.pooling = pooling
        self.grid = int(grid)
        self.random_state = random_state

    def fit(self, images: np.ndarray) -> KMeansFeatures:
        """Learn the normalisation, ZCA whitening and dictionary from uint8 ``(N, C, H, W)`` images."""
        rng = np.random.default_rng(self.random_state)
        x = normalise_patches(sample_patches(np.asarray(images), self.n_patches, self.patch, rng))
        self.mean_ = x.mean(0).astype(np.float32)
        cov = np.cov(x, rowvar=False, dtype=np.float64)
        evals, evecs = np.linalg.eigh(cov)
        self.whiten_ = ((evecs / np.sqrt(np.clip(evals, 0, None) + self.zca_eps)) @ evecs.T).astype(np.float32)
        xw = (x - self.mean_) @ self.whiten_
        self.centroids_ = self._dictionary(xw).astype(np.float32)
        return self

    def _dictionary(self, x: np.ndarray) -> np.ndarray:
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        seed = None if self.random_state is None else int(self.random_state)
        K = self.n_centroids
        if self.learner == "kmeans":
            from sklearn.cluster import MiniBatchKMeans

            km = MiniBatchKMeans(K, batch_size=max(4096, 4 * K), n_init=1, max_iter=30, init_size=min(len(x), 6 * K),
                                 max_no_improvement=5, random_state=seed)
            return km.fit(x).cluster_centers_
        from aelab.cluster import EquilibriumKMeans

        # Full-batch EKM on a subsample (its J-descent checks). MiniBatchEquilibriumKMeans sent
        # centroids off to ~1e36 on these patches until its step used the batch's gradient (see
        # aelab/cluster/minibatch.py); the dictionary has stayed full-batch so the numbers do not move.
        rows = np.random.default_rng(seed).permutation(len(x))[: self.ekm_patches]
        ekm = EquilibriumKMeans(K, scale=self.ekm_scale, init="k-means++", n_init=1, max_iter=self.ekm_iter,
                                random_state=seed)
        with warnings.catch_warnings():  # a dictionary needs a good fit, not a converged one
            warnings.simplefilter("ignore", ConvergenceWarning)
            return ekm.fit(x[rows].astype(np.float64)).cluster_centers_

    @property
    def n_features_out(self) -> int:
        return self.grid * self.grid * self.n_centroids

    def transform(self, images: np.ndarray) -> np.ndarray:
        """Triangle codes of every patch at ``stride``, pooled over the ``grid × grid`` regions: float32
        ``(N, grid² · K)``, region by region (row-major), K codes each.

        Regions split the patch rows and columns at `grid_edges`: with ``grid`` 2 as the demo's ``round(rows / 2)``.
        """
        import torch
        import torch.nn.functional as F

        if not hasattr(self, "centroids_"):
            raise RuntimeError("KMeansFeatures is not fitted: call fit(unlabelled_images) first")
        images = np.asarray(images)
        N, _, H, W = images.shape
        rows = (H - self.patch) // self.stride + 1
        cols = (W - self.patch) // self.stride + 1
        g = self.grid
        if min(rows, cols) < g:
            raise ValueError(f"images of {H}x{W} pixels give {rows}x{cols} patches, too few for a {g}x{g} pooling grid")
        er, ec = grid_edges(rows, g), grid_edges(cols, g)
        regions = [(slice(er[i], er[i + 1]), slice(ec[j], ec[j + 1])) for i in range(g) for j in range(g)]
        mean = torch.from_numpy(self.mean_)
        Wm = torch.from_numpy(self.whiten_)
        CT = torch.from_numpy(np.ascontiguousarray(self.centroids_.T))
        c2 = (CT * CT).sum(0)
        pool = torch.zeros(len(regions), rows, cols)  # the region sums as one (g² × L) matrix product
        for r, (rs, cs) in enumerate(regions):
            pool[r, rs, cs] = 1.0
        pool = pool.reshape(len(regions), -1)
        K = self.n_centroids
        out = np.empty((N, self.n_features_out), dtype=np.float32)
        with torch.no_grad():  # small batches keep the (patches × K) block in cache; in-place steps
            for s in range(0, N, self.batch_images):
                x = torch.from_numpy(np.ascontiguousarray(images[s : s + self.batch_images])).float()
                b = x.shape[0]
                p = F.unfold(x, self.patch, stride=self.stride).transpose(1, 2).reshape(-1, Wm.shape[0])
                p = (normalise_patches(p) - mean) @ Wm
                z = torch.addmm(c2, p, CT, alpha=-2.0)  # ‖p − c‖² = ‖p‖² − 2 p·c + ‖c‖²
                z.add_((p * p).sum(1, keepdim=True)).clamp_(min=0.0).sqrt_()
                z.sub_(z.mean(1, keepdim=True)).neg_().clamp_(min=0.0)  # triangle_encode, in place
                if self.pooling == "sum":
                    pooled = torch.matmul(pool, z.reshape(b, rows * cols, K))
                else:  # the column bands' maxima, then the row bands' (24x faster than one region at a time)
                    z = z.reshape(b, rows, cols, K)
                    bands = torch.stack([z[:, :, ec[j] : ec[j + 1]].amax(2) for j in range(g)], 2)  # (b, rows, g, K)
                    pooled = torch.stack([bands[:, er[i] : er[i + 1]].amax(1) for i in range(g)], 1)
                out[s : s + b] = pooled.reshape(b, -1).numpy()
        return out

    def fit_transform(self, images: np.ndarray) -> np.ndarray:
        return self.fit(images).transform(images)

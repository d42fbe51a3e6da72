"""A classical semi-supervised reference line for study 1: label spreading on a PCA of the pixels.

Zhou et al., "Learning with Local and Global Consistency" (NIPS 2003), as scikit-learn's
`LabelSpreading` (kNN kernel): labels diffuse along a k-nearest-neighbour graph over labelled,
unlabelled and test images. It takes about a tenth of a second, so every network method should
be compared with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LabelSpreadingResult", "label_spreading_baseline"]


@dataclass
class LabelSpreadingResult:
    """Predicted class indices for the validation images and the query (test) images."""

    val_pred: np.ndarray
    query_pred: np.ndarray
    seconds: float


def label_spreading_baseline(labelled: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
                             unlabelled: np.ndarray | None, query: np.ndarray | None, n_components: int = 50,
                             n_neighbors: int = 10, seed: int = 0) -> LabelSpreadingResult:
    """Fit PCA + LabelSpreading on all images with only ``labels[train_idx]`` known.

    Args:
        labelled: uint8 ``(N, C, H, W)`` labelled images; ``labels`` their class indices.
        train_idx, val_idx: the same stratified split the network methods use; validation
            images are given to the graph unlabelled and scored against their labels.
        unlabelled: uint8 unlabelled images (or None), ``query``: images to predict (or None).

    Returns:
        `LabelSpreadingResult` with predictions for ``val_idx`` and ``query``.
    """
    import time

    from sklearn.decomposition import PCA
    from sklearn.semi_supervised import LabelSpreading

    t0 = time.perf_counter()
    parts = [labelled] + [p for p in (unlabelled, query) if p is not None and len(p)]
    X = np.concatenate([p.reshape(len(p), -1) for p in parts]).astype(np.float32) / 255.0
    y = np.full(len(X), -1, dtype=np.int64)
    y[train_idx] = labels[train_idx]
    k = int(min(n_components, X.shape[0] - 1, X.shape[1]))
    Z = PCA(n_components=k, random_state=seed).fit_transform(X)
    model = LabelSpreading(kernel="knn", n_neighbors=int(min(n_neighbors, len(X) - 1)), max_iter=100)
    model.fit(Z, y)
    pred = model.transduction_
    n_query = 0 if query is None else len(query)
    return LabelSpreadingResult(pred[val_idx], pred[len(X) - n_query:], time.perf_counter() - t0)

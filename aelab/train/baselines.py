"""Classical reference lines for study 1.

Label spreading on a PCA of the pixels: Zhou et al., "Learning with Local and Global Consistency" (NIPS 2003),
as scikit-learn's `LabelSpreading` (kNN kernel): labels diffuse along a k-nearest-neighbour graph over labelled,
unlabelled and test images. It takes about a tenth of a second, so every network method should
be compared with it.

Single-layer k-means features (Coates, Lee & Ng, AISTATS 2011; `aelab.train.patch_features`):
a whitened patch dictionary learned on the unlabelled images, triangle codes max-pooled over a 3 × 3 grid (the
paper sums over four quadrants), then a standardised L2 logistic regression on the labelled images and fixed copies
of them (`labelled_copies`, for photos: mirrored, and shifted by an eighth of the side, as far as the networks' weak
augmentation shifts).

Both predict the validation images from the training split only, and then (``refit=True``, the default) the test
images with every labelled image: these rows choose nothing on the hold-out (no epoch, no C: it is fixed), so its
labels are better spent on the model that predicts the test, as one refits on all the data after model selection
(Hastie, Tibshirani & Friedman 2009, Sec. 7.10). On the seed-0 CIFAR-10 draw (25 labelled per class) the k-means
features' test accuracy rose from 0.428 (mean of 5 hold-outs of 50) to 0.4485 (benchmarks/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aelab.train.options import KMEANS_FEATURES_COPIES

__all__ = ["AUGMENT_ROWS", "BaselineResult", "COPIES", "check_copies", "kmeans_features_baseline",
           "label_spreading_baseline", "labelled_copies", "logistic_cv"]


@dataclass
class BaselineResult:
    """Predicted class indices for the validation images and the query (test) images; the class probabilities
    behind them where the method has them."""

    val_pred: np.ndarray
    query_pred: np.ndarray
    seconds: float
    val_proba: np.ndarray | None = None
    query_proba: np.ndarray | None = None


def label_spreading_baseline(labelled: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
                             unlabelled: np.ndarray | None, query: np.ndarray | None, n_components: int = 50,
                             n_neighbors: int = 10, seed: int = 0, refit: bool = True) -> BaselineResult:
    """Fit PCA + LabelSpreading on all images with only ``labels[train_idx]`` known.

    Args:
        labelled: uint8 ``(N, C, H, W)`` labelled images; ``labels`` their class indices.
        train_idx, val_idx: the same stratified split the network methods use; validation
            images are given to the graph unlabelled and scored against their labels.
        unlabelled: uint8 unlabelled images (or None), ``query``: images to predict (or None).
        refit: predict ``query`` from a second spreading where the validation labels are known too.

    Returns:
        `BaselineResult` with predictions for ``val_idx`` and ``query``.
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

    def spread(known: np.ndarray) -> np.ndarray:
        model = LabelSpreading(kernel="knn", n_neighbors=int(min(n_neighbors, len(X) - 1)), max_iter=100)
        return model.fit(Z, known).transduction_

    pred = spread(y)
    n_query = 0 if query is None else len(query)
    if refit and n_query and len(val_idx):
        y[val_idx] = labels[val_idx]
        query_pred = spread(y)[len(X) - n_query:]
    else:
        query_pred = pred[len(X) - n_query:]
    return BaselineResult(pred[val_idx], query_pred, time.perf_counter() - t0)


#: ``kmeans_features_augment`` settings (`aelab.train.options` holds the one list).
COPIES = KMEANS_FEATURES_COPIES
#: The most rows (images and their copies) the classifier learns from: with many labelled images fewer copies are
#: made (whole groups of `labelled_copies`' order), so the rows stay at most 4 times those of 25 labelled per class
#: with every copy (2,500 rows for 250 photos); at 400 photos per class the images and their mirrors (8,000 rows).
#: Memory grows with rows × features: at 8,000 rows of the default 7,200 features (max over 3 × 3, 800 centroids)
#: the row peaked at 1.4 GiB (benchmarks/README.md).
AUGMENT_ROWS = 10_000


def labelled_copies(images: np.ndarray, augment: str, max_rows: int | None = AUGMENT_ROWS) -> list[np.ndarray]:
    """The labelled images and fixed copies of them, shifted as far as the networks' weak augmentation shifts.

    ``augment``: ``none`` (the images only), ``shift`` (also shifted by an eighth of the shorter side, at least one
    pixel: the picture moves up, down, left and right, with reflected borders), ``flip-shift`` (also mirrored
    left-right, and the mirrored images shifted: 10 sets), ``auto`` (``flip-shift`` for photos, ``none`` for grey
    images: see `kmeans_features_baseline`). Returns a list of uint8 arrays shaped like ``images``: the images,
    the mirrored ones, then up and down, left and right of the images, then of the mirrors. With ``max_rows``, only
    as many whole groups of that order (the images; the mirrors; a pair of opposite shifts) as fit in ``max_rows``
    rows, and always the images, so a kept shift always comes with its opposite.

    Example:
        >>> x = np.arange(2 * 3 * 8 * 8, dtype=np.uint8).reshape(2, 3, 8, 8)
        >>> [len(labelled_copies(x, a)) for a in ("none", "shift", "flip-shift")]
        [1, 5, 10]
        >>> len(labelled_copies(x, "flip-shift", max_rows=7))  # the images, the mirrors; not half a pair
        2
    """
    from aelab.data.kind import image_kind

    check_copies(augment)
    if augment == "auto":
        augment = "flip-shift" if image_kind(images) == "photo" else "none"
    bases = [images]
    if augment == "flip-shift":
        bases.append(np.ascontiguousarray(images[..., ::-1]))
    groups = [[b] for b in bases]
    H, W = images.shape[2:]
    d = max(1, min(H, W) // 8)
    if augment != "none" and min(H, W) > d:
        for base in bases:
            padded = np.pad(base, ((0, 0), (0, 0), (d, d), (d, d)), mode="reflect")

            def moved(dy: int, dx: int, padded=padded) -> np.ndarray:  # the picture moves by (-dy, -dx)
                return np.ascontiguousarray(padded[:, :, d + dy : d + dy + H, d + dx : d + dx + W])

            groups += [[moved(d, 0), moved(-d, 0)], [moved(0, d), moved(0, -d)]]
    copies, n = [], max(1, len(images))
    for group in groups:
        if copies and max_rows is not None and (len(copies) + len(group)) * n > max_rows:
            break
        copies += group
    return copies


def check_copies(augment: str) -> None:
    """A ``ValueError`` naming the settings unless ``augment`` is one of `COPIES`."""
    if augment not in COPIES:
        raise ValueError(f"augment must be one of {', '.join(COPIES)}, got {augment!r}")


FEATURES_C = 1e-3  # fixed from benchmarks/bench_kmeans_features.py (CIFAR-10 draws, seeds 0 and 1)
C_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.1, 1.0)  # inverse L2 strengths tried on standardised features
#: Stopping tolerance of the L-BFGS fits (scikit-learn's default is 1e-4). On the CIFAR-10 tuning draws (seeds 0 and 1,
#: 25 labelled per class and their copies, 7,200 features) 1e-3 took 50-93 iterations instead of 98-173 and 14.4 / 9.5 s
#: instead of 25.9 / 18.5 s for the row's two fits, at 0.5035 / 0.4835 test accuracy instead of 0.5045 / 0.4845
#: (benchmarks/README.md).
FIT_TOL = 1e-3


def logistic_cv(X: np.ndarray, y: np.ndarray, c_grid=C_GRID, folds: int = 3, seed: int = 0, tol: float = FIT_TOL):
    """Standardise + multinomial L2 logistic regression, C by stratified ``folds``-fold CV on (X, y) only.

    With fewer than ``folds`` images in some class (or one C given) no CV is run: the
    middle C of the grid is used. Returns ``(pipeline fitted on all of X, chosen C)``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def model(C):
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000, tol=tol))

    grid = list(c_grid)
    C = grid[len(grid) // 2]
    if len(grid) > 1 and np.bincount(y).min() >= folds:
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        scores = [np.mean(cross_val_score(model(c), X, y, cv=cv)) for c in grid]
        C = grid[int(np.argmax(scores))]
    return model(C).fit(X, y), C


def kmeans_features_baseline(labelled: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
                             unlabelled: np.ndarray | None, query: np.ndarray | None, n_centroids: int = 800,
                             learner: str = "kmeans", C: float | None = FEATURES_C, seed: int = 0,
                             refit: bool = True, augment: str = "auto", **feature_options) -> BaselineResult:
    """Coates et al.'s single-layer features learned on the unlabelled images, then logistic regression.

    Args:
        labelled, labels, train_idx, val_idx, unlabelled, query: as `label_spreading_baseline`;
            the dictionary is learned on ``unlabelled`` (on the labelled images when there are none),
            the classifier on ``labelled[train_idx]`` for the validation images.
        n_centroids: dictionary size K (grid² · K features; ``grid`` and ``pooling`` in ``feature_options``).
        learner: ``"kmeans"`` or ``"ekm"`` (Equilibrium K-Means), see `KMeansFeatures`.
        C: inverse L2 strength of the logistic regression on the standardised features; None = 3-fold
            CV over `C_GRID` on the training split (with 20 images per class it picked C from 0.001
            to 1 and lost up to 2 points against the fixed 0.001: benchmarks/README.md).
        refit: predict ``query`` with the classifier refit on ``train_idx`` and ``val_idx`` together (the same C).
        augment: the copies of the labelled images the classifier also learns from (`labelled_copies`; the
            validation images are scored as they are). On the CIFAR-10 tuning draws (25 labelled per class) the
            mirrored copies added 2.25 and 1.95 points and the shifts 0.45 and 1.3 more. On the MNIST demo the
            shifts raised this row (0.900 to 0.908) but lowered the submitted ensemble with FixMatch from 0.980
            to 0.966 (the copies make the classifier's probabilities surer, and it has 0.7 of the weight), so
            ``auto`` copies photos only (benchmarks/README.md).
        feature_options: further `KMeansFeatures` arguments (patch, stride, n_patches, ekm_scale, ...).

    Returns:
        `BaselineResult` with predictions for ``val_idx`` and ``query``.
    """
    import time

    from aelab.train.patch_features import KMeansFeatures

    check_copies(augment)  # before the dictionary's seconds
    t0 = time.perf_counter()
    source = unlabelled if unlabelled is not None and len(unlabelled) else labelled
    feats = KMeansFeatures(n_centroids=n_centroids, learner=learner, random_state=seed, **feature_options).fit(source)
    X = feats.transform(labelled)
    has_query = query is not None and len(query)
    refitting = bool(refit and has_query and len(val_idx))
    copied = np.sort(np.concatenate([train_idx, val_idx])) if refitting else np.sort(train_idx)
    at = np.full(len(labelled), -1)
    at[copied] = np.arange(len(copied))  # row of each copied image in the copies' features
    sets = [feats.transform(c) for c in labelled_copies(np.asarray(labelled)[copied], augment)[1:]]

    def rows(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # the images of ``idx`` and their copies
        return np.concatenate([X[idx]] + [f[at[idx]] for f in sets]), np.tile(labels[idx], 1 + len(sets))

    # C by cross-validation on the images alone (a copy in one fold and its image in another would leak); with
    # copies the regression sums its loss over more rows, so this C regularises less than it did in the CV. The
    # default is the fixed FEATURES_C, chosen without copies and still near the best with them (benchmarks/README.md).
    chosen_c = C if C is not None else logistic_cv(X[train_idx], labels[train_idx], C_GRID, seed=seed)[1]
    clf = logistic_cv(*rows(train_idx), (chosen_c,), seed=seed)[0]
    k = int(labels.max()) + 1

    def proba(model, x: np.ndarray) -> np.ndarray:  # (N, K) over every class, also one the training split lacks
        out = np.zeros((len(x), k))
        if len(x):
            out[:, model.classes_] = model.predict_proba(x)
        return out

    val_proba = proba(clf, X[val_idx])
    if refitting:
        every = np.concatenate([train_idx, val_idx])
        clf = logistic_cv(*rows(every), (chosen_c,), seed=seed)[0]
    query_proba = proba(clf, feats.transform(query) if has_query else X[:0])
    return BaselineResult(val_proba.argmax(1), query_proba.argmax(1), time.perf_counter() - t0, val_proba,
                          query_proba)

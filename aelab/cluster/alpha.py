"""Choosing EKM's α: sweep it, and search for the α whose cluster sizes match a target ratio.

The seed study (question 2) tuned α by hand "until the centroids separate and the cluster sizes
come out near 2:1:1". :func:`find_alpha` does that search: a coarse log-spaced sweep, then a
finer one around the best point, scoring each α by the log-space distance between its sorted
cluster-size ratio and the target, among the α whose centroids are separated (as α → 0 every
centroid collapses onto the data mean and the sizes become arbitrary).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(0, 1, (200, 2)), rng.normal(6, 1, (100, 2)), rng.normal(-6, 1, (100, 2))])
    >>> search = find_alpha(X, 3, target_ratio=(2, 1, 1), n_init=2, refine=3)
    >>> search.best.ratio
    (2.0, 1.0, 1.0)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from aelab.cluster.baselines import make_clusterer

__all__ = ["SweepPoint", "AlphaSearch", "alpha_sweep", "find_alpha", "clustering_scores",
           "hungarian_accuracy", "parse_ratio", "ratio_distance", "write_sweep_csv"]

SWEEP_COLUMNS = ["alpha", "sizes", "ratio", "ratio_distance", "objective", "min_separation", "converged",
                 "n_iter", "ari", "nmi", "acc"]


@dataclass
class SweepPoint:
    """One α of a sweep. ``sizes`` are sorted descending; ``ratio = sizes / min(sizes)`` (inf
    when a cluster is empty); ``min_separation`` is the smallest centroid distance divided by
    the data's RMS radius ``sqrt(mean ‖x − x̄‖²)``; ari/nmi/acc need true labels."""

    alpha: float | None
    sizes: tuple
    ratio: tuple
    objective: float
    min_separation: float
    converged: bool
    n_iter: int
    ari: float | None = None
    nmi: float | None = None
    acc: float | None = None
    ratio_distance: float | None = None

    def as_row(self) -> dict:
        """Flat CSV row (sizes and ratio joined with ':'), in ``SWEEP_COLUMNS`` order."""
        row = asdict(self)
        row["sizes"] = ":".join(str(int(s)) for s in self.sizes)
        row["ratio"] = ":".join(f"{r:.4g}" for r in self.ratio)
        return {k: ("" if row[k] is None else row[k]) for k in SWEEP_COLUMNS}


@dataclass
class AlphaSearch:
    """Result of :func:`find_alpha`: the chosen ``alpha`` (paper convention), every point looked
    at (``sweep``, sorted by α), the chosen ``best`` point, the target, and whether the chosen
    point had separated centroids."""

    alpha: float
    sweep: list
    best: SweepPoint
    target_ratio: tuple = ()
    separated: bool = True


def parse_ratio(ratio) -> tuple:
    """``"2:1:1"`` or ``(2, 1, 1)`` → ``(2.0, 1.0, 1.0)``; positive numbers only."""
    parts = ratio.split(":") if isinstance(ratio, str) else list(ratio)
    try:
        values = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"ratio must look like '2:1:1', got {ratio!r}.") from None
    if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
        raise ValueError(f"ratio must be positive numbers like '2:1:1', got {ratio!r}.")
    return values


def ratio_distance(ratio, target) -> float:
    """RMS distance in log space between sorted size ratios (each divided by its minimum)."""
    r = np.sort(np.asarray(ratio, dtype=float))[::-1]
    t = np.sort(np.asarray(target, dtype=float))[::-1]
    if r.shape != t.shape or not np.all(np.isfinite(r)) or r.min() <= 0:
        return math.inf
    return float(np.sqrt(np.mean((np.log(r / r.min()) - np.log(t / t.min())) ** 2)))


def hungarian_accuracy(labels_true, labels_pred) -> float:
    """Accuracy after the best one-to-one matching of clusters to classes (Hungarian method)."""
    _, yt = np.unique(labels_true, return_inverse=True)
    _, yp = np.unique(labels_pred, return_inverse=True)
    table = np.zeros((yp.max() + 1, yt.max() + 1), dtype=np.int64)
    np.add.at(table, (yp, yt), 1)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / len(yt))


def clustering_scores(labels_true, labels_pred) -> dict:
    """``{"ari", "nmi", "acc"}`` of a clustering against true labels."""
    return {"ari": float(adjusted_rand_score(labels_true, labels_pred)),
            "nmi": float(normalized_mutual_info_score(labels_true, labels_pred)),
            "acc": hungarian_accuracy(labels_true, labels_pred)}


def _describe(X, est, alpha, labels, rms) -> SweepPoint:
    K = est.cluster_centers_.shape[0]
    sizes = tuple(int(s) for s in np.sort(np.bincount(est.labels_, minlength=K))[::-1])
    ratio = tuple(s / sizes[-1] if sizes[-1] > 0 else math.inf for s in sizes)
    C = est.cluster_centers_.astype(np.float64)
    gaps = np.sqrt(((C[:, None, :] - C[None, :, :]) ** 2).sum(-1))[np.triu_indices(K, 1)]
    objective = getattr(est, "objective_", None)
    if objective is None:  # scikit-learn's KMeans: inertia is Σ‖x − c‖², the paper's J is half
        objective = est.inertia_ / 2.0
    point = SweepPoint(alpha, sizes, ratio, float(objective),
                       float(gaps.min() / rms) if gaps.size else math.inf,
                       bool(getattr(est, "converged_", est.n_iter_ < getattr(est, "max_iter", np.inf))),
                       int(est.n_iter_))
    if labels is not None:
        scores = clustering_scores(labels, est.labels_)
        point.ari, point.nmi, point.acc = scores["ari"], scores["nmi"], scores["acc"]
    return point


def alpha_sweep(X, alphas, n_clusters: int, labels=None, random_state=0, method: str = "ekm",
                n_init: int = 10, return_estimators: bool = False, y_fit=None, sharded: bool = False, **kwargs):
    """Fit one clusterer per α and describe each result.

    Args:
        X: data, shape (n_samples, n_features).
        alphas: α values (paper convention for EKM; λ for MEFC).
        n_clusters: K.
        labels: optional true labels (n_samples,) for ARI / NMI / Hungarian accuracy.
        random_state: seed (the same for every α, so only α changes).
        method: a :func:`~aelab.cluster.make_clusterer` method.
        n_init: restarts per α.
        return_estimators: also return the fitted estimators.
        y_fit: labels passed to ``fit`` (``"ssekm"``: −1 for unlabelled rows); None: ``fit(X)``.
        sharded: inside an initialised ``torch.distributed`` group whose every rank holds all of
            X, fit EKM on this rank's block of rows with the sums all-reduced
            (:func:`~aelab.cluster.distributed.fit_on_shard`); the result is the unsharded one.
        **kwargs: passed to the estimator.

    Returns:
        ``list[SweepPoint]`` in the order of ``alphas`` (and the estimators if asked).
        ``[p.as_row() for p in sweep]`` is ready for ``csv.DictWriter``.
    """
    X = np.asarray(X)
    rms = float(np.sqrt(np.mean(np.sum((X - X.mean(axis=0)) ** 2, axis=1)))) or 1.0
    points, estimators = [], []
    for a in alphas:
        a = None if a is None else float(a)  # None: the method's default (kmeans and fkm have no α)
        est = make_clusterer(method, n_clusters, alpha=a, random_state=random_state, n_init=n_init, **kwargs)
        with warnings.catch_warnings():  # the converged flag and sizes record what they would say
            warnings.simplefilter("ignore")
            if sharded:
                from aelab.cluster.distributed import fit_on_shard

                fit_on_shard(est, X, y_fit)
            else:
                est.fit(X) if y_fit is None else est.fit(X, y_fit)
        points.append(_describe(X, est, a, labels, rms))
        estimators.append(est)
    return (points, estimators) if return_estimators else points


def _pick(points, target, min_separation):
    for p in points:
        p.ratio_distance = ratio_distance(p.ratio, target)
    ok = [p for p in points if p.min_separation >= min_separation and math.isfinite(p.ratio_distance)]
    pool = ok or points
    best = min(p.ratio_distance for p in pool)
    # Several α often match equally well (a plateau up to the hard-k-means limit). Take the
    # plateau's start, preferring one whose next-larger α also matches (not a lone fluke): the
    # smallest α at which the centroids separate into the target sizes, so 0.1α shows them
    # merging and 10α shows the hard limit, which is what the α study is meant to show.
    tied = sorted((p for p in pool if p.ratio_distance <= best + 1e-9), key=lambda p: p.alpha)
    order = sorted(pool, key=lambda p: p.alpha)
    for p in tied:
        i = order.index(p)
        if i + 1 < len(order) and order[i + 1] in tied:
            return p, bool(ok)
    return tied[0], bool(ok)


def find_alpha(X, n_clusters: int, target_ratio=(2, 1, 1), labels=None, alphas=None, refine: int = 7,
               min_separation: float = 0.1, random_state=0, method: str = "ekm", n_init: int = 10,
               **kwargs) -> AlphaSearch:
    """The α whose sorted cluster-size ratio is nearest ``target_ratio`` with separated centroids.

    Args:
        X: data, shape (n_samples, n_features) (z-score it first, as the paper does).
        n_clusters: K (must equal the length of ``target_ratio``).
        target_ratio: e.g. ``(2, 1, 1)`` or ``"2:1:1"``; order does not matter.
        labels: optional true labels, only reported (ARI etc.), never used to choose.
        alphas: the coarse grid; default ``α₀ · 10^[-2, -1.5, …, 3]`` with
            ``α₀ = 1 / mean_n ½‖x_n − x̄‖²`` (α₀ = 1 for z-scored 2-D data).
        refine: points of the finer grid spanning ±½ decade around the best coarse α (0: none).
        min_separation: smallest centroid distance, relative to the RMS radius of X, that
            counts as separated.
        random_state, method, n_init, **kwargs: as :func:`alpha_sweep`.

    Returns:
        :class:`AlphaSearch`.
    """
    target = parse_ratio(target_ratio)
    if len(target) != n_clusters:
        raise ValueError(f"target_ratio has {len(target)} parts but n_clusters={n_clusters}.")
    X = np.asarray(X)
    if alphas is None:
        half_var = 0.5 * float(np.mean(np.sum((X - X.mean(axis=0)) ** 2, axis=1))) or 1.0
        alphas = (1.0 / half_var) * 10.0 ** np.arange(-2.0, 3.01, 0.5)
    sweep_kw = dict(labels=labels, random_state=random_state, method=method, n_init=n_init, **kwargs)
    points = alpha_sweep(X, alphas, n_clusters, **sweep_kw)
    best, _ = _pick(points, target, min_separation)
    if refine > 1:
        fine = best.alpha * 10.0 ** np.linspace(-0.5, 0.5, refine)
        seen = [p.alpha for p in points]
        new = [a for a in fine if not any(math.isclose(a, b, rel_tol=1e-9) for b in seen)]
        points += alpha_sweep(X, new, n_clusters, **sweep_kw)
    best, separated = _pick(points, target, min_separation)
    points.sort(key=lambda p: p.alpha)
    return AlphaSearch(best.alpha, points, best, target, separated)


def write_sweep_csv(path, sweep) -> None:
    """Write a sweep as CSV with ``SWEEP_COLUMNS``."""
    from aelab.runs import write_csv

    write_csv(path, SWEEP_COLUMNS, ([p.as_row()[k] for k in SWEEP_COLUMNS] for p in sweep))

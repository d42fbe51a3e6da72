"""Study 2: cluster embeddings (Equilibrium K-Means by default), choose α, draw the clusterings.

``run_cluster_study(ClusterConfig(...)) -> ClusterResult``. It writes into a run folder
(``runs/cluster/N`` or ``out``): ``clusters.csv`` (``filename,label,cluster``), ``metrics.json``,
``alpha_sweep.csv``, ``config.yaml``, ``figures/clusterings.png`` (α, 10α, 0.1α side by side;
colour = cluster, marker shape = true class) and ``figures/ratio_vs_alpha.png``. ``aelab cluster``
is this function with the config's fields as flags; ``aelab run`` calls it for study 2b.

With ``devices > 1`` the study runs in that many processes (Lightning Fabric re-runs the command,
as for the other verbs): every process reads the embeddings, each EKM fit runs on each process's
block of rows with the per-cluster sums all-reduced every iteration (`aelab.cluster.distributed`),
and rank 0 writes the same files one process would.

Example:
    >>> cfg = ClusterConfig(input="runs/embed/1", classes="2,5,8", ratio="2:1:1")
    >>> result = run_cluster_study(cfg)  # doctest: +SKIP
    >>> result.metrics["ari"], result.files["clusters"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from aelab.cluster.inputs import auto_classes, load_embeddings, partial_labels, pick_rows
from aelab.errors import AelabError
from aelab.progress import Stage, info
from aelab.runs import new_run_dir, save_config, write_csv, write_json
from aelab.train.options import RunOptions

__all__ = ["ClusterConfig", "ClusterSettings", "ClusterResult", "auto_classes", "run_cluster_study", "load_embeddings",
           "ALPHA_METHODS"]

ALPHA_METHODS = ("ekm", "ssekm", "mefc", "course-softmax")  # the methods that have an α (MEFC: λ)


@dataclass(kw_only=True)
class ClusterSettings:
    """How the clustering study clusters: the settings `aelab cluster` and study 2b of `aelab run` share.

    Attributes:
        n_clusters: Number of clusters (default: the number of --classes; required without them).
        classes: Comma-separated labels to keep, e.g. 2,5,8; auto = 2,5,8 (the course report's) when those
            labels exist, else the first three labels; none = every row.
        ratio: Subsample the --classes to these proportions, e.g. 2:1:1 (deterministic by --seed).
        alpha: 'auto' (search the alpha whose cluster sizes match --target_ratio) or a number, in
            the paper's convention d = ||x-c||^2/2 (sklekmeans' alpha is half of it); for mefc
            it is lambda, for course-softmax the course report's alpha; ssekm uses the alpha that
            the (label-blind) EKM search picks.
        method: ekm, ssekm (semi-supervised EKM: sees the labels of --label_fraction of each
            class), kmeans, fkm, mefc or course-softmax (the course report's softmax variant,
            not EKM).
        target_ratio: Cluster-size ratio that --alpha auto aims for, e.g. 2:1:1.
        projection: 2-D projection of the figures: pca or tsne.
        standardize: z-score every feature before clustering (as the EKM paper does).
        label_fraction: ssekm only: share of each class's labelled rows whose labels it uses
            (at least one per class; the others count as unlabelled; scores use all rows).
    """

    n_clusters: int | None = None
    classes: str | None = None
    ratio: str | None = None
    alpha: str = "auto"
    method: str = "ekm"
    target_ratio: str = "2:1:1"
    projection: str = "pca"
    standardize: bool = True
    label_fraction: float = 0.1


@dataclass(kw_only=True)
class ClusterConfig(RunOptions, ClusterSettings):
    """Settings of the clustering study (``aelab cluster``): what to cluster, how (`ClusterSettings`), and the
    run options every verb has (`RunOptions`: seed, device, devices, out, ...).

    Attributes:
        input: Embeddings: a run folder of `aelab embed`, a .npy file (optional sibling .csv
            with filename,label) or a .csv with a label column and numeric feature columns.
        device: where EKM runs: auto (cuda when there is one, else the CPU), cpu (numpy) or cuda (its torch
            backend; ekm and ssekm, the other methods stay on the CPU).
        devices: processes (Lightning Fabric; gloo on the CPU, nccl on GPUs): each fits EKM on
            its share of the points and the per-cluster sums are all-reduced every iteration,
            so the result is that of one process; rank 0 writes the files.
    """

    input: str


#: In-memory embeddings ``(X, file names, labels)``, as `load_embeddings` returns them.
Embeddings = tuple[np.ndarray, list[str], list[str]]


@dataclass
class ClusterResult:
    """What the study produced: cluster per row, the metrics written to metrics.json, the α used
    (None for methods without one), the run folder and every file written (name → path)."""

    run_dir: Path
    labels: np.ndarray
    names: list
    true_labels: list
    metrics: dict
    alpha: float | None
    files: dict = field(default_factory=dict)


def _alpha_or_auto(alpha):
    if str(alpha).strip().lower() == "auto":
        return "auto"
    try:
        value = float(alpha)
    except ValueError:
        raise AelabError(f"--alpha must be 'auto' or a positive number, got {alpha!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise AelabError(f"--alpha must be 'auto' or a positive number, got {alpha!r}")
    return value


def _method(name: str) -> str:
    from aelab.cluster.baselines import METHODS, canonical_method

    try:
        return canonical_method(name)
    except ValueError:
        raise AelabError(f"--method must be one of {', '.join(METHODS)}, got {name!r}") from None


def _prepare(cfg: ClusterConfig, embeddings: Embeddings | None = None):
    """Load (unless given), pick and standardise the data; returns ``(X, names, labels, picked, K)``."""
    X_all, names_all, labels_all = load_embeddings(cfg.input) if embeddings is None else embeddings
    rows, picked = pick_rows(labels_all, cfg.classes, cfg.ratio, cfg.seed)
    X = X_all[rows].astype(np.float64)
    names, labels = [names_all[i] for i in rows], [labels_all[i] for i in rows]
    K = cfg.n_clusters
    if K is None:
        if picked is None:
            raise AelabError("--n_clusters is required when --classes is not given")
        K = len(picked)
    if len(X) < max(2, int(K)):
        raise AelabError(f"clustering needs at least {max(2, int(K))} samples (n_clusters={K}), found {len(X)}")
    if not 1 <= int(K) <= len(X):
        raise AelabError(f"--n_clusters must be between 1 and the number of samples ({len(X)}), got {K}")
    if not np.isfinite(X).all():
        raise AelabError(f"{cfg.input}: the embeddings hold NaN or infinite values")
    if cfg.standardize:
        # Divide by the largest magnitude first: data scaled by 1e200 would overflow the variance.
        scale = float(np.abs(X).max())
        X = X / (scale if scale > 0 else 1.0)
        std = X.std(axis=0)
        X = (X - X.mean(axis=0)) / np.where(std > 0, std, 1.0)
    return X, names, labels, picked, int(K)


def _check_alpha_scale(alpha, X: np.ndarray) -> None:
    """α times the largest squared distance must stay a finite number, or every weight underflows."""
    if isinstance(alpha, float):
        spread = float(np.max(np.sum((X - X.mean(axis=0)) ** 2, axis=1))) * 4.0
        if not math.isfinite(alpha * spread) or alpha * spread > 1e300:
            raise AelabError(f"--alpha {alpha:g} is too large for these data (α·distance² overflows); try --alpha auto")


def _launch(cfg, n_samples: int, K: int):
    """``(fabric or None, estimator keywords)``: the processes of ``--devices N`` and where EKM runs.

    ``--device`` and ``--devices`` were checked by the rule table when ``cfg`` was made; the device is
    resolved by `aelab.devices.resolve_device` like every other verb's (``cuda:N`` is GPU N).
    """
    if n_samples // cfg.devices < K:
        raise AelabError(f"{n_samples} samples are too few for {cfg.devices} processes: each needs at least "
                         f"n_clusters={K}; use fewer --devices")
    device = "cpu"
    if cfg.device != "cpu":  # torch only when asked for (importing it takes seconds)
        from aelab.devices import resolve_device

        device = str(resolve_device(cfg.device, mps=False))
    fabric = None
    if cfg.devices > 1:  # every check is done: Fabric re-runs this command in the other processes
        from aelab.train.engine import make_fabric

        fabric = make_fabric(cfg.device if device != "cpu" else "cpu", cfg.devices, precision="32-true")
        device = str(fabric.device)
    estimator = {} if device == "cpu" else dict(backend="torch", device=device)
    return fabric, estimator


def _fit(cfg, method, X, K, y_true, target, y_fit, sharded=False, estimator=None):
    """α search or sweep, then the α / 10α / 0.1α panels; returns ``(alpha, sweep, search, points, fits)``."""
    from aelab.cluster.alpha import alpha_sweep, find_alpha

    has_alpha = method in ALPHA_METHODS
    alpha, search = _alpha_or_auto(cfg.alpha), None
    extra = dict(estimator or {}) if method in ("ekm", "ssekm") else {}
    fit_kw = dict(labels=y_true, method=method, random_state=cfg.seed, y_fit=y_fit, sharded=sharded, **extra)
    if has_alpha and alpha == "auto":
        if len(target) != K:
            raise AelabError(f"--target_ratio {cfg.target_ratio} has {len(target)} parts but n_clusters={K}")
        # ssekm: α from the label-blind EKM search; the labels then guide the fits at that α
        search = find_alpha(X, K, target, labels=y_true, method="ekm" if method == "ssekm" else method,
                            random_state=cfg.seed, sharded=sharded, **extra)
        alpha, sweep = search.alpha, search.sweep
        info(f"[cluster] alpha auto: {alpha:.4g} (sizes {':'.join(map(str, search.best.sizes))})")
    elif has_alpha:
        sweep = alpha_sweep(X, alpha * 10.0 ** np.linspace(-2, 2, 9), K, **fit_kw)
    else:
        alpha, sweep = None, None
    panels = [alpha, 10 * alpha, 0.1 * alpha] if has_alpha else [None]
    points, fits = alpha_sweep(X, panels, K, return_estimators=True, **fit_kw)
    return alpha, sweep if sweep is not None else [points[0]], search, points, fits


def _metrics(cfg, method, X, K, labels, picked, alpha, points, est, search) -> dict:
    from aelab.cluster.alpha import clustering_scores

    point = points[0]
    m = dict(method=method, alpha=alpha, n_clusters=K, n_samples=len(X), n_features=X.shape[1],
             standardize=cfg.standardize, classes=picked, sizes=list(point.sizes), ratio=list(point.ratio),
             objective=point.objective, min_separation=point.min_separation, converged=point.converged,
             n_iter=point.n_iter)
    # The side-by-side panels (α, 10α, 0.1α): sizes, ratio and scores of each, for the report's table.
    m["panels"] = [dict(alpha=p.alpha, sizes=list(p.sizes), ratio=list(p.ratio), ari=p.ari, nmi=p.nmi, acc=p.acc,
                        converged=p.converged, min_separation=p.min_separation) for p in points]
    if method in ("ekm", "ssekm"):
        m["alpha_sklekmeans"] = alpha / 2.0
    if method == "ssekm":
        m["label_fraction"], m["n_labels_used"] = cfg.label_fraction, int(getattr(est, "n_labelled_", 0))
    if picked is not None:
        m["class_counts"] = {c: int(sum(lab == c for lab in labels)) for c in picked}
    known = np.array([lab != "" for lab in labels])
    if known.any():
        m.update(clustering_scores(np.asarray(labels)[known], est.labels_[known]))
        m["n_labelled"] = int(known.sum())
    if search is not None:
        m["search"] = dict(target_ratio=list(search.target_ratio), alpha=search.alpha, separated=search.separated,
                           ratio_distance=search.best.ratio_distance, n_alphas=len(search.sweep))
    return m


def _write(cfg, run_dir, method, X, names, labels, alpha, sweep, target, fits, panels_alpha, metrics) -> dict:
    from aelab.cluster.alpha import write_sweep_csv
    from aelab.cluster.figures import plot_clusterings, plot_ratio_vs_alpha

    files = dict(clusters=run_dir / "clusters.csv", alpha_sweep=run_dir / "alpha_sweep.csv",
                 metrics=run_dir / "metrics.json", config=run_dir / "config.yaml",
                 clusterings=run_dir / "figures" / "clusterings.png")
    write_csv(files["clusters"], ["filename", "label", "cluster"], zip(names, labels, fits[0].labels_.tolist()))
    write_sweep_csv(files["alpha_sweep"], sweep)
    titles = {f"{method} α = {a:.3g}" if a is not None else method: e for a, e in zip(panels_alpha, fits)}
    truth = labels if any(lab != "" for lab in labels) else None
    plot_clusterings(X, titles, projection=cfg.projection, random_state=cfg.seed, path=files["clusterings"],
                     true_labels=truth)
    if alpha is not None:
        files["ratio_vs_alpha"] = run_dir / "figures" / "ratio_vs_alpha.png"
        plot_ratio_vs_alpha(sweep, target, chosen_alpha=alpha, path=files["ratio_vs_alpha"])
    write_json(files["metrics"], metrics)
    return files


def _run_dir(cfg, fabric) -> Path:
    if fabric is None:
        return new_run_dir(cfg.out, "cluster")
    from aelab.train.engine import shared_run_dir

    return shared_run_dir(fabric, cfg.out, "cluster")  # rank 0 creates it, every rank gets its path


def run_cluster_study(cfg: ClusterConfig, embeddings: Embeddings | None = None) -> ClusterResult:
    """Cluster embeddings, choose α, write the run folder; see :class:`ClusterConfig`.

    ``embeddings`` = ``(X, names, labels)`` already in memory (``aelab run`` passes what it just
    embedded); ``cfg.input`` then only names their source in config.yaml.
    """
    from aelab.cluster.alpha import parse_ratio
    from aelab.train.options import validate_options

    validate_options(cfg)  # --seed, --device, --devices by the rules every verb uses, before any folder exists
    method = _method(cfg.method)
    if cfg.projection not in ("pca", "tsne"):
        raise AelabError(f"--projection must be pca or tsne, got {cfg.projection!r}")
    _alpha_or_auto(cfg.alpha)
    X, names, labels, picked, K = _prepare(cfg, embeddings)
    _check_alpha_scale(_alpha_or_auto(cfg.alpha), X)
    known = np.array([lab != "" for lab in labels])
    y_true = np.unique(np.asarray(labels), return_inverse=True)[1] if known.all() else None
    if method == "ssekm" and not known.any():
        raise AelabError("--method ssekm needs labels (a filename,label CSV beside the embeddings)")
    y_fit = partial_labels(labels, cfg.label_fraction, cfg.seed) if method == "ssekm" else None
    try:
        target = parse_ratio(cfg.target_ratio)
    except ValueError as exc:
        raise AelabError(str(exc)) from None
    if method in ALPHA_METHODS and _alpha_or_auto(cfg.alpha) == "auto" and len(target) != K:
        raise AelabError(f"--target_ratio {cfg.target_ratio} has {len(target)} parts but n_clusters={K}")
    fabric, estimator = _launch(cfg, len(X), K)
    run_dir = _run_dir(cfg, fabric)  # after every check: a refused run leaves no folder
    if fabric is None or fabric.global_rank == 0:
        save_config(run_dir, asdict(cfg) | dict(out=str(run_dir), n_clusters=K, method=method))
    info(f"[cluster] {len(X)} samples x {X.shape[1]} features, K={K}, method={method}"
         + (f", {fabric.world_size} processes" if fabric is not None else ""))
    with Stage("cluster"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence is recorded in metrics.json and alpha_sweep.csv
        alpha, sweep, search, points, fits = _fit(cfg, method, X, K, y_true, target, y_fit, fabric is not None,
                                                  estimator)
    if fabric is not None and fabric.global_rank != 0:  # only rank 0 writes
        return ClusterResult(run_dir, fits[0].labels_, names, labels, {}, alpha, {})
    metrics = _metrics(cfg, method, X, K, labels, picked, alpha, points, fits[0], search)
    panels_alpha = [alpha, 10 * alpha, 0.1 * alpha] if alpha is not None else [None]
    files = _write(cfg, run_dir, method, X, names, labels, alpha, sweep, target, fits, panels_alpha, metrics)
    summary = f"ARI {metrics['ari']:.3f}" if "ari" in metrics else "no labels"
    info(f"[cluster] sizes {':'.join(map(str, points[0].sizes))}, {summary} -> {run_dir}")
    return ClusterResult(run_dir, fits[0].labels_, names, labels, metrics, alpha, files)

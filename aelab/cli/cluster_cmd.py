"""``aelab cluster``: cluster embeddings with Equilibrium K-Means and tune α to a size ratio.

Writes into a run folder (``runs/cluster/N`` or ``--out``): ``clusters.csv``
(``filename,label,cluster``), ``metrics.json``, ``alpha_sweep.csv``, ``config.yaml`` and
``figures/clusterings.png`` (α, 10α, 0.1α side by side) and ``figures/ratio_vs_alpha.png``.
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np

from aelab.errors import AelabError
from aelab.progress import Stage, info
from aelab.runs import new_run_dir, save_config, write_csv, write_json

__all__ = ["cluster", "load_embeddings"]

ALPHA_METHODS = ("ekm", "mefc", "seed-softmax")  # the methods that have an α (MEFC: λ)


def _read_label_csv(path: Path) -> tuple[list[str], list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows and "label" not in rows[0]:
        raise AelabError(f"{path} has no 'label' column (expected filename,label)")
    return [r.get("filename") or str(i) for i, r in enumerate(rows)], [(r.get("label") or "").strip() for r in rows]


def _read_feature_csv(path: Path) -> tuple[np.ndarray, list[str], list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        rows = list(reader)
    if not header or not rows:
        raise AelabError(f"{path} is empty (expected a header and one row per sample)")
    cols = [c.strip() for c in header]
    feat = [i for i, c in enumerate(cols) if c not in ("filename", "label")]
    try:
        X = np.array([[float(r[i]) for i in feat] for r in rows], dtype=np.float64)
    except (ValueError, IndexError):
        raise AelabError(f"{path}: feature columns must be numbers (only 'filename' and 'label' may be text)") from None
    get = lambda name, default: [r[cols.index(name)].strip() if name in cols else default(i) for i, r in enumerate(rows)]  # noqa: E731
    return X, get("filename", str), get("label", lambda i: "")


def load_embeddings(path: str | Path) -> tuple[np.ndarray, list[str], list[str]]:
    """Embeddings ``(N, D)``, file names and labels ('' when unknown) from a file or run folder.

    Accepts a run folder of ``aelab embed`` (``embeddings.npy`` + ``embeddings.csv``), a ``.npy``
    file (with an optional sibling ``<stem>.csv`` of ``filename,label``), or a ``.csv`` with a
    ``label`` column, an optional ``filename`` column and numeric feature columns.
    """
    path = Path(path)
    if not path.exists():
        raise AelabError(f"input not found: {path}")
    if path.is_dir():
        if not (path / "embeddings.npy").is_file():
            raise AelabError(f"no embeddings.npy in {path} (expected a run folder of `aelab embed`)")
        path = path / "embeddings.npy"
    if path.suffix == ".csv":
        X, names, labels = _read_feature_csv(path)
    elif path.suffix == ".npy":
        try:
            X = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise AelabError(f"cannot read {path}: {exc}") from None
        side = path.with_suffix(".csv")
        names, labels = _read_label_csv(side) if side.is_file() else ([str(i) for i in range(len(X))], [""] * len(X))
    else:
        raise AelabError(f"unsupported input {path}: expected a .npy or .csv file or a run folder of `aelab embed`")
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise AelabError(f"{path}: expected a non-empty 2-D array (samples x features), got shape {X.shape}")
    if len(names) != len(X):
        raise AelabError(f"{path}: {len(X)} embeddings but {len(names)} rows of filename,label")
    if not np.issubdtype(X.dtype, np.number):
        raise AelabError(f"{path}: embeddings must be numbers, got dtype {X.dtype}")
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise AelabError(f"{path}: {int(bad.sum())} rows contain NaN or inf (first: row {int(np.argmax(bad))})")
    return X, names, labels


def _pick(X, names, labels, classes, ratio, seed):
    """Keep the rows of the chosen classes, subsampled to ``ratio`` (deterministic by seed)."""
    if classes is None:
        if ratio is not None:
            raise AelabError("--ratio needs --classes (the classes the ratio refers to, in order)")
        return np.arange(len(X)), None
    wanted = [c.strip() for c in str(classes).split(",") if c.strip()]
    present = sorted(set(labels) - {""})
    for c in wanted:
        if c not in present:
            raise AelabError(f"unknown class {c!r}; the labels are: {', '.join(present) or '(none)'}")
    if len(set(wanted)) != len(wanted):
        raise AelabError(f"--classes lists a class twice: {classes}")
    lab = np.asarray(labels)
    members = [np.flatnonzero(lab == c) for c in wanted]
    if ratio is not None:
        from aelab.cluster.alpha import parse_ratio

        try:
            parts = parse_ratio(ratio)
        except ValueError as exc:
            raise AelabError(str(exc)) from None
        if len(parts) != len(wanted):
            raise AelabError(f"--ratio {ratio} has {len(parts)} parts but --classes names {len(wanted)}")
        unit = min(len(m) / r for m, r in zip(members, parts))
        rng = np.random.default_rng(seed)
        members = [np.sort(rng.choice(m, max(1, int(math.floor(unit * r + 1e-9))), replace=False))
                   for m, r in zip(members, parts)]
    return np.sort(np.concatenate(members)), wanted


def _alpha_or_auto(alpha: str):
    if str(alpha).strip().lower() == "auto":
        return "auto"
    try:
        value = float(alpha)
    except ValueError:
        raise AelabError(f"--alpha must be 'auto' or a positive number, got {alpha!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise AelabError(f"--alpha must be 'auto' or a positive number, got {alpha!r}")
    return value


def cluster(input: str, out: str | None = None, n_clusters: int | None = None, classes: str | None = None,
            ratio: str | None = None, alpha: str = "auto", method: str = "ekm", target_ratio: str = "2:1:1",
            seed: int = 0, projection: str = "pca", standardize: bool = True) -> Path:
    """Cluster embeddings (Equilibrium K-Means by default), choose α, and draw the clusterings.

    Args:
        input: Embeddings: a run folder of `aelab embed`, a .npy file (optional sibling .csv
            with filename,label) or a .csv with a label column and numeric feature columns.
        out: Run folder to write (default: the next runs/cluster/N).
        n_clusters: Number of clusters (default: the number of --classes; required without them).
        classes: Comma-separated labels to keep, e.g. 2,5,8.
        ratio: Subsample the --classes to these proportions, e.g. 2:1:1 (deterministic by --seed).
        alpha: 'auto' (search the alpha whose cluster sizes match --target_ratio) or a number, in
            the paper's convention d = ||x-c||^2/2 (sklekmeans' alpha is half of it); for mefc
            it is lambda, for seed-softmax the seed's alpha.
        method: ekm, kmeans, fkm, mefc or seed-softmax (the seed report's softmax variant, not EKM).
        target_ratio: Cluster-size ratio that --alpha auto aims for, e.g. 2:1:1.
        seed: Random seed for subsampling and initialisation.
        projection: 2-D projection of the figures: pca or tsne.
        standardize: z-score every feature before clustering (as the EKM paper does).

    Returns:
        The run folder.
    """
    from aelab.cluster import METHODS, alpha_sweep, clustering_scores, find_alpha, write_sweep_csv
    from aelab.cluster.alpha import parse_ratio
    from aelab.cluster.figures import plot_clusterings, plot_ratio_vs_alpha

    if method not in METHODS:
        raise AelabError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if projection not in ("pca", "tsne"):
        raise AelabError(f"--projection must be pca or tsne, got {projection!r}")
    alpha_value = _alpha_or_auto(alpha)
    X_all, names_all, labels_all = load_embeddings(input)
    rows, picked = _pick(X_all, names_all, labels_all, classes, ratio, seed)
    X = X_all[rows].astype(np.float64)
    names, labels = [names_all[i] for i in rows], [labels_all[i] for i in rows]
    if n_clusters is None:
        if picked is None:
            raise AelabError("--n_clusters is required when --classes is not given")
        n_clusters = len(picked)
    if not 1 <= int(n_clusters) <= len(X):
        raise AelabError(f"--n_clusters must be between 1 and the number of samples ({len(X)}), got {n_clusters}")
    K = int(n_clusters)
    if standardize:
        std = X.std(axis=0)
        X = (X - X.mean(axis=0)) / np.where(std > 0, std, 1.0)
    known = np.array([lab != "" for lab in labels])
    y = np.unique(np.asarray(labels), return_inverse=True)[1] if known.all() else None
    has_alpha = method in ALPHA_METHODS
    try:
        target = parse_ratio(target_ratio)
    except ValueError as exc:
        raise AelabError(str(exc)) from None
    run_dir = new_run_dir(out, "cluster")
    save_config(run_dir, dict(input=input, out=str(run_dir), n_clusters=K, classes=classes, ratio=ratio, alpha=alpha,
                              method=method, target_ratio=target_ratio, seed=seed, projection=projection,
                              standardize=standardize))
    info(f"[cluster] {len(X)} samples x {X.shape[1]} features, K={K}, method={method}")
    search = None
    with Stage("cluster"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence is recorded in metrics.json and alpha_sweep.csv
        if has_alpha and alpha_value == "auto":
            if len(target) != K:
                raise AelabError(f"--target_ratio {target_ratio} has {len(target)} parts but n_clusters={K}")
            search = find_alpha(X, K, target, labels=y, method=method, random_state=seed)
            alpha_value, sweep = search.alpha, search.sweep
            info(f"[cluster] alpha auto: {alpha_value:.4g} (sizes {':'.join(map(str, search.best.sizes))})")
        elif has_alpha:
            sweep = alpha_sweep(X, alpha_value * 10.0 ** np.linspace(-2, 2, 9), K, labels=y, method=method,
                                random_state=seed)
        else:
            alpha_value = None
        panels = [alpha_value, 10 * alpha_value, 0.1 * alpha_value] if has_alpha else [None]
        fits = alpha_sweep(X, panels, K, labels=y, method=method, random_state=seed, return_estimators=True)
        point, est = fits[0][0], fits[1][0]
        if not has_alpha:
            sweep = [point]
    write_csv(run_dir / "clusters.csv", ["filename", "label", "cluster"], zip(names, labels, est.labels_.tolist()))
    write_sweep_csv(run_dir / "alpha_sweep.csv", sweep)
    titles = {f"{method} α = {a:.3g}" if a is not None else method: e for a, e in zip(panels, fits[1])}
    plot_clusterings(X, titles, projection=projection, random_state=seed, path=run_dir / "figures" / "clusterings.png")
    if has_alpha:
        plot_ratio_vs_alpha(sweep, target, chosen_alpha=alpha_value, path=run_dir / "figures" / "ratio_vs_alpha.png")
    metrics = dict(method=method, alpha=alpha_value, n_clusters=K, n_samples=len(X), n_features=X.shape[1],
                   standardize=standardize, classes=picked, sizes=list(point.sizes), ratio=list(point.ratio),
                   objective=point.objective, min_separation=point.min_separation, converged=point.converged,
                   n_iter=point.n_iter)
    # The side-by-side panels (α, 10α, 0.1α): sizes, ratio and scores of each, for the report's table.
    metrics["panels"] = [dict(alpha=p.alpha, sizes=list(p.sizes), ratio=list(p.ratio), ari=p.ari, nmi=p.nmi, acc=p.acc,
                              converged=p.converged, min_separation=p.min_separation) for p in fits[0]]
    if method == "ekm":
        metrics["alpha_sklekmeans"] = alpha_value / 2.0
    if picked is not None:
        metrics["class_counts"] = {c: int(sum(lab == c for lab in labels)) for c in picked}
    if known.any():
        metrics.update(clustering_scores(np.asarray(labels)[known], est.labels_[known]))
        metrics["n_labelled"] = int(known.sum())
    if search is not None:
        metrics["search"] = dict(target_ratio=list(search.target_ratio), alpha=search.alpha, separated=search.separated,
                                 ratio_distance=search.best.ratio_distance, n_alphas=len(search.sweep))
    write_json(run_dir / "metrics.json", metrics)
    summary = f"ARI {metrics['ari']:.3f}" if "ari" in metrics else "no labels"
    info(f"[cluster] sizes {':'.join(map(str, point.sizes))}, {summary} -> {run_dir}")
    return run_dir

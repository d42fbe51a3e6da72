"""Study 2's inputs: embeddings from a file or run folder, the classes clustered, their subsampling to a
ratio, and the partial labels of semi-supervised EKM."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from aelab.errors import AelabError

__all__ = ["auto_classes", "load_embeddings", "partial_labels", "pick_rows"]


def _read_label_csv(path: Path) -> tuple[list[str], list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows and "label" not in rows[0]:
        raise AelabError(f"{path} has no 'label' column (expected filename,label)")
    return ([r.get("filename") or str(i) for i, r in enumerate(rows)],
            [(r.get("label") or "").strip() for r in rows])


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

    def get(name, default):
        return [r[cols.index(name)].strip() if name in cols else default(i) for i, r in enumerate(rows)]

    return X, get("filename", str), get("label", lambda i: "")


def _check_embeddings(path, X, names) -> None:
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise AelabError(f"{path}: expected a non-empty 2-D array (samples x features), got shape {X.shape}")
    if len(names) != len(X):
        raise AelabError(f"{path}: {len(X)} embeddings but {len(names)} rows of filename,label")
    if not np.issubdtype(X.dtype, np.number):
        raise AelabError(f"{path}: embeddings must be numbers, got dtype {X.dtype}")
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise AelabError(f"{path}: {int(bad.sum())} rows contain NaN or inf (first: row {int(np.argmax(bad))})")


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
        names, labels = (_read_label_csv(side) if side.is_file()
                         else ([str(i) for i in range(len(X))], [""] * len(X)))
    else:
        raise AelabError(f"unsupported input {path}: expected a .npy or .csv file or a run folder of `aelab embed`")
    _check_embeddings(path, X, names)
    return X, names, labels


def _subsample(members, ratio, seed):
    from aelab.cluster.alpha import parse_ratio

    try:
        parts = parse_ratio(ratio)
    except ValueError as exc:
        raise AelabError(str(exc)) from None
    if len(parts) != len(members):
        raise AelabError(f"--ratio {ratio} has {len(parts)} parts but --classes names {len(members)}")
    unit = min(len(m) / r for m, r in zip(members, parts))
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(m, max(1, int(math.floor(unit * r + 1e-9))), replace=False))
            for m, r in zip(members, parts)]


def auto_classes(labels) -> list[str]:
    """``--classes auto``: the course report's 2, 5, 8 when those labels exist, else the first three labels."""
    from aelab.data import natural_key

    present = sorted(set(labels) - {""}, key=natural_key)
    if len(present) < 3:
        raise AelabError(f"--classes auto needs at least three labels, found {len(present)}")
    return ["2", "5", "8"] if {"2", "5", "8"} <= set(present) else present[:3]


def pick_rows(labels, classes, ratio, seed):
    """Rows of the chosen classes, subsampled to ``ratio`` (deterministic by seed), and the class list."""
    if classes is not None and str(classes).strip().lower() == "auto":
        classes = ",".join(auto_classes(labels))
    if classes is None:
        if ratio is not None:
            raise AelabError("--ratio needs --classes (the classes the ratio refers to, in order)")
        return np.arange(len(labels)), None
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
        members = _subsample(members, ratio, seed)
    return np.sort(np.concatenate(members)), wanted


def partial_labels(labels, fraction: float, seed: int) -> np.ndarray:
    """``y`` for semi-supervised EKM: class codes for ``fraction`` of each class's rows, −1 elsewhere."""
    if not 0 < fraction <= 1:
        raise AelabError(f"--label_fraction must be in (0, 1], got {fraction}")
    lab = np.asarray(labels)
    y = np.full(len(lab), -1)
    rng = np.random.default_rng(seed)
    for code, c in enumerate(sorted(set(labels) - {""})):
        rows = np.flatnonzero(lab == c)
        y[rng.choice(rows, max(1, int(round(fraction * len(rows)))), replace=False)] = code
    return y

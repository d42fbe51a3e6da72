"""Study 3's images from folders: the normal images to fit on and the labelled evaluation set.

Data come from explicit folders, from a root in the course layout (``ROOT/anomaly/normal`` and
``ROOT/anomaly/anomalous``) or from a root in the MVTec AD layout (``ROOT/train/good``,
``ROOT/test/<good or defect>``, ``ROOT/ground_truth/<defect>/<name>_mask.png``; see `aelab.data.mvtec`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from aelab.errors import DataError

__all__ = ["EvalSet", "evaluation_set", "fit_normal_folder", "layout_part", "mvtec_data", "relative_names"]


def mvtec_data(root: str | None):
    """The `MVTecData` of ``root`` when it is in the MVTec AD layout, else ``None``."""
    if root is None:
        return None
    from aelab.data.mvtec import is_mvtec, read_mvtec

    return read_mvtec(root) if is_mvtec(root) else None


def layout_part(data: str | None, part: str):
    """A folder of the course layout of ``data`` (`aelab.data.resolve_layout`), or None."""
    if data is None:
        return None
    from aelab.data import resolve_layout

    return getattr(resolve_layout(data), part)


def relative_names(paths: Iterable, base: Path) -> list[str]:
    """Each path relative to ``base`` (POSIX), or as given when it lies outside."""
    base = Path(base).absolute()
    out = []
    for p in paths:
        a = Path(p).absolute()
        out.append(a.relative_to(base).as_posix() if a.is_relative_to(base) else str(p))
    return out


def fit_normal_folder(data: str | None, normal: str | None) -> Path:
    """The folder of normal images to fit on: ``normal``, else ``data``'s train/good (MVTec AD) or anomaly/normal."""
    if normal is not None:
        return Path(normal)
    if data is not None and mvtec_data(data) is not None:
        return Path(data) / "train" / "good"
    folder = layout_part(data, "anomaly_normal")
    if folder is None:
        where = f"{data} has neither train/good (MVTec AD) nor anomaly/normal; " if data else ""
        raise DataError(f"{where}pass --normal DIR (normal images only) or --data ROOT "
                        "(MVTec AD layout or ROOT/anomaly/normal/)")
    return Path(folder)


@dataclass
class EvalSet:
    """Labelled images to evaluate on: paths, 0/1 labels, defect kind (``good`` for normal), display names,
    MVTec masks (or None) and where they came from."""

    paths: list[Path]
    labels: list[int]
    defects: list[str]
    names: list[str]
    masks: list[Path | None] | None = None
    source: dict = field(default_factory=dict)


def _items(data, normal, anomalous, recursive):
    """``(items, base, source, mvtec)``: ``(path, defect, mask)`` of every image."""
    from aelab.data import list_images

    mv = mvtec_data(data) if normal is None and anomalous is None else None
    if mv is not None:
        return list(zip(mv.test, mv.labels, mv.masks)), Path(data) / "test", dict(layout="mvtec", data=str(data)), mv
    normal_dir = normal or layout_part(data, "anomaly_normal")
    anom_dir = anomalous or layout_part(data, "anomaly_anomalous")
    if normal_dir is None or anom_dir is None:
        raise DataError("evaluate needs --normal DIR and --anomalous DIR, or --data ROOT in the MVTec AD layout "
                        "or with ROOT/anomaly/normal and ROOT/anomaly/anomalous")
    items = [(p, "good", None) for p in list_images(normal_dir, recursive=recursive)]
    items += [(p, "anomalous", None) for p in list_images(anom_dir, recursive=recursive)]
    base = Path(normal_dir).parent if Path(normal_dir).parent == Path(anom_dir).parent else None
    return items, base, dict(layout="folders", normal_dir=str(normal_dir), anomalous_dir=str(anom_dir)), None


def evaluation_set(data: str | None, normal: str | None, anomalous: str | None, *, recursive: bool = False,
                   exclude: Iterable[str] = ()) -> tuple[EvalSet, int]:
    """The labelled images of ``data`` (MVTec AD or course layout) or of the ``normal``/``anomalous`` folders,
    without the normal images in ``exclude`` (those a detector was trained on); returns the set and how many
    normal images were left out."""
    trained = {str(Path(p).resolve()) for p in exclude}
    items, base, source, mv = _items(data, normal, anomalous, recursive)
    kept = [it for it in items if it[1] != "good" or str(Path(it[0]).resolve()) not in trained]
    if not any(it[1] == "good" for it in kept):
        raise DataError("no normal test images left (all were used to train the detector, or there are none)")
    paths = [Path(p) for p, _, _ in kept]
    names = relative_names(paths, base) if base is not None else [p.name for p in paths]
    masks = [m for _, _, m in kept] if mv is not None and mv.has_masks else None
    defects = [d for _, d, _ in kept]
    return EvalSet(paths, [int(d != "good") for d in defects], defects, names, masks, source), len(items) - len(kept)

"""Decode image files once, in parallel, into a uint8 array cached on disk.

Every later epoch, command or run over the same files reads one ``.npy`` instead of decoding
thousands of files again. The cache key covers the absolute paths, sizes and mtimes (ns) of the
files, the target size and channels, and the decoder version, so a changed file or setting gives
a new entry. Entries are written atomically (temp file + rename), so a crash never leaves a
half-written cache that a later run would trust.

Example:
    >>> from aelab.data import list_images, load_images
    >>> data = load_images(list_images("demo_data/test"), image_size=32, channels=1)  # doctest: +SKIP
    >>> data.images.shape, data.images.dtype                                            # doctest: +SKIP
    ((500, 1, 32, 32), dtype('uint8'))
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import PIL
from PIL import Image, ImageOps

from aelab.runs import atomic_write
from aelab.data.folders import image_ids, list_images
from aelab.errors import DataError
from aelab.progress import info, progress

__all__ = ["ImageSet", "decode_image", "load_images", "default_cache_dir", "RESAMPLE"]

#: Bump when decoding changes, so old cache entries are not reused.
DECODER_VERSION = 1

#: Resize filter. LANCZOS is antialiased when shrinking (no aliasing of fine detail) and sharp
#: when enlarging; ``reducing_gap`` first box-reduces very large images, which is much faster
#: and visually identical.
RESAMPLE = Image.Resampling.LANCZOS
REDUCING_GAP = 3.0

_SHOW_SKIPPED = 3  # paths named in the one-line warning about skipped files


@dataclass
class ImageSet:
    """Decoded images.

    Attributes:
        images: uint8 ``(N, C, H, W)`` array, one row per kept file, in input order.
        paths: The kept files as given (bad files removed), aligned with ``images``; derive ids
            from these.
        skipped: ``(path, reason)`` for each file that could not be decoded.
        from_cache: Whether the images came from the disk cache.
    """

    images: np.ndarray
    paths: list[Path]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def ids(self) -> list[str]:
        """`image_ids` of the kept files."""
        return image_ids(self.paths)


def default_cache_dir() -> Path:
    """``$AELAB_CACHE_DIR`` when set, else ``~/.cache/aelab``."""
    env = os.environ.get("AELAB_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "aelab"


def _to_uint8_gray(im: Image.Image) -> Image.Image:
    """Scale high bit-depth single-channel images to 8 bits (Pillow's convert("L") clips them)."""
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        scaled = arr.astype(np.float32) / 257.0  # 65535 / 257 == 255 exactly
    elif im.mode == "F" and float(np.nanmax(arr, initial=0.0)) <= 1.0:
        scaled = arr.astype(np.float32) * 255.0  # float images in [0, 1]
    else:
        # 32-bit "I" (older Pillow opens 16-bit PNGs so) or "F": assume 16-bit range if above 8 bits.
        top = float(np.nanmax(arr, initial=0))
        scaled = arr.astype(np.float64) / (257.0 if top > 255 else 1.0)
    return Image.fromarray(np.clip(np.rint(np.nan_to_num(scaled)), 0, 255).astype(np.uint8))


def _convert(im: Image.Image, channels: int) -> Image.Image:
    """Any Pillow mode -> "L" or "RGB"."""
    if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        im = _to_uint8_gray(im)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels are composited on white: dataset images with transparency are
        # usually drawings/logos on a transparent page, which look right on white; black would
        # invent dark backgrounds (and the pixels under alpha=0 are often garbage).
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba).convert("RGB")
    # CMYK, YCbCr, LAB, HSV, "1" and the rest: Pillow's own conversions.
    return im.convert("L" if channels == 1 else "RGB")


def decode_image(path: str | os.PathLike, image_size: int, channels: int) -> np.ndarray:
    """Decode one file to uint8 ``(channels, image_size, image_size)``.

    EXIF orientation is applied, every mode becomes L or RGB (alpha on white, 16-bit scaled),
    and the image is resized (squashed, not cropped, so nothing is cut off) with `RESAMPLE`.

    Raises:
        Exception: Whatever Pillow raises for an unreadable file; `load_images` records it.
    """
    if os.path.getsize(path) == 0:
        raise OSError("empty file (0 bytes)")
    with Image.open(path) as im:
        if im.format == "JPEG":
            # Let libjpeg decode at a reduced scale (>= target size): large photos decode much faster.
            im.draft("L" if channels == 1 else "RGB", (image_size, image_size))
        im.load()  # decode fully here so truncated files fail now, not later
        im = ImageOps.exif_transpose(im)
        im = _convert(im, channels)
        if im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), RESAMPLE, reducing_gap=REDUCING_GAP)
        arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _decode_or_reason(args: tuple[Path, int, int]) -> np.ndarray | str:
    path, image_size, channels = args
    try:
        # Looked up at call time (not bound at import) so tests can count calls by patching it.
        return decode_image(path, image_size, channels)
    except Exception as exc:  # noqa: BLE001 - Pillow plugins raise many types on malformed files
        message = str(exc).splitlines()[0] if str(exc) else ""
        return f"{type(exc).__name__}: {message}".rstrip(": ")


def _cache_key(paths: Sequence[Path], image_size: int, channels: int) -> str:
    entries = []
    for p in paths:
        try:
            st = os.stat(p)
            entries.append([str(p), st.st_size, st.st_mtime_ns])
        except OSError:
            entries.append([str(p), None, None])  # missing now; its reappearance changes the key
    spec = {"v": DECODER_VERSION, "pil": PIL.__version__, "size": image_size, "channels": channels, "files": entries}
    return hashlib.sha256(json.dumps(spec, separators=(",", ":")).encode()).hexdigest()[:32]


def _read_cache(base: Path, n_files: int) -> tuple[np.ndarray, list[int], list[tuple[int, str]]] | None:
    meta_path, npy_path = base.with_suffix(".json"), base.with_suffix(".npy")
    if not (meta_path.is_file() and npy_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        images = np.load(npy_path, allow_pickle=False)
        kept = [int(i) for i in meta["kept"]]
        skipped = [(int(i), str(r)) for i, r in meta["skipped"]]
        if images.shape[0] != len(kept) or len(kept) + len(skipped) != n_files:
            return None
    except (OSError, EOFError, ValueError, KeyError, TypeError):
        return None  # a damaged entry is just a miss; it gets rewritten
    return images, kept, skipped


def _write_cache(base: Path, images: np.ndarray, kept: list[int], skipped: list[tuple[int, str]]) -> None:
    base.parent.mkdir(parents=True, exist_ok=True)
    # The array first, the JSON last: the JSON marks a complete entry.
    for suffix, write in (
        (".npy", lambda fh: np.save(fh, images, allow_pickle=False)),
        (".json", lambda fh: fh.write(json.dumps({"kept": kept, "skipped": skipped}).encode())),
    ):
        atomic_write(base.with_suffix(suffix), write)  # streamed: no second copy of a large array


def _report_skipped(skipped: list[tuple[Path, str]], total: int, strict: bool) -> None:
    if not skipped:
        return
    shown = "; ".join(f"{p} ({reason})" for p, reason in skipped[:_SHOW_SKIPPED])
    more = f"; and {len(skipped) - _SHOW_SKIPPED} more" if len(skipped) > _SHOW_SKIPPED else ""
    if len(skipped) == total:
        raise DataError(f"none of the {total} file(s) could be read as an image: {shown}{more}")
    if strict:
        raise DataError(f"{len(skipped)} of {total} file(s) could not be read as images (strict=True): {shown}{more}")
    warnings.warn(f"skipped {len(skipped)} of {total} unreadable image file(s): {shown}{more}", stacklevel=3)


def load_images(
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    image_size: int,
    channels: int,
    strict: bool = False,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> ImageSet:
    """Decode image files into one uint8 array, using the disk cache when it is current.

    Args:
        paths: Image files (order kept), or a folder (listed with `list_images`).
        image_size: Output height and width.
        channels: 1 or 3.
        strict: Raise on the first unreadable file instead of skipping it with a warning.
        cache_dir: Cache folder; default `default_cache_dir()`.
        workers: Decoding threads; default the CPU count; 0 or 1 decodes in this thread.

    Returns:
        `ImageSet` with ``images`` uint8 ``(N, channels, image_size, image_size)``.

    Raises:
        DataError: No paths, every file unreadable, or any file unreadable with ``strict``.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = list_images(paths)
    given = [Path(p) for p in paths]
    paths = [p.absolute() for p in given]  # the cache key must not depend on the working directory
    if not paths:
        raise DataError("no image files given")
    if channels not in (1, 3) or image_size < 1:
        raise DataError(f"need channels 1 or 3 and a positive image_size, got channels={channels}, image_size={image_size}")
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    base = base / "images" / _cache_key(paths, image_size, channels)

    cached = _read_cache(base, len(paths))
    if cached is not None:
        images, kept, skipped_idx = cached
        from_cache = True
    else:
        images, kept, skipped_idx = _decode_all(paths, image_size, channels, workers)
        from_cache = False
        try:
            _write_cache(base, images, kept, skipped_idx)
        except OSError as exc:  # a read-only or full disk costs speed, not the run
            warnings.warn(f"could not write the image cache {base.parent}: {exc}", stacklevel=2)
    skipped = [(given[i], reason) for i, reason in skipped_idx]
    _report_skipped(skipped, len(paths), strict)
    return ImageSet(images=images, paths=[given[i] for i in kept], skipped=skipped, from_cache=from_cache)


def _decode_all(
    paths: list[Path], image_size: int, channels: int, workers: int | None
) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Decode every file; results are written straight into one preallocated array."""
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    start = time.perf_counter()
    out = np.empty((len(paths), channels, image_size, image_size), dtype=np.uint8)
    kept: list[int] = []
    skipped: list[tuple[int, str]] = []
    jobs = [(p, image_size, channels) for p in paths]

    def collect(results) -> None:
        for i, result in enumerate(progress(results, desc="decoding images", total=len(jobs))):
            if isinstance(result, str):
                skipped.append((i, result))
            else:
                out[len(kept)] = result
                kept.append(i)

    if workers <= 1:
        collect(map(_decode_or_reason, jobs))
    else:
        # Threads suffice: Pillow releases the GIL while decoding and resizing.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            collect(pool.map(_decode_or_reason, jobs))
    if len(paths) >= 100:
        info(f"decoded {len(kept)} images in {time.perf_counter() - start:.1f} s ({workers} threads)")
    return out[: len(kept)].copy() if skipped else out, kept, skipped

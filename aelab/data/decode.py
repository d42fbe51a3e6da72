"""Decode image files once, in parallel and in bounded memory, into a memory-mapped uint8 cache.

Every later epoch, command or run over the same files reads one ``.npy`` instead of decoding
thousands of files again; the array is memory-mapped, so a folder larger than memory is read
row by row on demand (`aelab.data.cache` describes the entries, the key, the size cap and
eviction). Decoding goes chunk by chunk: each finished chunk is written to disk, so memory stays
bounded by a chunk (`CHUNK_BYTES`) plus the images being decoded (`decode_memory_bytes`), and
an interrupted decode of a large folder resumes where it stopped.

Example:
    >>> from aelab.data import list_images, load_images
    >>> data = load_images(list_images("demo_data/test"), image_size=32, channels=1)  # doctest: +SKIP
    >>> data.images.shape, data.images.dtype                                            # doctest: +SKIP
    ((500, 1, 32, 32), dtype('uint8'))
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import PIL
from PIL import Image

from aelab.data.cache import (
    PartialEntry,
    cache_key,
    default_cache_dir,
    entries_dir,
    entry_lock,
    evict,
    max_cache_bytes,
    read_entry,
)
from aelab.data.folders import image_ids, list_images
from aelab.errors import DataError
from aelab.progress import info, progress

__all__ = ["ImageSet", "decode_image", "load_images", "default_cache_dir", "MemoryGate", "decode_memory_bytes",
           "RESAMPLE"]

#: Bump when decoding changes, so old cache entries are not reused.
DECODER_VERSION = 2

#: Most bytes of decoded rows held in memory before they are written to the cache (one chunk).
CHUNK_BYTES = 64 * 2**20
#: Most files per chunk (also how often progress is saved for a resume).
CHUNK_FILES = 4096
#: Default memory for images being decoded at once (``$AELAB_DECODE_MEMORY_MB`` overrides it).
DEFAULT_DECODE_MEMORY_MB = 1024

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


def decode_memory_bytes() -> int:
    """Memory for images being decoded at once: ``$AELAB_DECODE_MEMORY_MB`` MiB, else 1 GiB."""
    from aelab.data.cache import env_number

    return int(max(env_number("AELAB_DECODE_MEMORY_MB", DEFAULT_DECODE_MEMORY_MB), 1.0) * 2**20)


class MemoryGate:
    """Admits decodes while the memory they need fits a budget, so the number of decoding threads
    follows the memory each image needs: many small images at once, one huge image alone.

    A request larger than the whole budget waits until nothing else is in flight, then runs alone.
    """

    def __init__(self, budget: int):
        self.budget, self.in_use, self.peak = int(budget), 0, 0
        self._cond = threading.Condition()

    def acquire(self, need: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.in_use == 0 or self.in_use + need <= self.budget)
            self.in_use += need
            self.peak = max(self.peak, self.in_use)

    def release(self, need: int) -> None:
        with self._cond:
            self.in_use -= need
            self._cond.notify_all()


#: Bytes per pixel Pillow holds for a mode after loading (RGB and friends are stored as 4 bytes).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 4, "PA": 4, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "I": 4, "F": 4}


#: EXIF orientation tag and the transpose that undoes each value (as `PIL.ImageOps.exif_transpose`).
_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _reduce_factor(size: tuple[int, int], image_size: int) -> int:
    """Integer box-reduction that keeps at least ``REDUCING_GAP`` x the target on both sides."""
    return max(1, int(min(size) / (image_size * REDUCING_GAP)))


#: Modes `Image.reduce` accepts (16-bit and palette images are reduced after conversion instead).
_REDUCIBLE = {"L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I", "F"}


def _reduce_in_strips(im: Image.Image, factor: int, strip_bytes: int = 4 * 2**20) -> Image.Image:
    """``im.reduce(factor)`` a strip of whole ``factor``-row blocks at a time (about ``strip_bytes``):
    the same pixels, without the full-size (premultiplied, for alpha) copy Pillow would make."""
    w, h = im.size
    out = Image.new(im.mode, (-(-w // factor), -(-h // factor)))
    step = max(1, strip_bytes // (4 * w * factor)) * factor
    for top in range(0, h, step):
        out.paste(im.crop((0, top, w, min(h, top + step))).reduce(factor), (0, top // factor))
    return out


def _load_and_shrink(src: Image.Image, image_size: int, channels: int) -> np.ndarray:
    """Load, box-reduce a large image first, orient, convert and resize: uint8 ``(H, W[, 3])``."""
    src.load()  # decode fully here so truncated files fail now, not later
    orientation = src.getexif().get(_ORIENTATION, 1)  # read before reduce() drops format tags
    im = src
    factor = _reduce_factor(src.size, image_size)
    if factor > 1 and src.mode in _REDUCIBLE:
        im = _reduce_in_strips(src, factor)
        src.close()  # frees the full-size pixels now, not at the end of the `with` block
    if orientation in _TRANSPOSE:
        im = im.transpose(_TRANSPOSE[orientation])
    im = _convert(im, channels)
    if im.size != (image_size, image_size):
        im = im.resize((image_size, image_size), RESAMPLE, reducing_gap=REDUCING_GAP)
    return np.asarray(im, dtype=np.uint8)


def decode_image(path: str | os.PathLike, image_size: int, channels: int,
                 memory: MemoryGate | None = None) -> np.ndarray:
    """Decode one file to uint8 ``(channels, image_size, image_size)``.

    EXIF orientation is applied, every mode becomes L or RGB (alpha on white, 16-bit scaled),
    and the image is resized (squashed, not cropped, so nothing is cut off) with `RESAMPLE`.
    Large images are shrunk as early as possible to bound memory: JPEGs decode at a reduced
    scale (``draft``), other formats are box-reduced (``Image.reduce``) right after loading,
    before any conversion copies them. ``memory``, when given, admits the decode only when the
    pixels it loads fit the budget (see `MemoryGate`).

    Raises:
        Exception: Whatever Pillow raises for an unreadable file; `load_images` records it.
    """
    if os.path.getsize(path) == 0:
        raise OSError("empty file (0 bytes)")
    with Image.open(path) as src:
        if src.format == "JPEG":
            # Let libjpeg decode at a reduced scale (>= target size): large photos decode much faster.
            src.draft("L" if channels == 1 else "RGB", (image_size, image_size))
        need = src.size[0] * src.size[1] * _MODE_BYTES.get(src.mode, 4)
        if memory is not None:
            memory.acquire(need)
        try:
            arr = _load_and_shrink(src, image_size, channels)
        finally:
            if memory is not None:
                memory.release(need)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _decode_or_reason(args: tuple[Path, int, int, "MemoryGate | None"]) -> np.ndarray | str:
    path, image_size, channels, gate = args
    try:
        # Looked up at call time (not bound at import) so tests can count calls by patching it.
        return decode_image(path, image_size, channels, memory=gate)
    except Exception as exc:  # noqa: BLE001 - Pillow plugins raise many types on malformed files
        message = str(exc).splitlines()[0] if str(exc) else ""
        return f"{type(exc).__name__}: {message}".rstrip(": ")


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
        workers: Decoding threads; default the CPU count (fewer run at once when the images
            need more than `decode_memory_bytes`); 0 or 1 decodes in this thread.

    Returns:
        `ImageSet` with ``images`` uint8 ``(N, channels, image_size, image_size)``: a copy-on-write
        memory map of the cache entry (in memory only when the cache cannot be written).

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
        raise DataError(f"need channels 1 or 3 and a positive image_size, got channels={channels}, "
                        f"image_size={image_size}")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    spec = {"v": DECODER_VERSION, "pil": PIL.__version__, "size": image_size, "channels": channels}
    base = entries_dir(root) / cache_key(paths, spec)
    row_shape = (channels, image_size, image_size)
    try:
        images, kept, skipped_idx, from_cache = _load_cached(base, paths, row_shape, workers)
        evict(root, max_cache_bytes(), keep=base)
    except OSError as exc:  # a read-only or full disk costs speed and memory, not the run
        warnings.warn(f"could not use the image cache {entries_dir(root)}: {exc}; decoding in memory", stacklevel=2)
        images, kept, skipped_idx = _decode_in_memory(paths, row_shape, workers)
        from_cache = False
    skipped = [(given[i], reason) for i, reason in skipped_idx]
    _report_skipped(skipped, len(paths), strict)
    return ImageSet(images=images, paths=[given[i] for i in kept], skipped=skipped, from_cache=from_cache)


def _load_cached(base: Path, paths: list[Path], row_shape: tuple[int, int, int], workers: int | None):
    """``(images, kept, skipped, from_cache)`` from the entry at ``base``, decoding (or finishing
    an interrupted decode) first when it is missing. One process decodes; others wait for it."""
    with entry_lock(base):
        cached = read_entry(base, len(paths), row_shape)
        if cached is not None:
            return (*cached, True)
        entry = PartialEntry(base, len(paths), int(np.prod(row_shape)))
        if entry.done:
            info(f"resuming an interrupted decode: {entry.done} of {len(paths)} files already done")
        _decode_chunks(paths, entry.done, row_shape, workers, entry.append)
        entry.finish(row_shape)
        cached = read_entry(base, len(paths), row_shape)
    if cached is None:
        raise OSError(f"the cache entry {base} could not be read back")
    return (*cached, False)


def _decode_in_memory(paths: list[Path], row_shape: tuple[int, int, int], workers: int | None):
    """``(images, kept, skipped)`` decoded into one in-memory array (no cache)."""
    out = np.empty((len(paths), *row_shape), dtype=np.uint8)
    kept: list[int] = []
    skipped_all: list[tuple[int, str]] = []

    def keep(rows: np.ndarray, skipped: list[tuple[int, str]], done: int) -> None:
        out[len(kept) : len(kept) + len(rows)] = rows
        bad = {i for i, _ in skipped}
        kept.extend(i for i in range(done - len(rows) - len(skipped), done) if i not in bad)
        skipped_all.extend(skipped)

    _decode_chunks(paths, 0, row_shape, workers, keep)
    return (out[: len(kept)].copy() if skipped_all else out), kept, skipped_all


def _default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _decode_chunks(
    paths: list[Path],
    start: int,
    row_shape: tuple[int, int, int],
    workers: int | None,
    sink: Callable[[np.ndarray, list[tuple[int, str]], int], None],
) -> None:
    """Decode ``paths[start:]`` chunk by chunk; ``sink(rows, skipped, done)`` gets each finished chunk.

    At most one chunk of rows (`CHUNK_BYTES`, `CHUNK_FILES`) is held in memory, and decodes run
    concurrently only while the pixels they load fit `decode_memory_bytes` (`MemoryGate`).
    """
    workers = _default_workers() if workers is None else workers
    row_bytes = int(np.prod(row_shape))
    chunk = max(1, min(CHUNK_FILES, CHUNK_BYTES // row_bytes))
    gate = MemoryGate(decode_memory_bytes())
    buffer = np.empty((min(chunk, len(paths) - start), *row_shape), dtype=np.uint8)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        run = map if workers <= 1 else pool.map  # threads suffice: Pillow releases the GIL

        def results() -> Iterator[tuple[int, np.ndarray | str]]:
            for c0 in range(start, len(paths), chunk):
                idx = range(c0, min(len(paths), c0 + chunk))
                yield from zip(idx, run(_decode_or_reason, [(paths[i], row_shape[1], row_shape[0], gate) for i in idx]))

        n_rows, skipped = 0, []
        for i, result in progress(results(), desc="decoding images", total=len(paths) - start):
            if isinstance(result, str):
                skipped.append((i, result))
            else:
                buffer[n_rows] = result
                n_rows += 1
            if (i + 1 - start) % chunk == 0 or i + 1 == len(paths):
                sink(buffer[:n_rows], skipped, i + 1)
                n_rows, skipped = 0, []
    if len(paths) - start >= 100:
        info(f"decoded {len(paths) - start} images in {time.perf_counter() - t0:.1f} s ({workers} threads)")

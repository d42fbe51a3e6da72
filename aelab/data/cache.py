"""The on-disk cache of decoded images: memory-mapped, resumable, keyed safely, bounded in size.

One entry per (file list, target size, channels, decoder) under ``<cache dir>/aelab-cache-v1/``, a
folder aelab creates and marks with a ``CACHEDIR.TAG`` file (the Cache Directory Tagging
Specification, https://bford.info/cachedir/, so backup tools skip it):

- ``<key>.npy``: uint8 ``(N, C, H, W)``, one row per readable file in input order. It is opened
  with ``np.load(mmap_mode="c")``: rows are read from disk when indexed, so a data set larger
  than memory costs no more memory than the rows in use (copy-on-write: writing to the array
  never changes the cache).
- ``<key>.json``: ``{"n_files", "shape", "skipped": [[index, reason], ...]}``, written last: it
  marks a complete entry, and its modification time is the entry's last use (for eviction).
- ``<key>.part`` + ``<key>.progress.json`` while decoding: rows are appended chunk by chunk and
  the progress file records how many files are done, so an interrupted decode resumes from the
  last finished chunk. The ``.part`` file starts with a reserved ``.npy`` header that is filled
  in at the end, so finishing is an in-place header write and a rename, not a copy.
- ``<key>.lock``: held while one process decodes; another process asking for the same entry
  (say, the other ranks of ``--devices N``) waits, then reads it.

The key covers each file's absolute path, size, modification time, inode, device and status
change time (ctime): a file replaced by another of the same size with its modification time
kept (``cp -p``, ``tar``, ``rsync -t``) has a new ctime (and usually a new inode), so it is
decoded again. The cache is capped (``$AELAB_CACHE_MAX_GB``, default `DEFAULT_MAX_GB`) by
evicting the least recently used entries; ``aelab cache clear`` empties it.

Only aelab's own entries are ever deleted: files of the marked folder whose names are an entry's
(`ENTRY_NAME`: a 32-hex-digit key and one of the suffixes above), never a link, a subfolder or
anything else the user keeps there, wherever ``$AELAB_CACHE_DIR`` points. (Before 0.1.1 the
entries lived in ``<cache dir>/images/`` and every file there counted as one; that folder is now
left alone.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from aelab.runs import atomic_write_text

__all__ = [
    "default_cache_dir", "cache_key", "read_entry", "PartialEntry", "entry_lock", "evict", "max_cache_bytes",
    "cache_clear", "DEFAULT_MAX_GB", "CACHE_FOLDER", "ENTRY_NAME", "entries_dir",
]

#: Default size cap of the cache in GiB (``$AELAB_CACHE_MAX_GB`` overrides it).
DEFAULT_MAX_GB = 20.0
#: Bytes reserved at the start of a ``.part`` file for the final ``.npy`` header (version 1.0).
HEADER_BYTES = 128
_MAGIC = b"\x93NUMPY\x01\x00"
#: The folder of the entries inside the cache folder, and the file that marks it as aelab's.
CACHE_FOLDER = "aelab-cache-v1"
TAG_NAME = "CACHEDIR.TAG"
_TAG = ("Signature: 8a477f597d28d172789f06886806bc55\n"
        "# This file is a cache directory tag created by aelab (decoded images; `aelab cache clear` empties it).\n")
#: Names of an entry's files: ``<key>.npy|.json|.part|.progress.json|.lock``, and the atomic
#: writer's temporaries ``.<key>.json.<random>.tmp``. Nothing else in the cache is ever deleted.
ENTRY_NAME = re.compile(r"(?:(?P<key>[0-9a-f]{32})\.(?:npy|json|part|progress\.json|lock)"
                        r"|\.(?P<tmpkey>[0-9a-f]{32})\.(?:json|progress\.json)\.[a-z0-9_]+\.tmp)")


def entries_dir(cache_dir: str | os.PathLike) -> Path:
    """The folder of the entries: ``<cache_dir>/aelab-cache-v1`` (marked by `_mark` when first written)."""
    return Path(cache_dir) / CACHE_FOLDER


def _mark(folder: Path) -> None:
    """Create the entries folder and its ``CACHEDIR.TAG`` (once)."""
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError), open(folder / TAG_NAME, "x", encoding="utf-8") as fh:
        fh.write(_TAG)  # "x": O_EXCL, so never through a link at that name


def _is_marked(folder: Path) -> bool:
    tag = folder / TAG_NAME
    try:
        return (not tag.is_symlink() and tag.is_file()
                and tag.read_text(encoding="utf-8").startswith(_TAG.splitlines()[0]))
    except (OSError, UnicodeDecodeError):
        return False


def default_cache_dir() -> Path:
    """``$AELAB_CACHE_DIR`` when set, else ``~/.cache/aelab``."""
    env = os.environ.get("AELAB_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "aelab"


def max_cache_bytes() -> int:
    """The size cap: ``$AELAB_CACHE_MAX_GB`` GiB (a number), else `DEFAULT_MAX_GB`."""
    return int(max(env_number("AELAB_CACHE_MAX_GB", DEFAULT_MAX_GB), 0.0) * 2**30)


def env_number(name: str, default: float) -> float:
    """A number from the environment variable ``name``; ``default`` when it is unset or not a number."""
    raw = os.environ.get(name)
    try:
        return float(raw) if raw else default
    except ValueError:
        return default


def cache_key(paths: Sequence[Path], spec: dict) -> str:
    """A hex key from ``spec`` (size, channels, decoder version) and each file's identity.

    Hashed file by file (no list of all files' metadata is built: a key over 10^6 files costs
    no memory beyond the paths themselves).
    """
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for p in paths:
        name = str(p)
        try:
            st = os.stat(p)
            ident = f"{st.st_size},{st.st_mtime_ns},{st.st_ctime_ns},{st.st_ino},{st.st_dev}"
        except OSError:
            ident = "missing"  # its reappearance changes the key
        digest.update(f"{len(name)}:{name}|{ident}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """A ``.npy`` version 1.0 header for uint8 C-order ``shape``, exactly `HEADER_BYTES` long."""
    body = ("{'descr': '|u1', 'fortran_order': False, 'shape': %r, }"
            % (tuple(int(s) for s in shape),)).encode("latin1")
    pad = HEADER_BYTES - len(_MAGIC) - 2 - len(body) - 1
    if pad < 0:
        raise ValueError(f"shape {shape} does not fit a {HEADER_BYTES}-byte header")
    return _MAGIC + struct.pack("<H", HEADER_BYTES - len(_MAGIC) - 2) + body + b" " * pad + b"\n"


def read_entry(base: Path, n_files: int, row_shape: tuple[int, ...]):
    """``(images, kept, skipped)`` of a complete entry, or ``None`` when missing or damaged.

    ``images`` is a copy-on-write memory map; reading it marks the entry as recently used.
    """
    meta_path, npy_path = base.with_suffix(".json"), base.with_suffix(".npy")
    if not (meta_path.is_file() and npy_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        skipped = [(int(i), str(r)) for i, r in meta["skipped"]]
        n_kept = n_files - len(skipped)
        if int(meta["n_files"]) != n_files:
            return None
        if n_kept == 0:
            images = np.empty((0, *row_shape), dtype=np.uint8)
        else:
            images = np.load(npy_path, mmap_mode="c", allow_pickle=False)
        if images.shape != (n_kept, *row_shape) or images.dtype != np.uint8:
            return None
        os.utime(meta_path)  # last use, for least-recently-used eviction
    except (OSError, EOFError, ValueError, KeyError, TypeError):
        return None  # a damaged entry is just a miss; it gets rewritten
    bad = {i for i, _ in skipped}
    return images, [i for i in range(n_files) if i not in bad], skipped


class PartialEntry:
    """An entry being decoded: rows appended chunk by chunk, resumable after an interruption.

    Attributes:
        done: files already looked at (decoded or skipped), from a previous attempt or this one.
        kept: rows already in the ``.part`` file.
        skipped: ``(index, reason)`` of the unreadable files among the first ``done``.
    """

    def __init__(self, base: Path, n_files: int, row_bytes: int):
        self.base, self.n_files, self.row_bytes = base, n_files, row_bytes
        self.part, self.progress = base.with_suffix(".part"), base.with_suffix(".progress.json")
        self.done, self.kept, self.skipped = 0, 0, []
        _mark(base.parent)
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            state = json.loads(self.progress.read_text(encoding="utf-8"))
            if state["n_files"] == n_files and state["row_bytes"] == row_bytes and self.part.is_file():
                size = self.part.stat().st_size
                if size >= HEADER_BYTES + state["kept"] * row_bytes:
                    self.done, self.kept = int(state["done"]), int(state["kept"])
                    self.skipped = [(int(i), str(r)) for i, r in state["skipped"]]
        if self.done == 0:
            self.part.write_bytes(b"\0" * HEADER_BYTES)
        with open(self.part, "r+b") as fh:  # drop rows written after the last recorded chunk
            fh.truncate(HEADER_BYTES + self.kept * row_bytes)

    def append(self, rows: np.ndarray, skipped: list[tuple[int, str]], done: int) -> None:
        """Add one decoded chunk (rows on disk first, then the progress record)."""
        with open(self.part, "ab") as fh:
            fh.write(np.ascontiguousarray(rows, dtype=np.uint8).tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        self.kept += len(rows)
        self.skipped.extend(skipped)
        self.done = done
        state = {"n_files": self.n_files, "row_bytes": self.row_bytes, "done": done, "kept": self.kept,
                 "skipped": self.skipped}
        atomic_write_text(self.progress, json.dumps(state))

    def finish(self, row_shape: tuple[int, ...]) -> None:
        """Write the real ``.npy`` header, rename to ``<key>.npy``, then write ``<key>.json``."""
        with open(self.part, "r+b") as fh:
            fh.write(_npy_header((self.kept, *row_shape)))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(self.part, self.base.with_suffix(".npy"))
        meta = {"n_files": self.n_files, "shape": [self.kept, *row_shape], "skipped": self.skipped}
        atomic_write_text(self.base.with_suffix(".json"), json.dumps(meta))
        with contextlib.suppress(OSError):
            self.progress.unlink()


@contextlib.contextmanager
def entry_lock(base: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive lock on one entry (``fcntl.flock``; no lock where it does not exist).

    Yields whether the lock is held (always ``True`` when ``blocking``).
    """
    try:
        import fcntl
    except ImportError:  # Windows: no cross-process lock; the atomic renames still keep entries whole
        yield True
        return
    _mark(base.parent)
    with open(base.with_suffix(".lock"), "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _entries(folder: Path) -> dict[str, list[Path]]:
    """Files of each entry, by key: only in a folder aelab marked, only regular files (not links)
    named as an entry's (`ENTRY_NAME`; atomic-write temporaries included)."""
    groups: dict[str, list[Path]] = {}
    if not _is_marked(folder):
        return groups
    for f in os.scandir(folder):
        match = ENTRY_NAME.fullmatch(f.name)
        if match and f.is_file(follow_symlinks=False):
            groups.setdefault(match["key"] or match["tmpkey"], []).append(Path(f.path))
    return groups


def evict(cache_dir: Path, max_bytes: int, keep: Path | None = None) -> int:
    """Delete least recently used entries until the cache is at most ``max_bytes``; returns bytes freed.

    ``keep`` (the entry just used) and entries another process is decoding are never deleted, nor
    anything that is not an entry's file (see `_entries`).
    """
    folder = entries_dir(cache_dir)
    groups = _entries(folder)
    sizes, used = {}, {}
    for key, files in groups.items():
        stats = []
        for f in files:
            with contextlib.suppress(OSError):
                stats.append(f.lstat())
        sizes[key] = sum(s.st_size for s in stats)
        used[key] = max((s.st_mtime for s in stats), default=0.0)
    total, freed = sum(sizes.values()), 0
    for key in sorted(groups, key=used.get):
        if total - freed <= max_bytes:
            break
        if keep is not None and key == keep.name:
            continue
        with entry_lock(folder / key, blocking=False) as held:
            if not held:
                continue
            for f in groups[key]:
                if f.suffix != ".lock":
                    with contextlib.suppress(OSError):
                        f.unlink()
        freed += sizes[key]
    return freed


def cache_clear(cache_dir: str | None = None) -> None:
    """Delete every decoded-image cache entry (entries being written by a running command are kept).

    Only aelab's entries are deleted (files named as an entry's in the marked ``aelab-cache-v1``
    folder), never other files kept in the cache folder.

    Args:
        cache_dir: cache folder; default $AELAB_CACHE_DIR, else ~/.cache/aelab.
    """
    from aelab.progress import info

    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    freed = evict(root, 0)
    info(f"aelab cache: freed {freed / 2**20:.1f} MiB in {entries_dir(root)}")

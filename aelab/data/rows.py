"""Rows of decoded images read by index, so that training on a folder larger than memory stays bounded.

`RowReader` gathers the rows of one batch from one or more uint8 arrays ``(N, C, H, W)``: an
in-memory array, a tensor, or the memory map of a decode-cache entry (`aelab.data.load_images`).
Nothing is copied up front; a batch costs its own rows only.

The rows of a memory-mapped cache entry are read from its ``.npy`` file with positional reads
(``os.preadv``, one call per run of consecutive rows) into the batch's own buffer, not through the
mapping: touching a mapping makes the kernel map whole neighbourhoods of the file into the
process (a shuffled batch of 64 rows of a 48 MiB entry mapped ~36 MiB here), so an epoch would
grow the resident set (``VmRSS``) to the file's size, and schedulers that watch RSS would see a
process as large as the data set. Read this way, neither private memory nor the resident set
grows with the data; the file's pages stay in the kernel's page cache, which it can drop.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

__all__ = ["RowReader", "as_reader"]


class _FileRows:
    """The rows of an ``.npy`` memory map, read from its file by position (no mapping)."""

    def __init__(self, filename: str, offset: int, shape: tuple[int, ...], dtype: np.dtype):
        self.filename, self.offset, self.shape, self.dtype = filename, offset, shape, np.dtype(dtype)
        self.row_bytes = int(np.prod(shape[1:])) * self.dtype.itemsize
        self.fd = os.open(filename, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (increasing order is fastest: consecutive rows are one read)."""
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        buf, rb = memoryview(out).cast("B"), self.row_bytes
        cuts = np.flatnonzero(np.diff(rows) != 1) + 1
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(rows)]):
            view, pos = buf[a * rb : b * rb], self.offset + int(rows[a]) * rb
            while len(view):
                n = os.preadv(self.fd, [view], pos)
                if n <= 0:
                    raise OSError(f"{self.filename} ended early: the cache entry was truncated")
                view, pos = view[n:], pos + n
        return out

    def __reduce__(self):  # pickled (a DataLoader worker under spawn) as "reopen the file", not its bytes
        return _FileRows, (self.filename, self.offset, self.shape, self.dtype)

    def __del__(self):
        fd, self.fd = getattr(self, "fd", None), None
        if fd is not None:
            os.close(fd)


def _source(images):
    """A `_FileRows` for a whole ``np.memmap`` (as `load_images` returns it), else ``images`` itself."""
    if isinstance(images, np.memmap) and images.filename and hasattr(os, "preadv"):
        whole = images.base is not None and not isinstance(images.base, np.ndarray)  # not a view
        if whole and images.flags.c_contiguous and images.size:
            return _FileRows(images.filename, int(images.offset), tuple(images.shape), images.dtype)
    return images


class RowReader:
    """Rows of one or more image arrays, concatenated, read by index a batch at a time.

    Args:
        parts: an array ``(N, ...)`` (numpy, ``np.memmap`` or tensor), or a sequence of arrays
            with the same row shape, seen as their concatenation. A memory-mapped part is read
            from its file (writes made to the caller's copy-on-write map are not seen).
    """

    def __init__(self, parts):
        parts = list(parts) if isinstance(parts, (list, tuple)) else [parts]
        if not parts:
            raise ValueError("RowReader needs at least one array")
        self.parts = [_source(p) for p in parts]
        self.row_shape = tuple(parts[0].shape[1:])
        self.dtype = parts[0].dtype
        if any(tuple(p.shape[1:]) != self.row_shape for p in parts):
            raise ValueError(f"every part needs rows of shape {self.row_shape}")
        self.starts = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.row_shape)

    def gather(self, rows) -> torch.Tensor:
        """Rows ``rows`` (any order, repeats allowed) as one new tensor, in that order.

        Each part is read in increasing row order (sequential on disk), then put back in order.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        if len(self.parts) == 1 and isinstance(self.parts[0], torch.Tensor):
            return self.parts[0][torch.from_numpy(rows)]
        out = np.empty((len(rows), *self.row_shape), dtype=_numpy_dtype(self.dtype))
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        bounds = np.searchsorted(ordered, self.starts)
        for k, part in enumerate(self.parts):
            lo, hi = bounds[k], bounds[k + 1]
            if hi > lo:
                out[order[lo:hi]] = self._read(part, ordered[lo:hi] - self.starts[k])
        return torch.from_numpy(out)

    @staticmethod
    def _read(part, local: np.ndarray) -> np.ndarray:
        if isinstance(part, _FileRows):
            return part.read(local)
        if isinstance(part, torch.Tensor):
            return part[torch.from_numpy(local)].numpy()
        return part[local]


def _numpy_dtype(dtype) -> np.dtype:
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).numpy().dtype
    return np.dtype(dtype)


def as_reader(images: "RowReader | np.ndarray | torch.Tensor | Sequence") -> RowReader:
    """``images`` itself when it is a `RowReader`, else a new one over it."""
    return images if isinstance(images, RowReader) else RowReader(images)

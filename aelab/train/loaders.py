"""Batches straight from the decoded uint8 array (or its memory map): one gather per batch, no per-image Python work."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from aelab.data.rows import as_reader

__all__ = ["UInt8Dataset", "EpochShuffleSampler", "fit_input_layer", "make_loader", "split_indices"]


class UInt8Dataset(Dataset):
    """Rows ``index`` of images ``(N, C, H, W)`` uint8 (and optional int64 labels), read a whole batch at a time.

    ``images`` is not copied: it may be the memory map of the decode cache (or a `RowReader`
    over several arrays), and a batch reads only its own rows (`aelab.data.RowReader`), so memory
    does not grow with the data set. ``labels`` are aligned with ``images`` (row ``index[i]`` has
    label ``labels[index[i]]``). ``__getitems__`` lets the standard ``DataLoader`` (and so
    Lightning's distributed sampler injection: each rank reads only its share) fetch a batch with
    one gather instead of N ``__getitem__`` calls and a collate.
    """

    def __init__(self, images, labels: np.ndarray | torch.Tensor | None = None, index: np.ndarray | None = None):
        self.rows = as_reader(images)
        self.index = None if index is None else np.asarray(index, dtype=np.int64)
        self.labels = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.rows) if self.index is None else len(self.index)

    def __getitem__(self, i: int) -> Any:
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor]:
        rows = np.asarray(idx, dtype=np.int64)
        if self.index is not None:
            rows = self.index[rows]
        x = self.rows.gather(rows)
        if self.labels is None:
            return (x,)
        return x, self.labels[torch.from_numpy(rows)]


def _as_batch(batch: Any) -> Any:
    return batch


class EpochShuffleSampler(Sampler[int]):
    """A permutation that depends only on (seed, epoch), so a resumed run sees the same batches.

    The epoch is set through ``shuffle_epoch`` rather than ``set_epoch``: Fabric's loader wrapper
    calls ``set_epoch`` with its own count of ``iter()`` calls, which restarts at 0 on resume.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.shuffle_epoch = n, seed, shuffle, 0

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.shuffle_epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def make_loader(
    images,
    labels: np.ndarray | None = None,
    batch_size: int = 64,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    index: np.ndarray | None = None,
) -> DataLoader:
    """A ``DataLoader`` over rows ``index`` (default all) of uint8 images; batches are ``(x_uint8,)`` or
    ``(x_uint8, y)``.

    ``images``: an array, tensor, memory map or `aelab.data.RowReader`; rows are read per batch.
    """
    ds = UInt8Dataset(images, labels, index)
    sampler = EpochShuffleSampler(len(ds), seed, shuffle)
    # Never drop the only batch of a tiny data set.
    drop = drop_last and len(ds) > batch_size
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, collate_fn=_as_batch, drop_last=drop)


def split_indices(
    n: int, val_fraction: float, seed: int, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/validation split; stratified by class when labels are given.

    Every class keeps at least one training image; a class with one image has no validation image.
    """
    rng = np.random.default_rng(seed)
    if val_fraction <= 0 or n < 2:
        return np.arange(n), np.array([], dtype=np.int64)
    if labels is None:
        perm = rng.permutation(n)
        n_val = max(1, int(round(n * val_fraction)))
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(len(idx) - 1, int(round(len(idx) * val_fraction)))
        n_val = max(n_val, 1 if len(idx) >= 2 else 0)
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


def fit_input_layer(raw_model, prep, images, seed: int = 0, sample: int = 256):
    """Fit what the network's input depends on to the training images, before training from random weights.

    The per-channel mean/std of ``images`` (from up to 2,000 of them) become the preprocessing's (stored with the
    model), and the network's fixed first layer (whitening or k-means), if it has one, is fitted on the patches of
    up to ``sample`` of them. Returns the new `Preprocessing`.
    """
    prep = prep.fitted(images, seed=seed)
    if getattr(raw_model, "stem", None) is not None:
        n = len(images)
        rows = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
        x = images.gather(rows) if hasattr(images, "gather") else torch.from_numpy(np.asarray(images[rows]))
        raw_model.fit_stem(prep.model_input(x), seed=seed)
    return prep

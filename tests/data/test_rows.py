"""Rows read by index from the decode cache: the same arrays as indexing it in memory, nothing copied up front."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from aelab.data import RowReader, load_images


@pytest.fixture()
def cached(tmp_path):
    """30 random 8x8 RGB images decoded into a cache entry (a memory map of its .npy file)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(30):
        paths.append(tmp_path / f"{i:02d}.png")
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(paths[-1])
    data = load_images(paths, 8, 3, cache_dir=tmp_path / "cache")
    assert isinstance(data.images, np.memmap)
    return data.images


def test_rows_in_any_order_equal_indexing_the_array_in_memory(cached):
    reader = RowReader(cached)
    rows = np.array([29, 3, 4, 5, 0, 3, 17, 28, 29])  # unsorted, repeats, a run of consecutive rows
    whole = np.array(cached)
    got = reader.gather(rows)
    assert got.dtype == torch.uint8 and got.shape == (9, 3, 8, 8)
    np.testing.assert_array_equal(got.numpy(), whole[rows])
    assert reader.gather([]).shape == (0, 3, 8, 8)


def test_several_parts_read_as_their_concatenation(cached):
    extra = torch.arange(4 * 3 * 8 * 8, dtype=torch.uint8).reshape(4, 3, 8, 8)
    reader = RowReader([cached, np.array(cached[:5]), extra])
    whole = np.concatenate([np.array(cached), np.array(cached[:5]), extra.numpy()])
    rows = np.random.default_rng(1).integers(0, len(whole), 50)
    assert len(reader) == 39 and reader.shape == (39, 3, 8, 8)
    np.testing.assert_array_equal(reader.gather(rows).numpy(), whole[rows])
    with pytest.raises(IndexError):
        reader.gather([39])


def test_a_pickled_reader_reopens_the_file(cached):
    reader = pickle.loads(pickle.dumps(RowReader(cached)))
    np.testing.assert_array_equal(reader.gather([7, 2]).numpy(), np.array(cached)[[7, 2]])
    assert len(pickle.dumps(RowReader(cached))) < cached.nbytes  # the file name travels, not the pixels


def test_rows_of_a_view_or_a_tensor_are_read_too(cached):
    view = cached[10:20]
    np.testing.assert_array_equal(RowReader(view).gather([9, 0]).numpy(), np.array(cached)[[19, 10]])
    t = torch.as_tensor(np.array(cached))
    assert torch.equal(RowReader(t).gather([1, 2]), t[[1, 2]])

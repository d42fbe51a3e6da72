"""The MVTec AD layout: reading good/defect/mask pairs as is, the generator, painted defects."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from aelab.data.mvtec import (
    DEFECT_KINDS,
    is_mvtec,
    load_masks,
    make_mvtec_like,
    paint_defects,
    read_mvtec,
)
from aelab.errors import AelabError, DataError


def _png(path, value=0, size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


def test_read_pairs_each_defect_image_with_its_mask(tmp_path):
    root = tmp_path / "bottle"
    for name in ("000.png", "001.png"):
        _png(root / "train" / "good" / name)
    _png(root / "test" / "good" / "000.png")
    for defect, names in (("crack", ("000.png", "001.png")), ("broken_large", ("000.png",))):
        for name in names:
            _png(root / "test" / defect / name, 200)
            mask = np.zeros((8, 8), np.uint8)
            mask[: int(name[2]) + 2] = 255  # 2 or 3 rows: tells the two crack masks apart
            Image.fromarray(mask).save((root / "ground_truth" / defect).mkdir(parents=True, exist_ok=True) or
                                       root / "ground_truth" / defect / name.replace(".png", "_mask.png"))
    data = read_mvtec(root)
    assert is_mvtec(root) and len(data.train) == 2 and data.defects == ["broken_large", "crack"]
    assert data.labels == ["good", "broken_large", "crack", "crack"]  # good first, then natural order
    assert data.masks[0] is None and data.has_masks
    pairs = {(p.parent.name, p.name): m.relative_to(root).as_posix() for p, m in zip(data.test, data.masks) if m}
    assert pairs == {("broken_large", "000.png"): "ground_truth/broken_large/000_mask.png",
                     ("crack", "000.png"): "ground_truth/crack/000_mask.png",
                     ("crack", "001.png"): "ground_truth/crack/001_mask.png"}
    masks = load_masks(data.masks, 8)
    assert masks.shape == (4, 8, 8) and masks[0].sum() == 0 and masks[2].sum() == 16 and masks[3].sum() == 24
    np.testing.assert_array_equal(data.is_anomalous, [0, 1, 1, 1])


def test_a_defect_without_mask_is_read_without_pixel_ground_truth(tmp_path):
    _png(tmp_path / "train" / "good" / "a.png")
    _png(tmp_path / "test" / "good" / "a.png")
    _png(tmp_path / "test" / "hole" / "b.png")
    data = read_mvtec(tmp_path)
    assert data.masks == [None, None] and not data.has_masks
    with pytest.raises(DataError, match="MVTec AD layout"):
        read_mvtec(tmp_path / "test")


def test_painted_defects_change_only_their_masks_and_are_visible():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 5, (9, 1, 32, 32), dtype=np.uint8)
    images[:, :, 8:24, 14:18] = 250  # a vertical bar as the "object"
    kinds = [DEFECT_KINDS[i % 3] for i in range(9)]
    out, masks = paint_defects(images, kinds, seed=1)
    diff = np.abs(out.astype(int) - images.astype(int))[:, 0]
    assert np.all(diff[~masks] <= 25) and np.all(masks.sum((1, 2)) >= 8)
    missing = [i for i, k in enumerate(kinds) if k == "missing"]
    assert np.all(out[missing][masks[missing][:, None]] == 0)  # erased pixels are background
    with pytest.raises(AelabError, match="defect kind"):
        paint_defects(images[:1], ["smudge"])


def test_generated_data_set_is_read_back_with_masks(tmp_path):
    root = make_mvtec_like(tmp_path / "digits", n_train=12, n_test_good=4, n_per_defect=2, seed=0)
    data = read_mvtec(root)
    assert len(data.train) == 12 and data.labels.count("good") == 4 and data.defects == sorted(DEFECT_KINDS)
    assert data.has_masks and load_masks(data.masks, 32)[data.is_anomalous == 1].sum((1, 2)).min() >= 8
    with Image.open(data.test[0]) as im:
        assert im.size == (32, 32) and im.mode == "L"
    with pytest.raises(AelabError, match="not empty"):
        make_mvtec_like(root)

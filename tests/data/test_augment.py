"""Batch augmentation presets: shape and range kept, per-sample randomness, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aelab.data import AUGMENTATION_PRESETS, build_augmentation
from aelab.errors import AelabError


def _batch(channels: int, n: int = 8, size: int = 24) -> torch.Tensor:
    torch.manual_seed(123)
    # Smooth, asymmetric content so that flips, rotations and crops all change the pixels.
    ramp = torch.linspace(0, 1, size)
    base = (ramp.view(1, -1) * 0.7 + ramp.view(-1, 1) ** 2 * 0.3).clamp(0, 1)
    return (base.expand(n, channels, size, size) * torch.rand(n, channels, 1, 1) * 0.5 + 0.25).contiguous()


@pytest.mark.parametrize("preset", AUGMENTATION_PRESETS)
@pytest.mark.parametrize("channels", [1, 3])
def test_shape_dtype_and_range_are_preserved(preset, channels):
    x = _batch(channels)
    y = build_augmentation(preset, image_size=24)(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0.0 and y.max() <= 1.0


def test_none_is_identity():
    x = _batch(3)
    assert torch.equal(build_augmentation("none", 24)(x), x)


@pytest.mark.parametrize("preset", ["light", "course", "weak", "strong"])
def test_each_sample_gets_its_own_transform(preset):
    # The same image repeated across the batch must come out differently per sample.
    x = _batch(3, n=1).expand(8, -1, -1, -1).contiguous()
    torch.manual_seed(0)
    y = build_augmentation(preset, 24)(x)
    distinct = {tuple(y[i].flatten()[::37].round(decimals=4).tolist()) for i in range(8)}
    assert len(distinct) >= 6
    assert not torch.allclose(y, x)


@pytest.mark.parametrize("preset", ["light", "course", "weak", "strong"])
@pytest.mark.parametrize("channels", [1, 3])
def test_deterministic_under_manual_seed(preset, channels):
    aug = build_augmentation(preset, 24)
    x = _batch(channels)
    torch.manual_seed(7)
    a = aug(x)
    torch.manual_seed(7)
    b = aug(x)
    torch.manual_seed(8)
    c = aug(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_course_preset_jitters_brightness_per_sample_for_gray_and_rgb():
    # Colour jitter must run for 1 channel too (brightness/contrast only), not be dropped.
    for channels in (1, 3):
        torch.manual_seed(1)
        y = build_augmentation("course", 24)(torch.full((8, channels, 24, 24), 0.5))
        centre = y[:, :, 8:16, 8:16].mean(dim=(1, 2, 3))  # away from rotation corners
        assert centre.max() - centre.min() > 0.05


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(AelabError, match="none, weak, strong, weak-flip, strong-flip, light, course"):
        build_augmentation("heavy", 32)


def test_rejects_uint8_batches():
    with pytest.raises(AelabError, match="float"):
        build_augmentation("course", 8)(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_the_old_preset_name_is_refused():
    with pytest.raises(AelabError, match="unknown augmentation preset 'seed'"):
        build_augmentation("seed", 24)


def _rotation_probe() -> torch.Tensor:
    """A bright bar in the top half only: a vertical flip or a half turn moves it to the bottom."""
    x = torch.zeros(64, 1, 32, 32)
    x[:, :, 6:12, 10:22] = 1.0
    return x


@pytest.mark.parametrize("preset", ["weak", "strong"])
def test_few_label_policies_never_flip_a_digit_upside_down(preset):
    # A 6 must stay a 6: the default policies only shift, shear and turn a little.
    torch.manual_seed(0)
    y = build_augmentation(preset, 32)(_rotation_probe())
    top, bottom = y[:, :, :16].sum((1, 2, 3)), y[:, :, 16:].sum((1, 2, 3))
    assert bool((top > bottom).all())


def test_course_preset_does_flip_some_images_upside_down():
    torch.manual_seed(0)
    y = build_augmentation("course", 32)(_rotation_probe())
    top, bottom = y[:, :, :16].sum((1, 2, 3)), y[:, :, 16:].sum((1, 2, 3))
    assert int((bottom > top).sum()) >= 10  # vertical flips with p = 0.5


def test_weak_policy_is_a_pure_shift():
    # The weak view keeps every pixel value (up to interpolation) and only moves the content.
    torch.manual_seed(0)
    x = _rotation_probe()[:8]
    y = build_augmentation("weak", 32)(x)
    assert torch.allclose(y.sum((1, 2, 3)), x.sum((1, 2, 3)), rtol=0.2)


def _left_probe(n: int = 64) -> torch.Tensor:
    x = torch.zeros(n, 3, 32, 32)
    x[:, :, 8:24, 2:14] = 1.0  # a bright block in the left half
    return x


@pytest.mark.parametrize("preset", ["weak-flip", "strong-flip"])
def test_photo_policies_mirror_about_half_the_images_and_keep_them_upright(preset):
    torch.manual_seed(0)
    y = build_augmentation(preset, 32)(_left_probe())
    left, right = y[..., :16].sum((1, 2, 3)), y[..., 16:].sum((1, 2, 3))
    mirrored = int((right > left).sum())
    assert 16 <= mirrored <= 48  # p = 1/2 over 64 images
    y = build_augmentation(preset, 32)(_rotation_probe())
    assert bool((y[:, :, :16].sum((1, 2, 3)) > y[:, :, 16:].sum((1, 2, 3))).all())  # never upside down


def test_weak_flip_pads_by_reflection_so_no_black_border_comes_in():
    torch.manual_seed(0)
    y = build_augmentation("weak-flip", 32)(torch.full((32, 3, 32, 32), 0.7))
    assert torch.allclose(y, torch.full_like(y, 0.7), atol=1e-5)  # zero padding would bring in black


def test_auto_augmentation_flips_photos_and_not_grey_images():
    from aelab.data.kind import image_kind, resolve_augment

    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 256, (20, 1, 16, 16), dtype=np.uint8), 3, axis=1)
    photo = rng.integers(0, 256, (20, 3, 16, 16), dtype=np.uint8)
    assert (image_kind(grey), image_kind(photo)) == ("grey", "photo")
    assert resolve_augment("auto", grey) == "weak" and resolve_augment("auto", grey, "strong") == "strong"
    assert resolve_augment("auto", photo) == "weak-flip" and resolve_augment("auto", photo, "strong") == "strong-flip"
    assert resolve_augment("course", photo) == "course"
    from aelab.data.kind import PHOTO_STEM, resolve_stem

    assert (resolve_stem(None, photo), resolve_stem(None, grey), resolve_stem(0, photo)) == (PHOTO_STEM, 0, 0)
    from aelab.data.kind import PHOTO_KMEANS_STEM

    assert resolve_stem(None, photo, stem_kind="kmeans") == PHOTO_KMEANS_STEM
    assert resolve_stem(None, grey, stem_kind="kmeans") == 0

"""Decoding (every format and mode, bad files), the disk cache, and `Preprocessing`."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import aelab.data.decode as decode_mod
from aelab.data import ImageSet, Preprocessing, decode_image, load_images
from aelab.errors import AelabError, DataError


def _save(path, im, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    return path


def _gray_files(folder, values, size=8):
    """One uniform grayscale PNG per value, named by its index, so pixels identify the file."""
    return [_save(folder / f"{i}.png", Image.new("L", (size, size), v)) for i, v in enumerate(values)]


# --- formats and modes ---------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["jpg", "jpeg", "png", "bmp", "gif", "tiff", "tif", "webp"])
def test_every_supported_format_decodes(tmp_path, ext):
    path = _save(tmp_path / f"a.{ext}", Image.new("RGB", (20, 12), (200, 40, 90)),
                 **({"quality": 100} if ext == "webp" else {}))
    out = decode_image(path, 16, 3)
    assert out.shape == (3, 16, 16) and out.dtype == np.uint8
    # GIF palettes and JPEG quantise colours, hence the tolerance.
    assert np.allclose(out.reshape(3, -1).mean(1), (200, 40, 90), atol=12)


def test_rgba_is_composited_on_white(tmp_path):
    im = Image.new("RGBA", (10, 10), (0, 0, 0, 0))  # fully transparent black
    im.paste((255, 0, 0, 255), (0, 0, 5, 10))  # left half opaque red
    out = decode_image(_save(tmp_path / "a.png", im), 10, 3)
    assert out[:, :, 0].T.tolist()[0] == [255, 0, 0]  # red stays red
    assert (out[:, :, -1] == 255).all()  # transparent becomes white, not black


def test_la_and_transparent_palette_are_composited_on_white(tmp_path):
    la = Image.new("LA", (8, 8), (0, 0))
    assert (decode_image(_save(tmp_path / "la.png", la), 8, 1) == 255).all()
    p = Image.new("P", (8, 8), 1)
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    p.info["transparency"] = 1
    assert (decode_image(_save(tmp_path / "p.png", p, transparency=1), 8, 3) == 255).all()


def test_palette_image_gives_its_colours(tmp_path):
    p = Image.new("P", (8, 8), 1)
    p.putpalette([0, 0, 0, 10, 120, 230] + [0] * 762)
    out = decode_image(_save(tmp_path / "p.png", p), 8, 3)
    assert out[:, 0, 0].tolist() == [10, 120, 230]


def test_cmyk_jpeg_becomes_rgb_and_gray(tmp_path):
    path = _save(tmp_path / "c.jpg", Image.new("CMYK", (16, 16), (0, 255, 0, 0)), quality=95)
    rgb = decode_image(path, 16, 3)
    assert np.allclose(rgb.reshape(3, -1).mean(1), (255, 0, 255), atol=10)  # magenta
    assert decode_image(path, 16, 1).shape == (1, 16, 16)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    im = Image.fromarray(np.full((8, 8), 30000, dtype=np.uint16))
    assert im.mode == "I;16"
    out = decode_image(_save(tmp_path / "deep.png", im), 8, 1)
    assert (out == round(30000 / 257)).all()  # 117; Pillow's own convert("L") would clip to 255
    full = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    assert (decode_image(_save(tmp_path / "max.png", full), 8, 3) == 255).all()


def test_channel_conversion(tmp_path):
    gray = _save(tmp_path / "g.png", Image.new("L", (8, 8), 77))
    assert (decode_image(gray, 8, 3) == 77).all()
    rgb = _save(tmp_path / "c.png", Image.new("RGB", (8, 8), (255, 0, 0)))
    assert (decode_image(rgb, 8, 1) == 76).all()  # ITU-R 601 luma of pure red


@pytest.mark.parametrize("size", [(3, 3), (1000, 700)])
def test_tiny_and_large_images_are_resized_to_the_target(tmp_path, size):
    path = _save(tmp_path / "a.png", Image.new("RGB", size, (10, 200, 30)))
    out = decode_image(path, 32, 3)
    assert out.shape == (3, 32, 32)
    assert np.abs(out.reshape(3, -1).astype(int) - [[10], [200], [30]]).max() <= 1


# --- bad files -----------------------------------------------------------------------------------


def _bad_files(folder):
    good = io.BytesIO()
    Image.new("L", (64, 64), 5).save(good, "PNG")
    return {
        "zero.png": b"",
        "noise.png": bytes(range(256)) * 4,
        "text.jpg": b"this is not a jpeg\n",
        "truncated.png": good.getvalue()[: len(good.getvalue()) // 2],
    }


def test_bad_files_are_skipped_listed_and_do_not_shift_ids(tmp_path):
    paths = _gray_files(tmp_path, [10, 20, 30, 40, 50])
    for name, data in _bad_files(tmp_path).items():
        (tmp_path / name).write_bytes(data)
    bad = [tmp_path / n for n in ("zero.png", "noise.png", "text.jpg", "truncated.png")]
    files = [paths[0], bad[0], paths[1], bad[1], paths[2], bad[2], paths[3], bad[3], paths[4]]
    with pytest.warns(UserWarning, match=r"skipped 4 of 9") as record:
        data = load_images(files, 8, 1)
    message = str(record[0].message)
    assert "zero.png" in message and "empty file" in message and "and 1 more" in message
    assert "\n" not in message
    assert [p for p, _ in data.skipped] == bad
    assert data.paths == paths
    assert data.ids == ["0", "1", "2", "3", "4"]
    assert data.images[:, 0, 0, 0].tolist() == [10, 20, 30, 40, 50]  # pixels still match their ids


def test_strict_mode_raises_a_data_error_naming_the_file(tmp_path):
    paths = _gray_files(tmp_path, [1, 2])
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"strict.*bad\.png"):
        load_images([*paths, tmp_path / "bad.png"], 8, 1, strict=True)


def test_all_files_bad_is_an_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "b.jpg").write_text("text")
    with pytest.raises(DataError, match="none of the 2"):
        load_images(tmp_path, 8, 1)


def test_load_images_keeps_input_order_and_accepts_a_folder(tmp_path):
    paths = _gray_files(tmp_path, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    shuffled = [paths[i] for i in (3, 10, 0, 7)]
    assert load_images(shuffled, 8, 1, workers=2).images[:, 0, 0, 0].tolist() == [3, 10, 0, 7]
    by_folder = load_images(tmp_path, 8, 1)  # natural order: 0..10, not 0, 1, 10, 2, ...
    assert by_folder.ids == [str(i) for i in range(11)]


# --- cache ---------------------------------------------------------------------------------------


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []
    real = decode_mod.decode_image

    def counting(path, image_size, channels, **kwargs):
        calls.append(path)
        return real(path, image_size, channels, **kwargs)

    monkeypatch.setattr(decode_mod, "decode_image", counting)
    return calls


def test_second_load_reads_the_cache_without_decoding(tmp_path, count_decodes, aelab_cache_dir):
    paths = _gray_files(tmp_path / "imgs", [3, 6, 9])
    (tmp_path / "imgs" / "bad.png").write_bytes(b"")
    files = [*paths, tmp_path / "imgs" / "bad.png"]
    with pytest.warns(UserWarning):
        first = load_images(files, 8, 1)
    assert len(count_decodes) == 4 and not first.from_cache
    assert list((aelab_cache_dir / "aelab-cache-v1").glob("*.npy"))  # $AELAB_CACHE_DIR is used
    with pytest.warns(UserWarning, match="skipped 1"):  # the skipped list comes from the cache too
        second = load_images(files, 8, 1)
    assert len(count_decodes) == 4 and second.from_cache
    np.testing.assert_array_equal(first.images, second.images)
    assert second.paths == first.paths and second.skipped == first.skipped
    load_images(paths, 16, 1)  # another size is another entry
    assert len(count_decodes) == 7


def test_changed_file_is_decoded_again(tmp_path, count_decodes):
    paths = _gray_files(tmp_path, [10, 20])
    assert load_images(paths, 8, 1).images[1, 0, 0, 0] == 20
    Image.new("L", (8, 8), 99).save(paths[1])
    stat = os.stat(paths[1])
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    again = load_images(paths, 8, 1)
    assert not again.from_cache
    assert again.images[:, 0, 0, 0].tolist() == [10, 99]


def test_explicit_cache_dir_and_damaged_entry(tmp_path, count_decodes):
    paths = _gray_files(tmp_path / "imgs", [1, 2])
    cache = tmp_path / "cache"
    load_images(paths, 8, 1, cache_dir=cache)
    (npy,) = (cache / "aelab-cache-v1").glob("*.npy")
    meta = json.loads(npy.with_suffix(".json").read_text())
    assert meta["n_files"] == 2 and meta["shape"] == [2, 1, 8, 8] and meta["skipped"] == []
    npy.write_bytes(npy.read_bytes()[:40])  # a damaged entry is a miss, not a crash
    assert load_images(paths, 8, 1, cache_dir=cache).images[:, 0, 0, 0].tolist() == [1, 2]
    assert len(count_decodes) == 4


# --- preprocessing -------------------------------------------------------------------------------


def test_preprocessing_is_identical_after_a_checkpoint_round_trip():
    pre = Preprocessing(image_size=16, channels=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    plain = pre.to_dict()
    assert plain == {"image_size": 16, "channels": 3, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    restored = Preprocessing.from_dict(yaml.safe_load(yaml.safe_dump(plain)))
    assert restored == pre
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    a, b = pre.model_input(x), restored.model_input(x)
    assert a.dtype == torch.float32 and torch.equal(a, b)
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(3, 1, 1)
    expected = (x.float() / 255 - mean) / std
    torch.testing.assert_close(a, expected)


def test_target_is_unnormalised_and_default_input_equals_target():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    pre = Preprocessing(channels=1)
    assert pre.target(x).flatten().tolist() == pytest.approx([0.0, 0.2, 1.0])
    assert torch.equal(pre.model_input(x), pre.target(x))
    normed = Preprocessing(channels=1, mean=[0.5], std=[0.5])
    assert torch.equal(normed.target(x), pre.target(x))  # the target never uses mean/std


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 4}, "at least 8"),
        ({"channels": 2}, "1 or 3"),
        ({"mean": (0.5, 0.5, 0.5)}, "both"),
        ({"mean": (0.5,), "std": (0.5,)}, "3 value"),
        ({"mean": (0.5,) * 3, "std": (0.5, 0.0, 0.5)}, "> 0"),
    ],
)
def test_preprocessing_rejects_bad_settings(kwargs, match):
    with pytest.raises(AelabError, match=match):
        Preprocessing(**kwargs)


def test_preprocessing_rejects_wrong_inputs():
    pre = Preprocessing(channels=3)
    with pytest.raises(AelabError, match="uint8"):
        pre.model_input(torch.rand(1, 3, 8, 8))
    with pytest.raises(AelabError, match="3 channel"):
        pre.model_input(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(AelabError, match="unknown"):
        Preprocessing.from_dict({"image_size": 32, "normalise": True})


def test_preprocessing_load_uses_its_size_and_channels(tmp_path):
    _save(tmp_path / "1.png", Image.new("RGB", (40, 30), (9, 9, 9)))
    data = Preprocessing(image_size=12, channels=1).load(tmp_path)
    assert isinstance(data, ImageSet) and data.images.shape == (1, 1, 12, 12)

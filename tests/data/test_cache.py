"""The decode cache: memory-mapped entries, resume after an interruption, safe keys, size cap, memory bounds."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import aelab.data.decode as decode_mod
from aelab.cli.main import main
from aelab.data import load_images
from aelab.data.decode import MemoryGate

ROOT = Path(__file__).resolve().parents[2]


def _noise_files(folder: Path, n: int, size: int = 12, ext: str = "png", seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{i}.{ext}"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _reference(path: Path, image_size: int) -> np.ndarray:
    """Pillow alone, as the decoder did before the memory-mapped cache (images under 3x the target)."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB").resize((image_size, image_size), Image.Resampling.LANCZOS,
                                                               reducing_gap=3.0)
        return np.asarray(im).transpose(2, 0, 1)


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []
    real = decode_mod.decode_image

    def counting(path, image_size, channels, **kwargs):
        calls.append(Path(path).name)
        return real(path, image_size, channels, **kwargs)

    monkeypatch.setattr(decode_mod, "decode_image", counting)
    return calls


def test_memory_mapped_entry_holds_the_same_arrays_as_decoding_in_memory(tmp_path):
    paths = _noise_files(tmp_path / "imgs", 9)
    first = load_images(paths, 16, 3, workers=2)
    again = load_images(paths, 16, 3)
    assert isinstance(again.images, np.memmap) and again.from_cache and not first.from_cache
    expected = np.stack([_reference(p, 16) for p in paths])
    np.testing.assert_array_equal(first.images, expected)
    np.testing.assert_array_equal(again.images, expected)
    # No cache (unwritable): the in-memory path gives the same array, and says why it is slower.
    (tmp_path / "ro").write_text("a file, not a folder")
    with pytest.warns(UserWarning, match="could not use the image cache"):
        plain = load_images(paths, 16, 3, cache_dir=tmp_path / "ro")
    assert not isinstance(plain.images, np.memmap)
    np.testing.assert_array_equal(plain.images, expected)
    # Copy-on-write: changing the array in memory never changes the cache.
    again.images[:] = 0
    np.testing.assert_array_equal(load_images(paths, 16, 3).images, expected)


def test_interrupted_decode_resumes_after_the_last_finished_chunk(tmp_path, monkeypatch, count_decodes):
    paths = _noise_files(tmp_path / "imgs", 10)
    paths[1].write_bytes(b"")  # skipped in the first chunk: still listed after the resume
    monkeypatch.setattr(decode_mod, "CHUNK_FILES", 4)
    counting = decode_mod.decode_image

    def interrupted(path, image_size, channels, **kwargs):
        if len(count_decodes) == 6:  # in the second chunk (files 4-7)
            raise KeyboardInterrupt
        return counting(path, image_size, channels, **kwargs)

    monkeypatch.setattr(decode_mod, "decode_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_images(paths, 12, 3, workers=1)
    monkeypatch.setattr(decode_mod, "decode_image", counting)
    count_decodes.clear()
    with pytest.warns(UserWarning, match=r"skipped 1 .*1\.png"):
        data = load_images(paths, 12, 3, workers=1)
    assert count_decodes == [f"{i}.png" for i in range(4, 10)]  # only the unfinished chunks again
    assert data.paths == [p for i, p in enumerate(paths) if i != 1]
    np.testing.assert_array_equal(data.images, np.stack([_reference(p, 12) for p in data.paths]))


def test_a_replaced_file_with_the_same_size_and_mtime_is_decoded_again(tmp_path):
    path = tmp_path / "a.bmp"
    Image.new("RGB", (8, 8), (10, 10, 10)).save(path)
    assert load_images([path], 8, 3).images[0, 0, 0, 0] == 10
    st = os.stat(path)
    time.sleep(0.01)  # ctime has at least ms resolution on every common file system
    # What `cp -p` does: same size, same modification time, new pixels (and a new ctime).
    Image.new("RGB", (8, 8), (99, 99, 99)).save(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns
    again = load_images([path], 8, 3)
    assert not again.from_cache and again.images[0, 0, 0, 0] == 99


def _entry_keys(cache: Path) -> set[str]:
    return {p.stem for p in (cache / "aelab-cache-v1").glob("*.npy") if re.fullmatch("[0-9a-f]{32}", p.stem)}


def test_cache_size_cap_evicts_the_least_recently_used_entry(tmp_path, monkeypatch, aelab_cache_dir):
    sets = {name: _noise_files(tmp_path / name, 4, seed=k) for k, name in enumerate("abc")}
    one_entry = 4 * 3 * 16 * 16  # bytes of rows; headers and metadata are small
    monkeypatch.setenv("AELAB_CACHE_MAX_GB", str(2.5 * (one_entry + 400) / 2**30))
    load_images(sets["a"], 16, 3)
    key_a = _entry_keys(aelab_cache_dir)
    load_images(sets["b"], 16, 3)
    key_b = _entry_keys(aelab_cache_dir) - key_a
    for f in (aelab_cache_dir / "aelab-cache-v1").iterdir():  # a was used long ago, b a little later...
        os.utime(f, (1_000_000, 1_000_000 if f.stem.split(".")[0] in key_a else 2_000_000))
    assert load_images(sets["a"], 16, 3).from_cache  # ... and a is used again now: b is the oldest
    load_images(sets["c"], 16, 3)
    keys = _entry_keys(aelab_cache_dir)
    assert key_a <= keys and not key_b & keys and len(keys) == 2


def test_cache_clear_verb_empties_the_cache(tmp_path, aelab_cache_dir, capsys):
    paths = _noise_files(tmp_path / "imgs", 3)
    load_images(paths, 8, 3)
    assert _entry_keys(aelab_cache_dir)
    assert main(["cache", "clear"]) == 0
    assert not _entry_keys(aelab_cache_dir) and not list((aelab_cache_dir / "aelab-cache-v1").glob("*.json"))
    assert "freed" in capsys.readouterr().err
    assert not load_images(paths, 8, 3).from_cache


def test_memory_gate_admits_decodes_while_they_fit_and_a_huge_one_alone():
    gate, live, seen, lock = MemoryGate(100), [], [], threading.Lock()

    def job(need):
        gate.acquire(need)
        with lock:
            live.append(need)
            seen.append(list(live))
        time.sleep(0.01)
        with lock:
            live.remove(need)
        gate.release(need)

    threads = [threading.Thread(target=job, args=(n,)) for n in (40, 40, 40, 250, 30, 30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(sum(s) <= 100 or s == [250] for s in seen)
    assert [250] in seen and max(len(s) for s in seen) >= 2 and gate.in_use == 0


def test_decoding_threads_follow_the_memory_each_image_needs(tmp_path, monkeypatch):
    paths = _noise_files(tmp_path / "big", 6, size=600)  # 600*600*4 bytes = 1.4 MB each once loaded
    peaks = []

    class Recording(MemoryGate):
        def acquire(self, need):
            super().acquire(need)
            peaks.append(self.in_use)

    monkeypatch.setattr(decode_mod, "MemoryGate", Recording)
    monkeypatch.setenv("AELAB_DECODE_MEMORY_MB", "2")  # room for one at a time
    one_at_a_time = load_images(paths, 16, 3, workers=4, cache_dir=tmp_path / "c1")
    assert max(peaks) == 600 * 600 * 4
    monkeypatch.setenv("AELAB_DECODE_MEMORY_MB", "100")
    load_images(paths, 16, 3, workers=1, cache_dir=tmp_path / "c2")  # the same pixels either way
    np.testing.assert_array_equal(one_at_a_time.images,
                                  load_images(paths, 16, 3, workers=1, cache_dir=tmp_path / "c2").images)


def test_exif_orientation_is_applied_to_reduced_and_small_images(tmp_path):
    for size in (20, 400):  # 400 > 3x the target: reduced before the transpose
        im = Image.new("L", (size, size // 2), 0)
        im.paste(255, (0, 0, size // 4, size // 2))  # white left quarter
        exif = Image.Exif()
        exif[0x0112] = 6  # stored rotated: displayed after a 90-degree clockwise turn
        path = tmp_path / f"o{size}.jpg"
        im.save(path, exif=exif, quality=95)
        out = decode_mod.decode_image(path, 16, 1)[0]
        assert out[:4].mean() > 200 and out[-4:].mean() < 50, size  # white on top after the turn


def _run_python(code: str, tmp_path: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


HUGE = """
import json, resource
from PIL import Image
from aelab.data.decode import decode_image
Image.new("RGBA", (4000, 4000), (10, 200, 30, 128)).save("huge.png", compress_level=1)
Image.new("RGBA", (64, 64)).save("small.png"); decode_image("small.png", 32, 3)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = decode_image("huge.png", 32, 3)
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"grew_mib": grew, "pixel": out[:, 0, 0].tolist()}))
"""


@pytest.mark.slow
def test_a_huge_image_costs_little_more_than_its_loaded_pixels(tmp_path):
    res = _run_python(HUGE, tmp_path)
    loaded_mib = 4000 * 4000 * 4 / 2**20  # Pillow holds RGBA at 4 bytes a pixel (61 MiB)
    assert res["grew_mib"] < 1.3 * loaded_mib  # converting at full size cost ~6x (366 MiB) before
    alpha = 128 / 255
    assert res["pixel"] == [round(c * alpha + 255 * (1 - alpha)) for c in (10, 200, 30)]


BIG_FOLDER = """
import json, threading, time, sys
import numpy as np
from PIL import Image
from pathlib import Path
import aelab.data.decode as decode_mod
from aelab.data import load_images
from aelab.train.loaders import make_loader

rng = np.random.default_rng(0)
Path("imgs").mkdir()
paths = []
for i in range(__N__):
    paths.append(Path("imgs") / f"{i}.bmp")
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(paths[-1])
decode_mod.CHUNK_BYTES = 1 << 20

def anon_kib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])

load_images(paths[:8], 48, 3, cache_dir="warm")  # imports and first-call allocations out of the way
base, peak, stop = anon_kib(), [0], threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], anon_kib() - base); time.sleep(0.002)
threading.Thread(target=sample, daemon=True).start()
data = load_images(paths, 48, 3, workers=2, cache_dir="cache")
total = 0
for (x,) in make_loader(data.images, batch_size=256):
    total += int(x[:, 0, 0, 0].sum())
stop.set(); time.sleep(0.01)
print(json.dumps({"peak_mib": peak[0] / 1024, "data_mib": data.images.nbytes / 2**20, "total": total,
                  "expected": int(data.images[:, 0, 0, 0].astype(np.int64).sum())}))
"""


@pytest.mark.slow
def test_decoding_and_iterating_a_folder_larger_than_a_memory_cap(tmp_path):
    res = _run_python(BIG_FOLDER.replace("__N__", "6000"), tmp_path)
    cap_mib = 20.0
    assert res["data_mib"] > 1.5 * cap_mib  # the decoded folder (40 MiB) does not fit the cap...
    assert res["peak_mib"] < cap_mib  # ... and private memory stayed under it while decoding and iterating
    assert res["total"] == res["expected"]  # every row was read


def test_a_file_name_that_is_not_utf8_gets_a_cache_entry(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: a lone surrogate in Python's str
    Image.new("RGB", (8, 8), (40, 40, 40)).save(folder / name, format="PNG")
    first = load_images([folder / name], 8, 3)
    again = load_images([folder / name], 8, 3)
    assert again.from_cache and not first.from_cache and again.images[0, 0, 0, 0] == 40


def _plant_user_files(folder: Path, outside: Path) -> dict[Path, bytes]:
    """A user's files where a user might keep them: photos, notes, a subfolder, a link, and names
    close to (but not) an entry's."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {folder / "holiday.jpg": b"my photo", folder / "notes.txt": b"mine", folder / "album" / "1.png": b"png",
             folder / ("0" * 32 + ".npy.bak"): b"backup",
             folder / "ABCDEF0123456789ABCDEF0123456789.npy": b"upper case"}
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (folder / ("1" * 32 + ".json")).symlink_to(outside)  # an entry's name, but a link: never deleted
    files[folder / ("1" * 32 + ".json")] = outside.read_bytes()
    return files


def test_the_cache_deletes_only_its_own_entries(tmp_path, monkeypatch, aelab_cache_dir, capsys):
    """Issue 22: AELAB_CACHE_DIR pointing at a folder of photos must never lose them, to the size cap
    or to `aelab cache clear`; only files named as an entry's, in the folder aelab marked, go."""
    outside = tmp_path / "thesis.tex"
    outside.write_bytes(b"my thesis")
    planted: dict[Path, bytes] = {}
    for where in (aelab_cache_dir, aelab_cache_dir / "images", aelab_cache_dir / "aelab-cache-v1"):
        planted.update(_plant_user_files(where, outside))
    monkeypatch.setenv("AELAB_CACHE_MAX_GB", str(1 / 2**30))  # 1 byte: every load evicts all but its entry
    for k in range(3):
        load_images(_noise_files(tmp_path / f"set{k}", 3, seed=k), 8, 3)
    assert len(_entry_keys(aelab_cache_dir)) == 1  # the cap still works on the entries
    assert main(["cache", "clear"]) == 0
    assert "aelab-cache-v1" in capsys.readouterr().err
    assert not _entry_keys(aelab_cache_dir)
    assert {p: p.read_bytes() for p in planted} == planted  # every file (and the link) still there, unchanged
    assert outside.read_bytes() == b"my thesis"
    # An unmarked folder of that name (not made by aelab) is never emptied, even of entry-like names.
    other = tmp_path / "other"
    (other / "aelab-cache-v1").mkdir(parents=True)
    entry_like = other / "aelab-cache-v1" / ("2" * 32 + ".npy")
    entry_like.write_bytes(b"x")
    assert main(["cache", "clear", "--cache_dir", str(other)]) == 0
    assert entry_like.read_bytes() == b"x"

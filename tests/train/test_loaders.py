"""Training batches read by index from the decode cache: same batches as before, memory bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aelab.train.loaders import make_loader


def test_indexed_loader_gives_the_batches_of_the_copied_rows():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 1, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 3, 50)
    index = np.sort(rng.choice(50, 30, replace=False))
    new = list(make_loader(images, labels, batch_size=8, shuffle=True, seed=3, index=index))
    old = list(make_loader(images[index], labels[index], batch_size=8, shuffle=True, seed=3))  # the former copy
    assert len(new) == len(old) == 4
    for (x, y), (x0, y0) in zip(new, old):
        assert torch.equal(x, x0) and torch.equal(y, y0)


PEAK = r"""
import json, sys
import torch
torch.set_num_threads(1)
from aelab.data import load_images
from aelab.train.pretrain import PretrainConfig, pretrain

folder = sys.argv[1]
data_mib = load_images(folder, 64, 3).images.nbytes / 2**20  # decoded into the cache before measuring

def kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset the peak resident set (VmHWM) to the current resident set
before = kib("VmRSS")
# The tiny preset, narrowed so that an epoch takes seconds on one thread; validation (90 %) reads the
# held-out rows through the same indexed loader as training, so every row of the folder is read.
pretrain(PretrainConfig(unlabelled=folder, preset="tiny", image_size=64, width=2, depth=1, epochs=1, batch_size=64,
                        val_fraction=0.9, out=folder + "-run", device="cpu"))
print(json.dumps({"data_mib": data_mib, "grew_mib": (kib("VmHWM") - before) / 1024}))
"""


def _peak(script: Path, folder: Path, n: int) -> dict:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i:05d}.bmp")
    # glibc serves blocks of 1 MiB and more by mmap and returns them when freed (a fixed threshold, not
    # its adaptive one): the peak is then what was live at once, not where the heap happened to fragment.
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", MALLOC_MMAP_THRESHOLD_="1048576")
    res = subprocess.run([sys.executable, str(script), str(folder)], capture_output=True, text=True, timeout=600,
                         env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS")
def test_an_epoch_on_a_folder_larger_than_the_cap_keeps_peak_memory_under_it(tmp_path):
    """Pretraining's peak memory on a 60 MiB folder is within a 24 MiB cap of its peak on a 12 MiB one.

    Both runs are the same command in a fresh process, so what does not depend on the data (the
    libraries, the network's activations) cancels; copying the rows into memory, as the loaders
    did before, grew the peak by 84 MiB here.
    """
    cap_mib = 24.0
    script = tmp_path / "peak.py"
    script.write_text(PEAK)
    small = _peak(script, tmp_path / "small", 1024)
    big = _peak(script, tmp_path / "big", 5120)
    assert (small["data_mib"], big["data_mib"]) == (12.0, 60.0)  # the folder outgrows the cap by 2x
    assert big["grew_mib"] - small["grew_mib"] < cap_mib, (small, big)

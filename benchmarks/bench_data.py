"""Data-side throughput: aelab's cached, batched pipeline vs a seed-style per-image DataLoader.

Both sides read the same PNG files (written by `make_demo_data` into a temp folder), produce
the same kind of batch (64 augmented, normalised float images) and apply the seed report's
augmentation list. Only the data side is timed (no model). Throughput is measured from the
second epoch on, so aelab's one-off decode (reported separately) does not count, and the seed
loader's file system cache is warm.

    python benchmarks/bench_data.py                 # 2000 images at 32x32 and 64x64, ~1 min
    python benchmarks/bench_data.py --sizes 32 --n 500

`make_aelab_batches` and `make_seed_loader` are reusable for whole-epoch benchmarks.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from aelab.data import Preprocessing, build_augmentation, list_images, load_images, make_demo_data  # noqa: E402

# The seed normalised with ImageNet statistics; both pipelines do, so their outputs match in kind.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class AelabBatches:
    """Re-iterable batches like a DataLoader: decoded once (disk cache), augmented per batch.

    Each iteration shuffles, slices the uint8 ``(N, C, H, W)`` array, moves the batch to
    ``device``, converts to [0, 1], applies the kornia preset and the normalisation.
    """

    def __init__(self, images: np.ndarray, preprocessing: Preprocessing, preset: str, batch_size: int,
                 device: str = "cpu", seed: int = 0):
        self.images = torch.from_numpy(images)
        self.pre = preprocessing
        self.augment = build_augmentation(preset, preprocessing.image_size).to(device)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = torch.randperm(len(self.images), generator=self.generator)
        for start in range(0, len(order), self.batch_size):
            batch = self.images[order[start:start + self.batch_size]].to(self.device, non_blocking=True)
            yield self.pre.normalize(self.augment(self.pre.target(batch)))


def make_aelab_batches(paths: Sequence[Path], image_size: int, batch_size: int = 64, channels: int = 3,
                       preset: str = "course", cache_dir: str | None = None, device: str = "cpu",
                       seed: int = 0) -> AelabBatches:
    """aelab pipeline: `load_images` (decode once, cached) + batched kornia augmentation."""
    pre = Preprocessing(image_size=image_size, channels=channels,
                        mean=IMAGENET_MEAN[:channels] if channels == 3 else (0.5,),
                        std=IMAGENET_STD[:channels] if channels == 3 else (0.5,))
    data = load_images(paths, image_size, channels, cache_dir=cache_dir)
    return AelabBatches(data.images, pre, preset, batch_size, device=device, seed=seed)


class SeedStyleDataset(Dataset):
    """What the seed did: open each file with PIL per item and transform it on its own.

    The transform chain re-implements, with PIL and one per-image torch op, the torchvision
    chain of the report (torchvision is not installed here): RandomHorizontalFlip,
    RandomVerticalFlip, RandomRotation(15), RandomResizedCrop(size, scale=(0.8, 1)),
    ColorJitter(0.2, 0.2, 0.2, 0.1), GaussianBlur(3, (0.1, 2.0)) with p=0.5, ToTensor, Normalize.
    """

    def __init__(self, paths: Sequence[Path], image_size: int):
        self.paths = list(paths)
        self.size = image_size
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def _resized_crop(self, im: Image.Image) -> Image.Image:
        w, h = im.size
        for _ in range(10):  # torchvision's RandomResizedCrop.get_params
            area = w * h * random.uniform(0.8, 1.0)
            ratio = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                x, y = random.randint(0, w - cw), random.randint(0, h - ch)
                return im.resize((self.size, self.size), Image.Resampling.BILINEAR, box=(x, y, x + cw, y + ch))
        return im.resize((self.size, self.size), Image.Resampling.BILINEAR)

    @staticmethod
    def _jitter(im: Image.Image) -> Image.Image:
        ops = [
            lambda m: ImageEnhance.Brightness(m).enhance(random.uniform(0.8, 1.2)),
            lambda m: ImageEnhance.Contrast(m).enhance(random.uniform(0.8, 1.2)),
            lambda m: ImageEnhance.Color(m).enhance(random.uniform(0.8, 1.2)),
            lambda m: SeedStyleDataset._hue(m, random.uniform(-0.1, 0.1)),
        ]
        random.shuffle(ops)  # torchvision applies the four in random order
        for op in ops:
            im = op(im)
        return im

    @staticmethod
    def _hue(im: Image.Image, shift: float) -> Image.Image:
        h, s, v = im.convert("HSV").split()
        h = Image.fromarray((np.asarray(h, dtype=np.uint8) + np.uint8(round(shift * 255) % 256)).astype(np.uint8), "L")
        return Image.merge("HSV", (h, s, v)).convert("RGB")

    def __getitem__(self, index: int) -> torch.Tensor:
        import kornia

        with Image.open(self.paths[index]) as f:
            im = f.convert("RGB")
        if random.random() < 0.5:
            im = ImageOps.mirror(im)
        if random.random() < 0.5:
            im = ImageOps.flip(im)
        im = im.rotate(random.uniform(-15, 15), resample=Image.Resampling.NEAREST)  # torchvision default
        im = self._jitter(self._resized_crop(im))
        # .contiguous() as torchvision's ToTensor does (a channels-last view makes conv2d slow).
        x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous().float().div_(255)
        if random.random() < 0.5:
            sigma = random.uniform(0.1, 2.0)
            x = kornia.filters.gaussian_blur2d(x[None], (3, 3), (sigma, sigma), border_type="reflect")[0]
        return (x - self.mean) / self.std


def make_seed_loader(paths: Sequence[Path], image_size: int, batch_size: int = 64, num_workers: int = 0,
                     seed: int = 0) -> DataLoader:
    """Seed-style pipeline: a shuffling DataLoader over `SeedStyleDataset` (workers restart each epoch)."""
    return DataLoader(SeedStyleDataset(paths, image_size), batch_size=batch_size, shuffle=True,
                      num_workers=num_workers, generator=torch.Generator().manual_seed(seed))


def time_epochs(batches, epochs: int) -> list[float]:
    """Seconds per epoch of pulling every batch (the sum forces any lazy work)."""
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        total = 0.0
        for batch in batches:
            total += float(batch[0, 0, 0, 0])
        times.append(time.perf_counter() - start)
    return times


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--n", type=int, default=2000, help="images (dev/unlabelled of the demo data)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per pipeline; the first is not counted")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="seed DataLoader num_workers")
    # One intra-op thread by default: batches of 32x32 images are too small to gain from more,
    # and on a shared machine OpenMP's spin-waiting threads slow every op many-fold.
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    torch.manual_seed(0)
    random.seed(0)

    rows = []
    with tempfile.TemporaryDirectory(prefix="aelab_bench_") as tmp:
        for size in args.sizes:
            root = Path(tmp) / f"demo{size}"
            layout = make_demo_data(root, image_size=size, n_unlabelled=args.n, n_test=0, labelled_per_class=1,
                                    n_anomaly_normal=0, n_anomalous=0)
            paths = list_images(layout.unlabelled)
            cache = str(Path(tmp) / "cache")
            start = time.perf_counter()
            batches = make_aelab_batches(paths, size, args.batch_size, cache_dir=cache)
            cold = time.perf_counter() - start
            start = time.perf_counter()
            make_aelab_batches(paths, size, args.batch_size, cache_dir=cache)
            warm = time.perf_counter() - start
            t = time_epochs(batches, args.epochs)
            aelab_ips = len(paths) * (len(t) - 1) / sum(t[1:])
            rows.append((size, "aelab: cached uint8 + batched kornia `seed`", t[0] + cold, aelab_ips, None,
                         f"decode {cold:.2f} s once, cache hit {warm:.3f} s"))
            for workers in args.workers:
                t = time_epochs(make_seed_loader(paths, size, args.batch_size, num_workers=workers), args.epochs)
                ips = len(paths) * (len(t) - 1) / sum(t[1:])
                rows.append((size, f"seed-style: PIL per item, num_workers={workers}", t[0], ips, aelab_ips / ips, ""))

    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{len(paths)} PNG images per size, batch {args.batch_size}, epochs 2..{args.epochs} timed; "
          f"{cpu_model()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"Python {platform.python_version()}, 1-min load average {load_before:.1f} before, {load_after:.1f} after\n")
    print("| size | pipeline | 1st epoch (s) | images/s (epoch 2+) | aelab speed-up | note |")
    print("|---:|---|---:|---:|---:|---|")
    for size, name, first, ips, ratio, note in rows:
        print(f"| {size} | {name} | {first:.2f} | {ips:,.0f} | {'' if ratio is None else f'{ratio:.1f}x'} | {note} |")


if __name__ == "__main__":
    main()

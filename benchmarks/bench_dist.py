"""Past one machine: inference with 1 vs 2 processes, and the memory of the memory-mapped decode cache.

Part 1, inference (`aelab.train.inference.sharded_forward`, what ``predict``/``embed --devices N``
run): the same random-weight network (preset ``small``, 32x32x3, 10 classes) over the same N
uint8 images, batch 256, on the CPU: one process with one thread, one process with two threads,
and two processes (Lightning Fabric, gloo) with one thread each. Only the forward passes and the
gather are timed (after a barrier), best of ``--repeats``; process start-up and the gloo
rendezvous are reported separately as the wall time of the whole command.

Part 2, memory: a generated folder of ``--files`` small PNGs (28x28 grayscale noise), decoded and
then iterated once in batches of 256 (`aelab.train.loaders.make_loader`), each case in a fresh
subprocess: (a) the memory-mapped cache (decode into it, then a cache hit), (b) the previous
in-memory array (decoded into one array, as before; a hit loaded the whole ``.npy``). Private
memory (``RssAnon``, sampled every 2 ms) above the level after imports is what the data cost;
``VmHWM`` (peak resident set, file pages included) is shown too.

    python benchmarks/bench_dist.py                 # both parts: 200,000 files take ~5 minutes on 2 cores
    python benchmarks/bench_dist.py --part 2 --files 50000 --keep /tmp/aelab_files
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# --- part 1: inference, 1 vs 2 processes ---------------------------------------------------------------


def infer_child(args) -> None:
    """Runs in every process of one case (Fabric re-executes this script for rank 1)."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from aelab.data import Preprocessing
    from aelab.models import build_model, preset_config
    from aelab.train.inference import launch_inference, sharded_forward

    torch.manual_seed(0)
    model = build_model(preset_config("small", num_classes=10, image_size=32)).eval()
    prep = Preprocessing(32, 3)
    images = np.random.default_rng(0).integers(0, 256, (args.n, 3, 32, 32), dtype=np.uint8)
    fabric = launch_inference("cpu", args.devices)
    best = float("inf")
    for _ in range(args.repeats):
        fabric.barrier()
        t0 = time.perf_counter()
        out = sharded_forward(fabric, model, prep, images, batch_size=256, want=("logits",))
        fabric.barrier()
        best = min(best, time.perf_counter() - t0)
    if fabric.global_rank == 0:
        digest = float(np.abs(out.logits).sum())
        print("RESULT " + json.dumps({"seconds": best, "images_per_s": args.n / best, "checksum": digest}), flush=True)


def part1(args) -> list[dict]:
    rows = []
    for label, devices, threads in (("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 1, 2),
                                    ("2 processes (gloo), 1 thread each", 2, 1)):
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads))
        cmd = [sys.executable, __file__, "--infer-child", "--n", str(args.n), "--devices", str(devices),
               "--threads", str(threads), "--repeats", str(args.repeats)]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        wall = time.perf_counter() - t0
        line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
        if res.returncode or not line:
            raise SystemExit(f"{label} failed:\n{res.stderr[-2000:]}")
        r = json.loads(line[-1][7:])
        rows.append(dict(case=label, seconds=r["seconds"], images_per_s=r["images_per_s"], command_s=wall,
                         checksum=r["checksum"]))
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


# --- part 2: memory of the decode cache ---------------------------------------------------------------

MEMORY_CHILD = r"""
import json, sys, threading, time
import numpy as np
from pathlib import Path
from aelab.data import list_images, load_images
from aelab.train.loaders import make_loader

folder, cache, mode = sys.argv[1], sys.argv[2], sys.argv[3]
paths = list_images(folder)

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

base, peak, stop = status("RssAnon"), [0.0], threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], status("RssAnon") - base); time.sleep(0.002)
threading.Thread(target=sample, daemon=True).start()
t0 = time.perf_counter()
if mode == "memmap":
    data = load_images(paths, 28, 1, workers=2, cache_dir=cache)
    images = data.images
elif mode == "in-memory":  # the previous cache: the decoded array in memory; a hit read the whole .npy
    data = load_images(paths, 28, 1, workers=2, cache_dir=cache)
    images = np.array(data.images) if data.from_cache else data.images
load_s = time.perf_counter() - t0
t0, seen = time.perf_counter(), 0
for (x,) in make_loader(images, batch_size=256, shuffle=True, seed=0):
    seen += len(x)
iter_s = time.perf_counter() - t0
stop.set(); time.sleep(0.01)
print("RESULT " + json.dumps({"load_s": load_s, "iterate_s": iter_s, "peak_anon_mib": peak[0],
      "vmhwm_mib": status("VmHWM"), "images": seen, "data_mib": images.nbytes / 2**20,
      "from_cache": bool(data.from_cache)}))
"""


def make_files(folder: Path, n: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.glob("*.png")))
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for i in range(have, n):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"{i}.png", compress_level=1)
    print(f"{n - have} files written in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


def part2(args, work: Path) -> list[dict]:
    folder = Path(args.keep) if args.keep else work / "files"
    make_files(folder, args.files)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    rows = []
    for mode in ("memmap", "in-memory"):
        cache = work / f"cache-{mode}"
        if mode == "in-memory":  # an unusable cache folder: decoding into one array, as before
            cache.write_text("not a folder")
        for visit in ("decode", "cache hit"):
            if mode == "in-memory" and visit == "cache hit":
                cache = work / "cache-memmap"  # the same .npy, read whole
            res = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(folder), str(cache), mode],
                                 env=env, capture_output=True, text=True, timeout=1200)
            line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
            if res.returncode or not line:
                raise SystemExit(f"{mode} {visit} failed:\n{res.stderr[-2000:]}")
            rows.append(dict(cache=mode, visit=visit, **json.loads(line[-1][7:])))
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", type=int, choices=[0, 1, 2], default=0, help="0 = both")
    p.add_argument("--n", type=int, default=4096, help="images for part 1")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--files", type=int, default=200_000, help="generated PNG files for part 2")
    p.add_argument("--keep", help="folder for part 2's files, kept for the next run (default: a temp folder)")
    p.add_argument("--infer-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.infer_child:
        return infer_child(args)
    print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at start")
    if args.part in (0, 1):
        rows = part1(args)
        one = rows[0]["images_per_s"]
        print(f"\nInference, {args.n} images 32x32x3, preset small, batch 256, best of {args.repeats}\n")
        print("| case | forward + gather s | images/s | vs 1 process, 1 thread | whole command s |")
        print("|---|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['case']} | {r['seconds']:.2f} | {r['images_per_s']:,.0f} | {r['images_per_s'] / one:.2f}x | "
                  f"{r['command_s']:.1f} |")
        print(f"\nsame logits in every case: {len({round(r['checksum'], 3) for r in rows}) == 1}")
    if args.part in (0, 2):
        with tempfile.TemporaryDirectory() as tmp:
            rows = part2(args, Path(tmp))
        print(f"\nMemory, {args.files:,} PNG files 28x28 grayscale ({rows[0]['data_mib']:.0f} MiB decoded), "
              f"decode with 2 threads, one shuffled pass in batches of 256\n")
        print("| cache | visit | load s | iterate s | private memory peak MiB | VmHWM MiB |")
        print("|---|---|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['cache']} | {r['visit']} | {r['load_s']:.1f} | {r['iterate_s']:.1f} | "
                  f"{r['peak_anon_mib']:.0f} | {r['vmhwm_mib']:.0f} |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

"""Data bigger than memory: decoding a large folder (interrupted and resumed), then training epochs that
read rows by index from the decode cache, against the whole array in memory; 1 vs 2 processes.

Part 1, decode: ``--files`` generated PNGs (28x28 grayscale noise, `bench_dist.make_files`) decoded
into a fresh cache by ``load_images`` (2 threads) with stderr on a pseudo-terminal (so the progress bar
is drawn), interrupted with SIGINT (what Ctrl-C sends) after ``--interrupt-after`` seconds, then run again: the second
run must say it resumes, and ``--check`` random rows of the finished cache must equal
``decode_image`` of their files.

Part 2, one pretraining epoch on the whole folder (`aelab.train.pretrain.pretrain`, denoising, preset
``tiny`` narrowed to width 2 / depth 1 so that one thread gets through 200,000 images in minutes;
28x28x1, batch 64, ``val_fraction=0.9``: 10 % of the rows are trained on, 90 % validated, so every
row of the folder is read once in the epoch), each case in a fresh process:

- **indexed**: this version: batches gather their rows from the cache file by index;
- **in memory**: the whole decoded array loaded into RAM first (``np.array(images)``), batches
  gathered from it (what the loaders did before, minus their extra copy of the training rows).

Memory: ``VmHWM`` (peak resident set, libraries included) and the peak growth of private memory
(``RssAnon``, sampled every 5 ms) over its level before the data was loaded.

Part 3, 1 vs 2 processes: the same command line (``aelab pretrain ... --devices N``, CPU, gloo, one
thread each) on the first ``--dist-files`` files with ``val_fraction=0.1``: the epoch's seconds
(metrics.csv), training images/s, and the whole command's wall time.

    python benchmarks/bench_bigdata.py --keep /tmp/aelab_files      # 200,000 files, about 10 minutes here
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

DECODE_CHILD = r"""
import sys
from aelab.data import load_images
load_images(sys.argv[1], 28, 1, workers=2, cache_dir=sys.argv[2])
"""

TRAIN_CHILD = r"""
import json, sys, threading, time
import numpy as np
import torch
torch.set_num_threads(1)
import importlib
P = importlib.import_module("aelab.train.pretrain")  # the module (aelab.train.pretrain is also the function)
from aelab.data import load_images

folder, cache, mode, out = sys.argv[1:5]

def kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

base, peak, stop = kib("RssAnon"), [0], threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], kib("RssAnon") - base); time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
t0 = time.perf_counter()
if mode == "in-memory":
    whole = np.array(load_images(folder, 28, 1, cache_dir=cache).images)  # the decoded array, in RAM
    P._images = lambda cfg, prep: whole
cfg = P.PretrainConfig(unlabelled=folder, preset="tiny", image_size=28, channels=1, width=2, depth=1, epochs=1,
                       batch_size=64, val_fraction=0.9, out=out, device="cpu")
P.pretrain(cfg)
total = time.perf_counter() - t0
stop.set(); time.sleep(0.02)
print("RESULT " + json.dumps({"seconds": total, "peak_anon_mib": peak[0] / 1024, "vmhwm_mib": kib("VmHWM") / 1024}))
"""


def run_decode(folder: Path, cache: Path, log: Path, interrupt_after: float | None) -> tuple[float, int]:
    """One decode with stderr on a pseudo-terminal (so tqdm draws its bar, saved to ``log``);
    SIGINT (what Ctrl-C sends) after ``interrupt_after`` seconds."""
    import fcntl
    import pty
    import struct
    import termios
    import threading

    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", DECODE_CHILD, str(folder), str(cache)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    if interrupt_after is not None:
        try:
            proc.wait(timeout=interrupt_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=1800)
    reader.join(timeout=5)
    os.close(master)
    log.write_bytes(b"".join(chunks))
    return time.perf_counter() - t0, rc


def part1(args, folder: Path, cache: Path, work: Path) -> dict:
    import numpy as np

    from aelab.data import decode_image, list_images

    t_int, rc_int = run_decode(folder, cache, work / "decode1.log", args.interrupt_after)
    progress_files = list((cache / "aelab-cache-v1").glob("*.progress.json"))
    done = json.loads(progress_files[0].read_text())["done"] if progress_files else None
    t_res, rc_res = run_decode(folder, cache, work / "decode2.log", None)
    log1 = (work / "decode1.log").read_text(errors="replace")
    log2 = (work / "decode2.log").read_text(errors="replace")
    resumed = [ln.strip() for ln in log2.replace("\r", "\n").splitlines() if "resuming" in ln]
    entry = next((cache / "aelab-cache-v1").glob("*.npy"))
    images = np.load(entry, mmap_mode="r")
    paths = list_images(folder)
    rows = np.random.default_rng(0).choice(len(paths), args.check, replace=False)
    same = all(np.array_equal(images[i], decode_image(paths[i], 28, 1)) for i in rows)
    shown = [ln for ln in log1.replace("\r", "\n").splitlines() if "decoding images:" in ln and "%|" in ln]
    print("decode log, first run:", shown[:1], shown[-1:], file=sys.stderr, flush=True)
    return dict(first_s=t_int, first_rc=rc_int, done_at_interrupt=done, second_s=t_res, second_rc=rc_res,
                resumed=resumed[:1], bar_drawn=bool(shown), rows_checked=int(args.check),
                rows_equal=bool(same), n=len(paths), entry_mib=entry.stat().st_size / 2**20)


def part2(args, folder: Path, cache: Path, work: Path) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", AELAB_CACHE_DIR=str(cache))
    rows = []
    for mode in ("indexed", "in-memory"):
        out = work / f"run-{mode}"
        res = subprocess.run([sys.executable, "-c", TRAIN_CHILD, str(folder), str(cache), mode, str(out)],
                             env=env, capture_output=True, text=True, timeout=1800)
        line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
        if res.returncode or not line:
            raise SystemExit(f"{mode} failed:\n{res.stderr[-3000:]}")
        with open(out / "metrics.csv", newline="") as fh:
            metrics = list(csv.DictReader(fh))[-1]
        rows.append(dict(mode=mode, epoch_s=float(metrics["seconds"]), **json.loads(line[-1][7:])))
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def part3(args, folder: Path, cache: Path, work: Path) -> list[dict]:
    from aelab.data import list_images

    sub = work / "subset"
    sub.mkdir()
    for p in list_images(folder)[: args.dist_files]:
        (sub / p.name).symlink_to(p)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", AELAB_CACHE_DIR=str(cache), MPLBACKEND="Agg")
    rows = []
    for devices in (1, 2):
        out = work / f"dist-{devices}"
        cmd = [sys.executable, "-m", "aelab.cli.main", "pretrain", "--unlabelled", str(sub), "--preset", "tiny",
               "--image_size", "28", "--channels", "1", "--width", "2", "--depth", "1", "--epochs", "1",
               "--batch_size", "64", "--val_fraction", "0.1", "--device", "cpu", "--devices", str(devices),
               "--out", str(out)]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - t0
        if res.returncode:
            raise SystemExit(f"--devices {devices} failed:\n{res.stderr[-3000:]}")
        with open(out / "metrics.csv", newline="") as fh:
            epoch_s = float(list(csv.DictReader(fh))[-1]["seconds"])
        n_train = args.dist_files - round(args.dist_files * 0.1)
        rows.append(dict(devices=devices, epoch_s=epoch_s, images_per_s=n_train / epoch_s, command_s=wall))
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def report(args, dec: dict | None, train: list[dict] | None, dist: list[dict] | None) -> None:
    if dec:
        print(f"\nDecode of {dec['n']:,} files ({dec['entry_mib']:.0f} MiB cache entry), 2 threads\n")
        print(f"- first run: interrupted (SIGINT) after {dec['first_s']:.1f} s, exit code {dec['first_rc']}, "
              f"{dec['done_at_interrupt']} files recorded as done; progress bar drawn: {dec['bar_drawn']}")
        print(f"- second run: {dec['second_s']:.1f} s, exit code {dec['second_rc']}, said: {dec['resumed']}")
        print(f"- {dec['rows_checked']} random rows equal decode_image of their files: {dec['rows_equal']}")
    if train:
        ind, mem = train
        print("\nOne pretraining epoch over every row (10 % trained, 90 % validated), tiny/width 2/depth 1, "
              "28x28x1, 1 thread\n")
        print("| data path | command s | epoch s | peak RSS (VmHWM) MiB | private memory peak MiB |")
        print("|---|---:|---:|---:|---:|")
        for r in train:
            print(f"| {r['mode']} | {r['seconds']:.1f} | {r['epoch_s']:.1f} | {r['vmhwm_mib']:.0f} | "
                  f"{r['peak_anon_mib']:.0f} |")
        print(f"| ratio in-memory / indexed | {mem['seconds'] / ind['seconds']:.2f}x | "
              f"{mem['epoch_s'] / ind['epoch_s']:.2f}x | "
              f"{mem['vmhwm_mib'] / ind['vmhwm_mib']:.2f}x | "
              f"{mem['peak_anon_mib'] / max(ind['peak_anon_mib'], 1):.1f}x |")
    if dist:
        print(f"\n`aelab pretrain --devices N` on {args.dist_files:,} files (val_fraction 0.1), 1 thread per process\n")
        print("| processes | epoch s | training images/s | vs 1 process | whole command s |")
        print("|---:|---:|---:|---:|---:|")
        for r in dist:
            print(f"| {r['devices']} | {r['epoch_s']:.1f} | {r['images_per_s']:,.0f} | "
                  f"{r['images_per_s'] / dist[0]['images_per_s']:.2f}x | {r['command_s']:.1f} |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=200_000)
    p.add_argument("--keep", help="folder for the generated files, kept for the next run "
                   "(default: a temp folder, deleted)")
    p.add_argument("--parts", default="1,2,3")
    p.add_argument("--interrupt-after", type=float, default=20.0)
    p.add_argument("--check", type=int, default=300, help="random rows compared with a direct decode")
    p.add_argument("--dist-files", type=int, default=20_000)
    args = p.parse_args(argv)
    from bench_dist import make_files

    parts = {int(x) for x in args.parts.split(",")}
    print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks") as tmp:
        work = Path(tmp)
        folder = Path(args.keep) if args.keep else work / "files"
        make_files(folder, args.files)
        cache = work / "cache"
        dec = part1(args, folder, cache, work) if 1 in parts else None
        train = part2(args, folder, cache, work) if 2 in parts else None
        dist = part3(args, folder, cache, work) if 3 in parts else None
    report(args, dec, train, dist)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

"""EKM across processes: the all-reduce of the statistics per iteration against the local E/M step.

Every iteration of distributed EKM (`aelab.cluster.distributed`) is one pass over the rank's
shard (distances, weights ``w_kn``, ``Σ w x``, ``Σ w``, ``Σ |w|``, the objective: the E and M
steps' sums) and one ``all_reduce`` of ``K·d + 2K + 1`` float64 (341 for d = 32, K = 10).
For each n, the same float64 blobs (d = 32, K = 10 centres in ±10, unit spread) and the same
centroids, in 1 and in 2 processes (forked, torch.distributed gloo over a file rendezvous,
one BLAS/torch thread each), ``--rounds`` rounds of the two cases in turn, each ``--repeats``
iterations; the best (smallest) time of each measure over all of them (the machine is shared,
so the best is the least disturbed; the medians go into ``--json``):

- **local step**: ``_NumpyBackend.stats`` on the rank's rows (the slower rank's);
- **all_reduce**: `allreduce_stats` alone, started after a barrier (the communication, not the
  wait for the slower rank);
- **iteration**: step + all_reduce without a barrier, what a fit pays per iteration.

The summed statistics of the 2 processes are checked against the 1-process ones.

    python benchmarks/bench_ekm_dist.py                       # n = 1e5, 3e5, 1e6: about 2 minutes here
    python benchmarks/bench_ekm_dist.py --n 100000 --rounds 1 --repeats 3   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

D, K = 32, 10


def blobs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 10, (K, D))
    X = centres[rng.integers(0, K, n)] + rng.normal(size=(n, D))
    return X, centres + rng.normal(scale=0.5, size=(K, D))  # starts near, not at, the centres


def _cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        return next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _ms(times) -> dict:
    return dict(best=float(np.min(times) * 1e3), median=float(np.median(times) * 1e3))


def _worker(rank, world, init_file, out_dir, X, C, repeats):
    import torch
    import torch.distributed as dist
    from threadpoolctl import threadpool_limits

    from aelab.cluster.core import _NumpyBackend
    from aelab.cluster.distributed import allreduce_stats, global_mean_half_sqdist, shard_bounds

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        with threadpool_limits(limits=1):
            start, stop = shard_bounds(len(X), rank, world)
            be = _NumpyBackend(X[start:stop], n_clusters=K)
            alpha = 2.0 / global_mean_half_sqdist(X[start:stop])
            allreduce_stats(be.stats(C, alpha))  # warm-up: first pass and first collective
            step, reduce, whole = [], [], []
            for _ in range(repeats):
                dist.barrier()
                t0 = time.perf_counter()
                st = be.stats(C, alpha)
                step.append(time.perf_counter() - t0)
                dist.barrier()
                t0 = time.perf_counter()
                total = allreduce_stats(st)
                reduce.append(time.perf_counter() - t0)
                dist.barrier()
                t0 = time.perf_counter()
                allreduce_stats(be.stats(C, alpha))
                whole.append(time.perf_counter() - t0)
        result = dict(step_ms=_ms(step), allreduce_ms=_ms(reduce), iteration_ms=_ms(whole))
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
        np.savez(Path(out_dir) / f"stats{rank}.npz", sum_wx=total.sum_wx, sum_w=total.sum_w, objective=total.objective)
    finally:
        dist.destroy_process_group()


def run_case(X, C, world: int, repeats: int) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_worker, args=(world, f"{tmp}/init", tmp, X, C, repeats), nprocs=world, start_method="fork")
        ranks = [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(world)]
        stats = dict(np.load(Path(tmp) / "stats0.npz"))
    # per measure, the slower rank (a collective iteration waits for it)
    out = {m: {k: max(r[m][k] for r in ranks) for k in ("best", "median")}
           for m in ("step_ms", "allreduce_ms", "iteration_ms")}
    return dict(world=world, **out, stats=stats)


def _merge(a: dict | None, b: dict) -> dict:
    """Two rounds of one case: the best of the bests, the median of the medians' pair (their mean)."""
    if a is None:
        return b
    return dict(b, **{m: dict(best=min(a[m]["best"], b[m]["best"]), median=(a[m]["median"] + b[m]["median"]) / 2)
                      for m in ("step_ms", "allreduce_ms", "iteration_ms")})


def _table(rows) -> str:
    lines = ["| n | processes | local step ms | all_reduce ms | all_reduce / step | iteration ms "
             "| iteration vs 1 process |",
             "|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        step, red, it = (r[m]["best"] for m in ("step_ms", "allreduce_ms", "iteration_ms"))
        vs = "1.00×" if r["world"] == 1 else f"{it / r['one_ms']:.2f}× the time ({r['one_ms'] / it:.2f}× the speed)"
        lines.append(f"| {r['n']:,} | {r['world']} | {step:.1f} | {red:.3f} | {red / step:.4f} | {it:.1f} | {vs} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    import torch

    load0, t_start = os.getloadavg()[0], time.perf_counter()
    rows = []
    for n in args.n:
        X, C = blobs(n)
        one = two = None
        for _ in range(args.rounds):
            one = _merge(one, run_case(X, C, 1, args.repeats))
            two = _merge(two, run_case(X, C, 2, args.repeats))
        diff = max(float(np.max(np.abs(two["stats"][k] - one["stats"][k]) / (np.abs(one["stats"][k]).max() or 1.0)))
                   for k in ("sum_wx", "sum_w", "objective"))
        for case in (one, two):
            rows.append(dict(n=n, one_ms=one["iteration_ms"]["best"],
                             **{k: v for k, v in case.items() if k != "stats"}))
        print(f"n={n:,}: 2-process statistics vs 1 process, max relative difference {diff:.1e}", file=sys.stderr)
    print(f"{_cpu_name()}, {os.cpu_count()} CPUs, numpy {np.__version__}, "
          f"torch {torch.__version__}, d={D}, K={K}, float64, best of {args.rounds} x {args.repeats}; "
          "1-min load average "
          f"{load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; {time.perf_counter() - t_start:.0f} s\n")
    print(_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

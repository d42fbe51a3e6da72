"""Benchmark aelab's Equilibrium K-Means against sklekmeans, scikit-learn KMeans and baselines.

Three parts, printed as Markdown tables (paste them into benchmarks/README.md):

1. speed: n = 100,000, d = 32, K = 10, float32 blobs; wall time (best of a few runs),
   iterations and ARI for aelab EKM (numpy, torch CPU, mini-batch), scikit-learn KMeans and
   sklekmeans EKMeans (optional import; both EKMs use alpha="dvariance", the same α).
2. geometries: the EKM paper's kind of synthetic sets (imbalanced balls, imbalanced squares,
   a large ball with a small elongated cluster, one large cluster with eight small ones),
   z-scored, α = λ = 1; ARI mean ± std over seeds for EKM, k-means, FKM, MEFC, course-softmax.
3. memory: peak RSS of a fit on N = 10⁶ × 32 float32 points, in a fresh subprocess.

Usage::

    python benchmarks/bench_ekm.py            # full run, a few minutes on 2 cores
    python benchmarks/bench_ekm.py --quick    # small sizes, no sklekmeans, under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings

import numpy as np
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_info, threadpool_limits


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from importlib.metadata import PackageNotFoundError, version

    import sklearn
    import torch

    try:
        skl = version("sklekmeans")
    except PackageNotFoundError:
        skl = "not installed"
    blas = ", ".join(sorted({f"{i['internal_api']} {i.get('version') or ''}".strip() for i in threadpool_info()}))
    return (f"{os.cpu_count()} cores ({cpu}); load average at start {os.getloadavg()[0]:.1f}; Python "
            f"{platform.python_version()}, numpy {np.__version__}, scikit-learn {sklearn.__version__}, "
            f"torch {torch.__version__}, sklekmeans {skl}; {blas}; "
            f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")


def blobs32(n, d, K, seed=0):
    """Blobs like make_blobs (centres in ±10, std 1), generated in float32 chunks (no float64 copy)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 10, (K, d)).astype(np.float32)
    y = rng.integers(0, K, n)
    X = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 1 << 18):
        e = min(n, s + (1 << 18))
        X[s:e] = centres[y[s:e]] + rng.standard_normal((e - s, d), dtype=np.float32)
    return X, y


def timed(make, X, y, repeats):
    best, est = np.inf, None
    for _ in range(repeats):
        est = make()
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X)
        best = min(best, time.perf_counter() - t0)
    conv = getattr(est, "converged_", None)
    return dict(seconds=best, n_iter=int(est.n_iter_), ari=float(adjusted_rand_score(y, est.labels_)),
                converged=conv if conv is not None else "-")


def speed(n, d, K, repeats, with_sklekmeans):
    import torch
    from sklearn.cluster import KMeans

    from aelab.cluster import EquilibriumKMeans, MiniBatchEquilibriumKMeans

    X, y = blobs32(n, d, K)
    rows = {}
    rows["aelab EquilibriumKMeans (numpy)"] = timed(lambda: EquilibriumKMeans(K, random_state=0), X, y, repeats)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows["aelab EquilibriumKMeans (torch CPU, 1 thread)"] = timed(
        lambda: EquilibriumKMeans(K, random_state=0, backend="torch"), X, y, repeats)
    torch.set_num_threads(threads)
    rows["aelab MiniBatchEquilibriumKMeans (batch 4096)"] = timed(
        lambda: MiniBatchEquilibriumKMeans(K, batch_size=4096, random_state=0), X, y, repeats)
    rows["scikit-learn KMeans (default threads)"] = timed(lambda: KMeans(K, random_state=0), X, y, repeats)
    with threadpool_limits(limits=1):
        rows["scikit-learn KMeans (1 thread)"] = timed(lambda: KMeans(K, random_state=0), X, y, repeats)
    if with_sklekmeans:
        try:
            from sklekmeans import EKMeans
        except ImportError:
            print("sklekmeans not installed: skipped", file=sys.stderr)
        else:
            with threadpool_limits(limits=1, user_api="blas"):  # same footing as aelab (1 BLAS thread)
                rows["sklekmeans EKMeans (1 BLAS thread)"] = timed(lambda: EKMeans(K, random_state=0), X, y, 1)
            rows["sklekmeans EKMeans (default threads)"] = timed(lambda: EKMeans(K, random_state=0), X, y, 1)
    return rows


def zscore(X):
    return (X - X.mean(0)) / X.std(0)


def geo_balls(rng):
    sizes = [2000, 50, 200]
    X = np.vstack([rng.normal(c, s, (n, 2)) for n, c, s in zip(sizes, [(0, 0), (5, 0), (0, 5)], [1, 0.5, 0.5])])
    return zscore(X), np.repeat(np.arange(3), sizes)


def geo_squares(rng):
    sizes, specs = [2000, 50, 200], [((0, 0), 4.0), ((5, 0), 1.0), ((0, 5), 1.5)]  # (centre, side)
    X = np.vstack([rng.uniform(np.subtract(c, h / 2), np.add(c, h / 2), (n, 2)) for n, (c, h) in zip(sizes, specs)])
    return zscore(X), np.repeat(np.arange(3), sizes)


def geo_elongated(rng):
    X = np.vstack([rng.normal((0, 0), 1, (2000, 2)), rng.normal((0, 4.5), (2.0, 0.2), (100, 2))])
    return zscore(X), np.repeat(np.arange(2), [2000, 100])


def geo_one_big_eight_small(rng):
    ang = np.arange(8) * 2 * np.pi / 8
    centres = np.c_[np.cos(ang), np.sin(ang)] * 5
    X = np.vstack([rng.normal((0, 0), 1, (2000, 2))] + [rng.normal(c, 0.3, (50, 2)) for c in centres])
    return zscore(X), np.repeat(np.arange(9), [2000] + [50] * 8)


GEOMETRIES = {
    "imbalanced balls 2000/50/200": geo_balls,
    "imbalanced squares 2000/50/200": geo_squares,
    "large ball + small elongated 2000/100": geo_elongated,
    "one large + eight small 2000/8x50": geo_one_big_eight_small,
}


def geometries(seeds):
    from aelab.cluster import METHODS, make_clusterer

    out = {}
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, make in GEOMETRIES.items():
            methods = [m for m in METHODS if m != "ssekm"]  # unsupervised comparison
            scores = {m: [] for m in methods}
            for seed in seeds:
                X, y = make(np.random.default_rng(seed))
                for m in methods:
                    est = make_clusterer(m, len(np.unique(y)), alpha=1.0, random_state=0, n_init=10).fit(X)
                    scores[m].append(adjusted_rand_score(y, est.labels_))
            out[name] = {m: (float(np.mean(v)), float(np.std(v))) for m, v in scores.items()}
    return out


def _status_mb(key: str) -> float:
    """VmRSS / VmHWM of this process. (ru_maxrss would do, but Linux carries it over exec from
    the forking parent, here ~450 MB with torch loaded, which would hide the child's own peak.)"""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(n, d, K):
    from aelab.cluster import EquilibriumKMeans

    before = _status_mb("VmRSS")
    X, y = blobs32(n, d, K)
    with_data = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:  # reset the high-water mark to the current RSS
        fh.write("5")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = EquilibriumKMeans(K, random_state=0).fit(X)
    seconds = time.perf_counter() - t0
    out = dict(n=n, d=d, K=K, data_mb=X.nbytes / 2**20, rss_before_data_mb=before, rss_with_data_mb=with_data,
               peak_mb=_status_mb("VmHWM"), ru_maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               weights_mb=est.weights_.nbytes / 2**20, seconds=seconds, n_iter=int(est.n_iter_),
               ari=float(adjusted_rand_score(y, est.labels_)))
    print(json.dumps(out))


def memory(n, d, K):
    res = subprocess.run([sys.executable, __file__, "--memory-child", str(n), str(d), str(K)], capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, no sklekmeans (under a minute)")
    p.add_argument("--sklekmeans", action="store_true", help="run sklekmeans even with --quick")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--memory-child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        return memory_child(*args.memory_child)
    n = 20_000 if args.quick else 100_000
    seeds = range(2) if args.quick else range(5)
    mem_sizes = [(200_000, 32, 10)] if args.quick else [(1_000_000, 32, 10), (10_000_000, 2, 5)]
    print(f"Machine: {machine()}\n")
    t0 = time.perf_counter()
    sp = speed(n, 32, 10, 1 if args.quick else 3, args.sklekmeans or not args.quick)
    print(f"### Speed: n = {n:,}, d = 32, K = 10, float32 (alpha='dvariance'; best of runs)\n")
    print("| method | wall s | iterations | converged | ARI |\n|---|---:|---:|---|---:|")
    for name, r in sp.items():
        print(f"| {name} | {r['seconds']:.3f} | {r['n_iter']} | {r['converged']} | {r['ari']:.4f} |")
    ours = sp["aelab EquilibriumKMeans (numpy)"]["seconds"]
    for name, r in sp.items():
        if not name.startswith("aelab"):
            print(f"\naelab EKM (numpy) {ours:.3f} s vs {name} {r['seconds']:.3f} s: ratio {r['seconds'] / ours:.2f}"
                  f" ({'aelab faster' if r['seconds'] > ours else 'aelab slower'})")
    geo = geometries(seeds)
    print(f"\n### ARI on synthetic geometries (z-scored, alpha = lambda = 1, n_init = 10, seeds {list(seeds)})\n")
    methods = list(next(iter(geo.values())))
    print("| data | " + " | ".join(methods) + " |\n|---|" + "---:|" * len(methods))
    for name, scores in geo.items():
        print(f"| {name} | " + " | ".join(f"{m:.2f} ± {s:.2f}" for m, s in scores.values()) + " |")
    print("\n### Memory (fresh subprocess; VmRSS / VmHWM from /proc, high-water mark reset before the fit)\n")
    print("| N x d, K | data MB | RSS after imports MB | RSS with data MB | peak RSS during fit MB | "
          "fit overhead (of which weights_) MB | overhead / data | fit s | iterations | ARI |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    mem = [memory(*s) for s in mem_sizes]
    for m in mem:
        over = m["peak_mb"] - m["rss_with_data_mb"]
        print(f"| {m['n']:,} x {m['d']}, {m['K']} | {m['data_mb']:.0f} | {m['rss_before_data_mb']:.0f} | "
              f"{m['rss_with_data_mb']:.0f} | {m['peak_mb']:.0f} | {over:.0f} ({m['weights_mb']:.0f}) | "
              f"{over / m['data_mb']:.2f} | {m['seconds']:.1f} | {m['n_iter']} | {m['ari']:.3f} |")
    print(f"\nTotal benchmark time {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(machine=machine(), speed=sp, geometries=geo, memory=mem), fh, indent=2)


if __name__ == "__main__":
    main()

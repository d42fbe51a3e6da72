"""Does EKM's default seeding reach the lowest objective on imbalanced data? (issue 10)

A family of generated imbalanced geometries: one large Gaussian cluster (spread 1) and 2–5
small ones (spreads 0.3–0.6) whose centres lie 3.5–6 from it, 2–8 dimensions, size ratio
largest : smallest drawn log-uniformly from 2:1 to 100:1, every other set elongated (the
covariance stretched 2.5× along a random direction), z-scored. For each set and each α
(the default ``"dvariance"`` and the paper's α = 1 on z-scored data) the reference is the
lowest objective over 200 random restarts (``init="random"``, one fit each). Reported for
``EquilibriumKMeans(K)`` with default settings (``init="screen"``, ``n_init="auto"``) and for
today's former default (``init="k-means++"``, ``n_init=1``), plus k-means++ with 10 restarts:

* share of sets whose objective is within 0.1 % of the reference (or below it);
* mean ARI against the true classes, next to scikit-learn ``KMeans`` (``n_init=10``) and the
  author's ``sklekmeans.EKMeans`` (same α: its α is half the paper's; ``n_init=10``), if installed;
* total fit time, as a ratio to the former default.

The sets use generator seeds 5000+ (the defaults were chosen on seeds 1000–1023 and on
hand-made 2-D sets, kept apart from these).

Usage::

    python benchmarks/bench_ekm_seeding.py            # 12 sets per α, 2-5 minutes on 2 busy cores
    python benchmarks/bench_ekm_seeding.py --sets 6   # quick look
    python benchmarks/bench_ekm_seeding.py --real-only # Wine / WDBC vs sklekmeans, SSEKM on digits
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from aelab.cluster import EquilibriumKMeans


def make_set(i: int, n_big: int = 1000):
    """Set ``i`` of the family: ``(X z-scored, y, description)``."""
    rng = np.random.default_rng(5000 + i)
    d, K = int(rng.integers(2, 9)), int(rng.integers(3, 7))
    ratio = float(np.exp(rng.uniform(np.log(2), np.log(100))))
    elongated = bool(i % 2)
    t = np.sort(rng.uniform(0, 1, K - 1))
    t[-1] = 1.0  # the smallest cluster is exactly n_big / ratio
    sizes = [n_big] + [max(6, int(round(n_big / ratio**tk))) for tk in t]
    spreads = [1.0] + list(rng.uniform(0.3, 0.6, K - 1))
    centres = [np.zeros(d)]
    while len(centres) < K:
        c = rng.normal(0, 1, d)
        c *= rng.uniform(3.5, 6) / np.linalg.norm(c)
        if all(np.linalg.norm(c - o) >= 2.5 for o in centres[1:]):
            centres.append(c)
    X, y = [], []
    for k, (n, s, c) in enumerate(zip(sizes, spreads, centres)):
        Z = rng.normal(0, s, (n, d))
        if elongated:
            Z[:, 0] *= 2.5
            Z = Z @ np.linalg.qr(rng.normal(size=(d, d)))[0].T
        X.append(Z + c)
        y.append(np.full(n, k))
    X, y = np.vstack(X), np.concatenate(y)
    return (X - X.mean(0)) / X.std(0), y, dict(d=d, K=K, ratio=ratio, elongated=elongated, n=len(X))


def timed_fit(est, X):
    t = time.perf_counter()
    est.fit(X)
    return est, time.perf_counter() - t


def run_set(i: int, alpha, n_ref: int, skl) -> dict:
    X, y, meta = make_set(i)
    K = meta["K"]
    ref = min(EquilibriumKMeans(K, alpha=alpha, init="random", n_init=1, random_state=s).fit(X).objective_
              for s in range(n_ref))
    out = dict(meta)
    variants = {"default": dict(), "former default": dict(init="k-means++", n_init=1),
                "k-means++ ×10": dict(init="k-means++", n_init=10)}
    for name, kw in variants.items():
        est, sec = timed_fit(EquilibriumKMeans(K, alpha=alpha, random_state=0, **kw), X)
        out[name] = dict(hit=est.objective_ <= ref + 1e-3 * abs(ref), ari=adjusted_rand_score(y, est.labels_), s=sec,
                         gap=(est.objective_ - ref) / abs(ref))
    km, sec = timed_fit(KMeans(K, n_init=10, random_state=0), X)
    out["kmeans"] = dict(ari=adjusted_rand_score(y, km.labels_), s=sec)
    if skl is not None:
        a = alpha if alpha == "dvariance" else alpha / 2.0  # sklekmeans' α is on the full squared distance
        est, sec = timed_fit(skl(K, alpha=a, n_init=10, random_state=0), X)
        out["sklekmeans"] = dict(ari=adjusted_rand_score(y, est.labels_), s=sec)
    return out


def table(results: dict) -> str:
    lines = ["| α | sets | method | within 0.1 % of best of 200 | mean ARI | total fit s | time / former default |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for alpha, rows in results.items():
        base = sum(r["former default"]["s"] for r in rows)
        for name in ("default", "former default", "k-means++ ×10", "kmeans", "sklekmeans"):
            if name not in rows[0]:
                continue
            hit = f"{np.mean([r[name]['hit'] for r in rows]):.0%}" if "hit" in rows[0][name] else "–"
            total = sum(r[name]["s"] for r in rows)
            label = {"kmeans": "scikit-learn KMeans (n_init=10)", "sklekmeans": "sklekmeans EKMeans (n_init=10)",
                     "default": "aelab EKM default (screen, n_init=auto=2)",
                     "former default": "aelab EKM former default (k-means++, n_init=1)",
                     "k-means++ ×10": "aelab EKM k-means++, n_init=10"}[name]
            lines.append(f"| {alpha} | {len(rows)} | {label} | {hit} | {np.mean([r[name]['ari'] for r in rows]):.3f} "
                         f"| {total:.2f} | {total / base:.2f} |")
    return "\n".join(lines)


def objective(X, centers, alpha: float) -> float:
    """EKM's J = Σ_n h_n at given centroids (paper convention), to score any package's result."""
    from aelab.cluster import ekm_weights

    d = 0.5 * ((X[:, None, :] - np.asarray(centers, dtype=np.float64)[None]) ** 2).sum(-1)
    return float(ekm_weights(d, alpha)[2].sum())


def real_sets(skl) -> str:
    """The paper's UCI sets that scikit-learn ships (Wine, WDBC), z-scored, α = "dvariance".

    aelab's default against aelab and sklekmeans with 20 k-means++ starts: objective (aelab's
    convention, same α) and wall time (best of 3).
    """
    from sklearn.datasets import load_breast_cancer, load_wine

    lines = ["| data | method | objective J | ARI | wall s |", "|---|---|---:|---:|---:|"]
    for name, loader in (("Wine (178 × 13, K = 3)", load_wine), ("WDBC (569 × 30, K = 2)", load_breast_cancer)):
        X, y = loader(return_X_y=True)
        X = (X - X.mean(0)) / X.std(0)
        K = len(np.unique(y))
        runs = {"aelab default (screen, n_init=auto)": lambda: EquilibriumKMeans(K, random_state=0),
                "aelab k-means++, n_init=20": lambda: EquilibriumKMeans(K, init="k-means++", n_init=20, random_state=0)}
        if skl is not None:
            runs["sklekmeans EKMeans, n_init=20"] = lambda: skl(K, n_init=20, random_state=0)
        alpha = EquilibriumKMeans(K).fit(X).alpha_
        for label, make in runs.items():
            est, sec = min((timed_fit(make(), X) for _ in range(3)), key=lambda r: r[1])
            lines.append(f"| {name} | {label} | {objective(X, est.cluster_centers_, alpha):.4f} "
                         f"| {adjusted_rand_score(y, est.labels_):.3f} | {sec:.3f} |")
    return "\n".join(lines)


def ssekm_digits() -> str:
    """Semi-supervised EKM on scikit-learn's digits 2, 5, 8 at 120:60:60 (study 2b's setting), z-scored.

    α from the label-blind EKM search for 2:1:1 (as ``aelab cluster --method ssekm``); SSEKM sees
    the labels of 5 %, 10 % or 30 % of each class (θ = "auto" = N / |S|); ARI on all points.
    """
    from sklearn.datasets import load_digits

    from aelab.cluster import SemiSupervisedEquilibriumKMeans, find_alpha
    from aelab.cluster.inputs import partial_labels as _partial_labels

    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), n, replace=False)
                          for c, n in ((2, 120), (5, 60), (8, 60))])
    X, y = X[idx], y[idx]
    s = X.std(0)
    X = (X - X.mean(0)) / np.where(s > 0, s, 1)
    alpha = find_alpha(X, 3, (2, 1, 1)).alpha
    rows = [("EKM (no labels)", EquilibriumKMeans(3, alpha=alpha, random_state=0).fit(X))]
    for frac in (0.05, 0.1, 0.3):
        yf = _partial_labels([str(v) for v in y], frac, 0)
        rows.append((f"SSEKM, {int((yf >= 0).sum())} labels ({frac:.0%})",
                     SemiSupervisedEquilibriumKMeans(3, alpha=alpha).fit(X, yf)))
    rows.append(("scikit-learn KMeans (n_init=10)", KMeans(3, n_init=10, random_state=0).fit(X)))
    lines = [f"| digits 2/5/8, 120:60:60, α = {alpha:.4g} | cluster sizes | ARI |", "|---|---|---:|"]
    lines += [f"| {name} | {':'.join(map(str, sorted(np.bincount(e.labels_), reverse=True)))} "
              f"| {adjusted_rand_score(y, e.labels_):.3f} |" for name, e in rows]
    return "\n".join(lines)


def large_and_two_small(sizes, distance, seed=0):
    """2-D: a unit Gaussian of sizes[0] points and two of spread 0.5 at ``distance`` on the axes, z-scored."""
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.normal(0, 1, (sizes[0], 2)), rng.normal(0, 0.5, (sizes[1], 2)) + [distance, 0],
                   rng.normal(0, 0.5, (sizes[2], 2)) + [0, distance]])
    y = np.repeat(np.arange(3), sizes)
    return (X - X.mean(0)) / X.std(0), y


def hard_2d(n_ref: int) -> str:
    """The issue's kind of set (α = 1, 2-D, tens to one), where few starts of any kind reach the best J.

    Reference: the lower of the best of ``n_ref`` random restarts and EKM started at the true class
    means. Each method runs with random_state 0, 1, 2 (the hand-made sets on which the default
    was chosen, so this part is not held out).
    """
    cases = [((2000, 60, 40), 5.0), ((2000, 100, 50), 4.0), ((2000, 100, 50), 5.0), ((1500, 50, 50), 4.0),
             ((1500, 50, 50), 5.0), ((2000, 60, 40), 4.0)]
    variants = {"aelab EKM default (screen, n_init=auto=2)": dict(),
                "aelab EKM former default (k-means++, n_init=1)": dict(init="k-means++", n_init=1),
                "aelab EKM k-means++, n_init=10": dict(init="k-means++", n_init=10)}
    hits = dict.fromkeys(variants, 0)
    for sizes, dist in cases:
        X, y = large_and_two_small(sizes, dist)
        means = np.stack([X[y == k].mean(0) for k in range(3)])
        ref = min([EquilibriumKMeans(3, alpha=1.0, init=means).fit(X).objective_]
                  + [EquilibriumKMeans(3, alpha=1.0, init="random", n_init=1, random_state=s).fit(X).objective_
                     for s in range(n_ref)])
        for name, kw in variants.items():
            hits[name] += sum(EquilibriumKMeans(3, alpha=1.0, random_state=s, **kw).fit(X).objective_ <= ref * 1.001
                              for s in range(3))
    lines = ["| method (6 hand-made 2-D sets × 3 random states, α = 1) | within 0.1 % of the reference |", "|---|---:|"]
    lines += [f"| {name} | {h} / {3 * len(cases)} |" for name, h in hits.items()]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", type=int, default=12, help="sets per α (12 keeps the run a few minutes)")
    p.add_argument("--restarts", type=int, default=200, help="random restarts for the reference objective")
    p.add_argument("--real-only", action="store_true", help="only the UCI sets and the digits (SSEKM)")
    args = p.parse_args(argv)
    try:
        from sklekmeans import EKMeans as skl
    except ImportError:
        skl = None
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    print(f"{os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.1f}; "
          f"sklekmeans {'installed' if skl else 'not installed'}")
    results = {}
    with threadpool_limits(limits=1):
        print(real_sets(skl), flush=True)
        print(ssekm_digits(), flush=True)
        if args.real_only:
            return
        print(hard_2d(args.restarts), flush=True)
        for alpha in ("dvariance", 1.0):
            results[alpha] = []
            for i in range(args.sets):
                r = run_set(i, alpha, args.restarts, skl)
                results[alpha].append(r)
                miss = "" if r["default"]["hit"] else f"  MISS gap {r['default']['gap']:.2%}"
                print(f"α={alpha} set {i}: d={r['d']} K={r['K']} ratio {r['ratio']:.0f}:1 "
                      f"{'elongated' if r['elongated'] else 'spherical'} n={r['n']}{miss}", flush=True)
    print()
    print(table(results))
    print(f"\nwall time {time.perf_counter() - t0:.0f} s; load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

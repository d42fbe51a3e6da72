"""Single-layer k-means features (Coates, Lee & Ng 2011) on CIFAR-10 photos in the course layout.

Draws course-layout folders from the extracted CIFAR-10 training split (Krizhevsky 2009,
``/work/data/train/<class>/NNNNN.jpg``; ``--source``): per seed, ``--labels`` labelled images per
class, ``--unlabelled`` unlabelled and ``--test`` test images, all disjoint, written as symlinks
under ``--work`` with ``test_labels.csv`` (the folder ``aelab run --data`` takes). Then, on 32×32
images and study 1's stratified validation split (``val_fraction`` 0.2, the study's seed), it scores
on the test images:

- ``pixels``: standardised logistic regression on the raw pixels (C by 3-fold CV);
- ``kmeans-K-P`` / ``ekm-K[-sS]-P``: what `aelab.train.baselines.kmeans_features_baseline` does, with that
  learner, K centroids (and EKM α scale S) and pooling P (e.g. ``max3``): dictionary on the unlabelled images, logistic
  regression on the training split with C = ``FEATURES_C`` (``--C cv``: 3-fold CV on the split);
  ``--augment none,auto`` scores both on the same dictionary: the classifier on the training images alone, and
  on them with their copies (`aelab.train.baselines.labelled_copies`, the study's default ``auto``);
  ``--poolings max3,sum2`` scores each pooling (max or sum) over its grid (3: 3 × 3 regions, the study's default;
  ``sum2``: Coates et al.'s four quadrant sums), each on the same fitted dictionary (its fit is timed in the
  first pooling's row only).

Each row reports test accuracy, validation accuracy, the chosen C, the process CPU seconds of
fit + encoding + CV (the fair time on a shared machine; run with ``OMP_NUM_THREADS=1`` for
one-core figures), and (JSON only, untimed) the test accuracy at every C of the grid.

    OMP_NUM_THREADS=1 python benchmarks/bench_kmeans_features.py --seeds 0,1 --centroids 400,800,1600
    OMP_NUM_THREADS=1 python benchmarks/bench_kmeans_features.py --seeds 2 --centroids 800 --learners kmeans
    OMP_NUM_THREADS=1 python benchmarks/bench_kmeans_features.py --seeds 0,1 --centroids 800 --learners kmeans \
        --augment none,auto
    OMP_NUM_THREADS=1 python benchmarks/bench_kmeans_features.py --seeds 0,1 --centroids 800 --learners kmeans \
        --augment auto --poolings sum2,max2,max3 --no-pixels
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import numpy as np


def draw(source: Path, work: Path, seed: int, labels: int, n_unlabelled: int, n_test: int) -> Path:
    """A course-layout folder of symlinks: dev/labelled/<class>/, dev/unlabelled/, test/, test_labels.csv."""
    root = work / f"cifar_{labels}_{n_unlabelled}_{n_test}_seed{seed}"
    if (root / "test_labels.csv").exists():
        return root
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in source.iterdir() if p.is_dir())
    pool = []
    for ci, c in enumerate(classes):
        files = sorted((source / c).glob("*.jpg"))
        files = [files[i] for i in rng.permutation(len(files))]
        for f in files[:labels]:
            (root / "dev" / "labelled" / c).mkdir(parents=True, exist_ok=True)
            (root / "dev" / "labelled" / c / f.name).symlink_to(f)
        pool += [(f, c) for f in files[labels:]]
    order = rng.permutation(len(pool))
    (root / "dev" / "unlabelled").mkdir(parents=True, exist_ok=True)
    (root / "test").mkdir(parents=True, exist_ok=True)
    for j, i in enumerate(order[:n_unlabelled]):
        (root / "dev" / "unlabelled" / f"{j:05d}.jpg").symlink_to(pool[i][0])
    lines = ["id,label"]
    for j, i in enumerate(order[n_unlabelled : n_unlabelled + n_test]):
        (root / "test" / f"{j:05d}.jpg").symlink_to(pool[i][0])
        lines.append(f"{j:05d},{pool[i][1]}")
    (root / "test_labels.csv").write_text("\n".join(lines) + "\n")
    return root


def load(root: Path, seed: int, size: int = 32):
    from aelab.data import image_ids, load_images, read_labels_csv, resolve_layout, scan_labelled
    from aelab.train.loaders import split_indices

    lay = resolve_layout(root)
    lab = scan_labelled(lay.require("labelled"))
    x = load_images(lab.paths, size, 3).images
    unl = load_images(lay.unlabelled, size, 3).images
    test = load_images(lay.test, size, 3)
    truth = read_labels_csv(lay.test_labels)
    y_test = np.array([lab.classes.index(truth[i]) for i in image_ids(test.paths)])
    train_idx, val_idx = split_indices(len(lab.labels), 0.2, seed, lab.labels)
    return x, lab.labels, train_idx, val_idx, np.asarray(unl), np.asarray(test.images), y_test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="/work/data/train")
    ap.add_argument("--work", default="/tmp/aelab_cifar_draws")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--labels", default="25", help="labelled images per class, comma-separated")
    ap.add_argument("--unlabelled", type=int, default=5000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--centroids", default="400,800")
    ap.add_argument("--learners", default="kmeans,ekm")
    ap.add_argument("--ekm-scales", default="", help="EKM α scales to try (default: KMeansFeatures' ekm_scale)")
    ap.add_argument("--C", default=None, help="logistic regression C; 'cv' = 3-fold CV over C_GRID; default FEATURES_C")
    ap.add_argument("--augment", default="none,auto",
                    help="comma list of kmeans_features_augment settings (none, shift, flip-shift, auto), one row each")
    ap.add_argument("--poolings", default="max3",
                    help="poolings, comma-separated: max or sum, then the grid (max3: the default; sum2: the paper's)")
    ap.add_argument("--no-pixels", action="store_true", help="skip the logistic regression on pixels")
    ap.add_argument("--json", default=None, help="append one JSON line per row to this file")
    args = ap.parse_args()

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from aelab.train.baselines import C_GRID, FEATURES_C, check_copies, labelled_copies, logistic_cv
    from aelab.train.patch_features import KMeansFeatures

    for augment in args.augment.split(","):
        check_copies(augment)  # before any dictionary is fitted
    poolings = []
    for v in args.poolings.split(","):
        if v[:3] not in ("max", "sum") or not v[3:].isdigit() or int(v[3:]) < 1:
            ap.error(f"--poolings: {v!r} is not max or sum followed by a grid size such as max3 or sum2")
        poolings.append((v[:3], int(v[3:])))
    grid = C_GRID if args.C == "cv" else (FEATURES_C if args.C is None else float(args.C),)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for labels in [int(v) for v in args.labels.split(",")]:
        for seed in [int(v) for v in args.seeds.split(",")]:
            root = draw(Path(args.source), work, seed, labels, args.unlabelled, args.test)
            x, y, tr, va, unl, xt, yt = load(root, seed)
            runs = [] if args.no_pixels else [("pixels", None, None, None, None, None)]
            for k in args.centroids.split(","):
                for lrn in args.learners.split(","):
                    scales = ([float(v) for v in args.ekm_scales.split(",")] if lrn == "ekm" and args.ekm_scales
                              else [None])
                    runs += [(f"{lrn}-{k}" + ("" if sc is None else f"-s{sc:g}") + f"-{pool}{g}", lrn, int(k), sc,
                              pool, g) for sc in scales for pool, g in poolings]
            fitted = {}
            for name, learner, k, scale, *pooling in runs:
                c0, w0 = time.process_time(), time.perf_counter()
                if learner is None:
                    def feats(a):
                        return a.reshape(len(a), -1).astype(np.float32) / 255.0
                elif (learner, k, scale) in fitted:  # the same dictionary, another pooling
                    f = copy.copy(fitted[learner, k, scale])
                    f.pooling, f.grid = pooling
                    feats = f.transform
                else:
                    f = KMeansFeatures(k, learner=learner, random_state=seed, pooling=pooling[0], grid=pooling[1],
                                       **({} if scale is None else dict(ekm_scale=scale)))
                    fitted[learner, k, scale] = f.fit(unl)
                    feats = f.transform
                X, Xt = feats(x), feats(xt)
                # C by CV on the images alone (a copy in one fold and its image in another would leak), once for
                # every setting of the copies
                C = logistic_cv(X[tr], y[tr], grid, seed=seed)[1] if len(grid) > 1 else grid[0]
                fit_cpu, fit_wall = time.process_time() - c0, time.perf_counter() - w0
                for augment in (["none"] if learner is None else args.augment.split(",")):
                    c1, w1 = time.process_time(), time.perf_counter()
                    sets = [X[tr]] + [feats(c) for c in labelled_copies(x[tr], augment)[1:]]
                    Xa, ya = np.concatenate(sets), np.tile(y[tr], len(sets))
                    clf = logistic_cv(Xa, ya, (C,), seed=seed)[0]
                    val, pred = clf.predict(X[va]), clf.predict(Xt)
                    cpu = fit_cpu + time.process_time() - c1
                    wall = fit_wall + time.perf_counter() - w1
                    def test_at(c):
                        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000)).fit(Xa, ya)
                        return round(float(np.mean(model.predict(Xt) == yt)), 3)

                    by_c = {c: test_at(c) for c in C_GRID}
                    label = name if augment == "none" or learner is None else f"{name}+{augment}"
                    row = dict(labels=labels, seed=seed, method=label, test_acc=round(float(np.mean(pred == yt)), 4),
                               val_acc=round(float(np.mean(val == y[va])), 4), n_val=int(len(va)), C=C,
                               cpu_s=round(cpu, 1), wall_s=round(wall, 1), test_by_C=by_c, note=f"C={C:g}")
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.json:
                        with open(args.json, "a") as fh:
                            fh.write(json.dumps(row) + "\n")
    print(f"\nOMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average {os.getloadavg()[0]:.1f}\n")
    print("| labels/class | seed | method | test acc | val acc | CPU s | wall s | note |")
    print("|---:|---:|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['labels']} | {r['seed']} | {r['method']} | {r['test_acc']:.3f} | {r['val_acc']:.3f} | "
              f"{r['cpu_s']} "
              f"| {r['wall_s']} | {r['note']} |")


if __name__ == "__main__":
    main()

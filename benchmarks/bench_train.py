"""Whole training epochs (data + model) side by side, and what pretraining adds on the demo data.

Part 1: the same model (preset ``small``), batch size, images (real PNG files) and augmentation
list, trained one epoch at a time with (a) aelab's pipeline (decode-once cache + batched kornia
augmentation) and (b) the seed-style per-image PIL DataLoader of ``bench_data.py``. Images/s of
whole epochs from the second on.

Part 2: demo test accuracy of ``pretrain`` + ``finetune`` against the same fine-tune from random
weights, with and without the seed's augmentation list, through aelab's own API.

    python benchmarks/bench_train.py            # both parts, about 10 minutes on 2 cores
    python benchmarks/bench_train.py --part 1   # epochs only
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import cpu_model, make_aelab_batches, make_seed_loader  # noqa: E402

from aelab.data import list_images, make_demo_data  # noqa: E402
from aelab.models import build_model, preset_config  # noqa: E402


def time_training(batches, epochs: int, image_size: int, seed: int = 0) -> list[float]:
    """Seconds per epoch of a full training step per batch: forward, MSE, backward, AdamW."""
    torch.manual_seed(seed)
    model = build_model(preset_config("small", image_size=image_size, num_classes=0, head="none"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            out = model(x)
            loss = F.mse_loss(out.reconstruction, x.clamp(0, 1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return times


def part1(args, tmp: Path) -> list[dict]:
    root = tmp / "epochs"
    layout = make_demo_data(root, image_size=args.size, n_unlabelled=args.n, n_test=0, labelled_per_class=1,
                            n_anomaly_normal=0, n_anomalous=0)
    paths = list_images(layout.unlabelled)
    rows = []
    pipelines = [("aelab: cached uint8 + batched kornia",
                  lambda: make_aelab_batches(paths, args.size, args.batch_size, cache_dir=str(tmp / "cache")))]
    for w in args.workers:
        pipelines.append((f"seed-style: PIL per item, num_workers={w}",
                          lambda w=w: make_seed_loader(paths, args.size, args.batch_size, num_workers=w)))
    for name, make in pipelines:
        times = time_training(make(), args.epochs, args.size)
        steady = sum(times[1:]) / max(len(times) - 1, 1)
        rows.append(dict(pipeline=name, first_epoch_s=round(times[0], 2), epoch_s=round(steady, 2),
                         images_per_s=round(len(paths) / steady, 1)))
        print(rows[-1], flush=True)
    return rows


def part2(args, tmp: Path) -> list[dict]:
    from aelab.train import FinetuneConfig, PredictConfig, PretrainConfig, finetune, predict, pretrain

    root = tmp / "demo"
    make_demo_data(root, seed=0)
    common = dict(device="cpu", seed=0)
    t0 = time.perf_counter()
    pre = pretrain(PretrainConfig(data=str(root), epochs=args.pretrain_epochs, out=str(tmp / "pre"), **common))
    pre_s = time.perf_counter() - t0
    rows = []
    for init in (True, False):
        for aug in ("none", "course"):
            t0 = time.perf_counter()
            run = finetune(FinetuneConfig(data=str(root), init_from=str(pre) if init else None, augment=aug,
                                          epochs=args.finetune_epochs, out=str(tmp / f"ft_{init}_{aug}"), **common))
            pred = predict(PredictConfig(model=str(run), data=str(root), out=str(run / "pred"), device="cpu"))
            acc = json.loads((pred / "metrics.json").read_text())["accuracy"]
            rows.append(dict(init="pretrained" if init else "random", augment=aug, test_accuracy=acc,
                             finetune_s=round(time.perf_counter() - t0, 1)))
            print(rows[-1], flush=True)
    rows.append(dict(init="(pretrain itself)", augment="", test_accuracy=None, finetune_s=round(pre_s, 1)))
    return rows


def table(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", type=int, choices=[0, 1, 2], default=0, help="0 = both")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--finetune-epochs", type=int, default=20)
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"machine: {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    with tempfile.TemporaryDirectory(prefix="aelab_bench_train_") as tmp:
        if args.part in (0, 1):
            print(table(part1(args, Path(tmp))))
        if args.part in (0, 2):
            print(table(part2(args, Path(tmp))))


if __name__ == "__main__":
    main()

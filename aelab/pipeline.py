"""``aelab run``: the three studies end to end, stage by stage, then the report.

Each stage writes its own subfolder of the run folder and is recorded in ``stages.json`` when
it finishes, so re-running the same command resumes after the last finished stage (``--force``
redoes everything) and Ctrl-C loses at most the stage in progress. The pipeline composes the
public APIs (``aelab.train``, ``aelab.cluster.study``, ``aelab.anomaly``); it does not
re-implement them.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from aelab import __version__
from aelab.errors import AelabError
from aelab.progress import info
from aelab.runs import atomic_write_text, save_config, set_seed

__all__ = ["RunConfig", "run_all", "STAGES"]


@dataclass
class RunConfig:
    """Settings of the whole job (defaults: the demo data, finishing in minutes on a laptop CPU).

    Attributes:
        data: root folder in the seed layout; none = build the demo data (MNIST digits) in the run folder.
        out: run folder; re-running with the same folder resumes after the last finished stage.
        force: redo every stage even if the run folder has it.
        preset: network size: tiny, small (CPU) or seed (the report's full-size network, for GPUs).
        image_size: square size every image is resized to; none = the preset's (32 for tiny/small, 64 for seed).
        channels: 1 or 3 image channels.
        pretrain_epochs: maximum pretraining epochs.
        finetune_epochs: maximum fine-tuning epochs (each of the three fine-tunes).
        augment: augmentation preset compared against none in study 1b.
        cluster_classes: three (or more) class names for study 2b, comma-separated; auto = the first three classes.
        cluster_ratio: subsample the chosen classes to this size ratio (study 2b uses 2:1:1).
        normal_class: the normal class of study 3 when the data have no anomaly/normal folder; auto = the first class.
        anomaly_epochs: maximum epochs of the anomaly detectors.
        demo_unlabelled: demo data: number of unlabelled images.
        demo_labelled_per_class: demo data: labelled images per class.
        demo_test: demo data: number of test images.
        seed: one seed for everything.
        device: auto, cpu, cuda or mps.
        precision: auto, 32-true, bf16-mixed or 16-mixed.
    """

    data: str | None = None
    out: str = "runs/aelab"
    force: bool = False
    preset: str = "small"
    image_size: int | None = None
    channels: int = 3
    pretrain_epochs: int = 15
    finetune_epochs: int = 40
    augment: str = "seed"
    cluster_classes: str = "auto"
    cluster_ratio: str = "2:1:1"
    normal_class: str = "auto"
    anomaly_epochs: int = 30
    demo_unlabelled: int = 3000
    demo_labelled_per_class: int = 20
    demo_test: int = 500
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"


class Skip(Exception):
    """A stage that cannot run for the data given; its message is the reason shown in the report."""


class _Ctx:
    def __init__(self, cfg: RunConfig, run_dir: Path):
        self.cfg, self.dir = cfg, run_dir
        self.engine = dict(seed=cfg.seed, device=cfg.device, precision=cfg.precision)

    @property
    def data(self) -> Path:
        return Path(self.cfg.data) if self.cfg.data else self.dir / "demo_data"

    def sub(self, name: str, fresh: bool = True) -> Path:
        path = self.dir / name
        if fresh and path.exists():
            shutil.rmtree(path)  # a stage interrupted half-way starts over
        return path


def _stage_data(ctx: _Ctx) -> dict:
    from aelab.data import make_demo_data, resolve_layout

    if ctx.cfg.data is None:
        make_demo_data(ctx.sub("demo_data"), seed=ctx.cfg.seed, labelled_per_class=ctx.cfg.demo_labelled_per_class,
                       n_unlabelled=ctx.cfg.demo_unlabelled, n_test=ctx.cfg.demo_test)
    layout = resolve_layout(ctx.data)
    return {"data": str(ctx.data), "demo": ctx.cfg.data is None,
            **{k: (str(v) if v else None) for k, v in asdict(layout).items() if k != "root"}}


def _stage_pretrain(ctx: _Ctx) -> dict:
    from aelab.train import PretrainConfig, pretrain

    run = pretrain(PretrainConfig(data=str(ctx.data), preset=ctx.cfg.preset, channels=ctx.cfg.channels, image_size=ctx.cfg.image_size,
                                  epochs=ctx.cfg.pretrain_epochs, out=str(ctx.sub("pretrain")), **ctx.engine))
    return {"run": str(run)}


def _finetune(ctx: _Ctx, name: str, init: bool, augment: str) -> dict:
    from aelab.data import resolve_layout
    from aelab.train import FinetuneConfig, PredictConfig, finetune, load_checkpoint, predict

    run = finetune(FinetuneConfig(
        data=str(ctx.data), init_from=str(ctx.dir / "pretrain") if init else None, preset=ctx.cfg.preset,
        channels=ctx.cfg.channels, image_size=ctx.cfg.image_size, augment=augment, epochs=ctx.cfg.finetune_epochs,
        out=str(ctx.sub(name)), **ctx.engine))
    best = load_checkpoint(run)
    result = {"run": str(run), "val_acc": best["metrics"]["val_acc"], "best_epoch": best["epoch"], "test": {}}
    if resolve_layout(ctx.data).test is not None:
        pred = predict(PredictConfig(model=str(run), data=str(ctx.data), out=str(run / "predict"), device=ctx.cfg.device))
        result["test"] = json.loads((pred / "metrics.json").read_text())
    return result


def _stage_predict(ctx: _Ctx) -> dict:
    """The submission: the fine-tune (with or without augmentation) with the higher validation accuracy."""
    stages = _load_stages(ctx.dir)
    done = {n: stages[n]["result"] for n in ("finetune_aug", "finetune_noaug") if stages.get(n, {}).get("status") == "done"}
    chosen = max(done, key=lambda n: done[n]["val_acc"])  # ties: the augmented one, listed first
    src = ctx.dir / chosen / "predict" / "predictions.csv"
    if not src.is_file():
        raise Skip("the data have no test folder (ROOT/test/) to predict")
    shutil.copyfile(src, ctx.dir / "predictions.csv")
    return {"model": chosen, "predictions": str(ctx.dir / "predictions.csv")}


def _stage_cluster(ctx: _Ctx) -> dict:
    """Study 2b: the course report's classes 2, 5, 8 at 2:1:1 when they exist (else the first three),
    clustered by EKM, k-means, the course report's softmax variant and semi-supervised EKM."""
    from aelab.cluster.study import ClusterConfig, load_embeddings, run_cluster_study
    from aelab.data import natural_key
    from aelab.train import EmbedConfig, embed

    emb = embed(EmbedConfig(model=str(ctx.dir / "finetune_aug"), data=str(ctx.data), out=str(ctx.sub("embed")), device=ctx.cfg.device))
    X, _, labels = load_embeddings(emb)
    classes = sorted({lab for lab in labels if lab}, key=natural_key)
    if ctx.cfg.cluster_classes == "auto":
        if len(classes) < 3:
            raise Skip(f"the clustering study needs at least three labelled classes, found {len(classes)}")
        picked = ["2", "5", "8"] if {"2", "5", "8"} <= set(classes) else classes[:3]
    else:
        picked = [c.strip() for c in ctx.cfg.cluster_classes.split(",")]
    parts = ctx.cfg.cluster_ratio.split(":")
    common = dict(classes=",".join(picked), ratio=ctx.cfg.cluster_ratio if len(parts) == len(picked) else None,
                  target_ratio=ctx.cfg.cluster_ratio, seed=ctx.cfg.seed)
    out = {"embed": str(emb), "classes": picked, "n_embedded": int(X.shape[0])}
    for method in ("ekm", "kmeans", "course-softmax", "ssekm"):
        res = run_cluster_study(ClusterConfig(str(emb), out=str(ctx.sub(f"cluster_{method}")), method=method, **common))
        out[method] = str(res.run_dir)
        out[f"{method}_ari"] = res.metrics.get("ari")
    return out


def _stage_anomaly(ctx: _Ctx) -> dict:
    from aelab.pipeline_anomaly import run_anomaly_study

    return run_anomaly_study(ctx, Skip)


def _stage_report(ctx: _Ctx) -> dict:
    from aelab.report.build import build_report

    files = build_report(ctx.dir)
    return {k: str(v) for k, v in files.items()}


STAGES: list[tuple[str, Callable[[_Ctx], dict]]] = [
    ("data", _stage_data),
    ("pretrain", _stage_pretrain),
    ("finetune_aug", lambda ctx: _finetune(ctx, "finetune_aug", True, ctx.cfg.augment)),
    ("finetune_noaug", lambda ctx: _finetune(ctx, "finetune_noaug", True, "none")),
    ("finetune_random", lambda ctx: _finetune(ctx, "finetune_random", False, ctx.cfg.augment)),
    ("predict", _stage_predict),
    ("cluster", _stage_cluster),
    ("anomaly", _stage_anomaly),
]


def _load_stages(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "stages.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _save_stages(run_dir: Path, stages: dict[str, Any]) -> None:
    atomic_write_text(run_dir / "stages.json", json.dumps(stages, indent=2) + "\n")


def run_all(cfg: RunConfig) -> Path:
    """Run every stage not yet finished in ``cfg.out``, then build the report. Returns the run folder."""
    run_dir = Path(cfg.out)
    if cfg.data is not None and Path(cfg.data).resolve().is_relative_to(run_dir.resolve()):
        raise AelabError(f"the data folder {cfg.data} lies inside the run folder {run_dir}; choose another --out")
    if cfg.force and run_dir.exists():
        if any(run_dir.iterdir()) and not (run_dir / "stages.json").is_file():
            raise AelabError(f"--force would delete {run_dir}, which is not an aelab run folder (no stages.json)")
        shutil.rmtree(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not (run_dir / "stages.json").is_file():
        raise AelabError(f"{run_dir} exists and is not an aelab run folder; choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / "config.yaml"
    finished = [k for k, v in _load_stages(run_dir).items() if not k.startswith("_") and v.get("status") == "done"]
    if saved.is_file() and finished:
        from aelab.runs import load_config

        old = load_config(run_dir)
        changed = [k for k, v in asdict(cfg).items() if k not in ("force", "out") and old.get(k) != v]
        if changed:
            raise AelabError(f"{run_dir} was run with other settings ({', '.join(changed)}); "
                             "use another --out or --force to start over")
    save_config(run_dir, cfg)
    stages = _load_stages(run_dir)
    _save_stages(run_dir, stages)  # marks the folder as a run folder from the start
    from aelab.train.inference import pick_device

    stages.setdefault("_meta", {"aelab_version": __version__, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                "device": str(pick_device(cfg.device))})
    ctx = _Ctx(cfg, run_dir)
    for name, fn in STAGES:
        if name in stages and stages[name].get("status") in ("done", "skipped"):
            info(f"[run] {name}: already done, skipping (use --force to redo)")
            continue
        set_seed(cfg.seed)
        info(f"[run] {name} ...")
        t0 = time.perf_counter()
        try:
            result, status, reason = fn(ctx), "done", None
        except Skip as exc:
            result, status, reason = {}, "skipped", str(exc)
            info(f"[run] {name}: skipped: {reason}")
        except AelabError as exc:
            if name in ("data", "pretrain", "finetune_aug"):
                raise  # later stages depend on these
            result, status, reason = {}, "failed", f"failed: {exc}"
            info(f"[run] {name}: {reason}")
        except Exception as exc:  # a bug in one study must not lose the others; keep the trace on disk
            if name in ("data", "pretrain", "finetune_aug"):
                raise
            (run_dir / f"{name}.error.txt").write_text(traceback.format_exc())
            result, status, reason = {}, "failed", f"failed with {exc.__class__.__name__}: {exc} (see {name}.error.txt)"
            info(f"[run] {name}: {reason}")
        elapsed = time.perf_counter() - t0
        stages[name] = {"status": status, "reason": reason, "seconds": round(elapsed, 2), "result": result}
        _save_stages(run_dir, stages)
        info(f"[run] {name}: {status} in {elapsed:.1f} s")
    t0 = time.perf_counter()
    files = _stage_report(ctx)
    info(f"[run] report written in {time.perf_counter() - t0:.1f} s: {files.get('html')}, {files.get('pdf')}")
    return run_dir

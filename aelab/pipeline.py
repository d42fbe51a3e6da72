"""``aelab run``: the three studies end to end, stage by stage, then the report.

Each stage writes its own subfolder of the run folder and is recorded in ``stages.json`` when
it finishes, so re-running the same command resumes after the last finished stage (``--force``
redoes everything) and Ctrl-C loses at most the stage in progress. The pipeline composes the
public APIs (``aelab.train``, ``aelab.cluster.study``, ``aelab.anomaly``); it does not
re-implement them.
"""

from __future__ import annotations

import shutil
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar

from aelab import __version__
from aelab.anomaly.run_study import AnomalyStudySettings
from aelab.cluster.study import ClusterSettings
from aelab.errors import AelabError, NoUnlabelledImages, StageSkipped
from aelab.layout import RunLayout
from aelab.progress import info
from aelab.results import (
    ClassificationResult,
    ClusterStudyResult,
    DataResult,
    MethodResult,
    PretrainResult,
    RunStages,
    StageRecord,
)
from aelab.runs import atomic_write_text, clear_run_dir, lock_run_dir, run_dir_entries, save_config, set_seed
from aelab.train.methods import METHODS
from aelab.train.study import ClassificationStudyConfig

__all__ = ["RunConfig", "run_all", "shared_stages", "stages_for"]


@dataclass
class RunConfig(ClassificationStudyConfig):
    """Settings of the whole job (defaults: the demo data, finishing in under 10 minutes on a laptop CPU).

    Study 1's settings (methods, epochs, preset ...) and the engine options (seed, device, devices,
    precision, strict, logger) are declared once, in `ClassificationStudyConfig` and `RunOptions`.

    Attributes:
        data: root folder in the folder layout; none = build the demo data (MNIST digits) in the run folder.
        out: run folder; re-running with the same folder resumes after the last finished stage.
        force: redo every stage even if the run folder has it.
        cluster: study 2b (``--cluster.NAME``, as `aelab cluster`'s flags): by default the course report's
            classes 2,5,8 (else the first three) subsampled to 2:1:1; every method of the study (EKM,
            k-means, the course report's softmax variant, semi-supervised EKM) is run, so ``method`` is not used.
        anomaly: study 3 (``--anomaly.NAME``, as `aelab anomaly fit`'s flags, plus ``normal_class``); 30 epochs
            (the detector's default is 100) to keep the whole run under 10 minutes on a laptop CPU.
        demo_unlabelled: demo data: number of unlabelled images.
        demo_labelled_per_class: demo data: labelled images per class.
        demo_test: demo data: number of test images.
    """

    data: str | None = None
    out: str = "runs/aelab"
    force: bool = False
    cluster: ClusterSettings = field(default_factory=lambda: ClusterSettings(classes="auto", ratio="2:1:1"))
    anomaly: AnomalyStudySettings = field(default_factory=lambda: AnomalyStudySettings(epochs=30))
    demo_unlabelled: int = 3000
    demo_labelled_per_class: int = 20
    demo_test: int = 500

    OUT_MAY_HOLD_A_RUN: ClassVar[bool] = True


class _Group:
    """The processes of ``aelab run --devices N`` (one process without it).

    Lightning Fabric starts them (on one machine by re-running the command; under torchrun or SLURM
    it joins the processes those started). Rank 0 decides which stages run, runs every stage and
    alone writes files; the other ranks join the training stages (`shared_stages`), where every training
    and inference verb joins the same process group, and leave after the last of them.
    """

    def __init__(self, cfg: RunConfig):
        self.fabric = None
        if cfg.devices != 1 or cfg.num_nodes != 1:
            from aelab.train.engine import make_fabric

            self.fabric = make_fabric(cfg.device, cfg.devices, "32-true", num_nodes=cfg.num_nodes)

    @property
    def rank(self) -> int:
        return 0 if self.fabric is None else self.fabric.global_rank

    def from_rank0(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on rank 0; every rank gets its value, or its `AelabError` (so no rank waits forever)."""
        from aelab.train.engine import from_rank0

        return from_rank0(self.fabric, fn)

    def leave(self) -> bool:
        """All processes leave the process group together (one that just exits aborts in gloo); True on the
        processes that are done (every rank but 0)."""
        import torch.distributed as dist

        if self.fabric is not None and dist.is_available() and dist.is_initialized():
            self.fabric.barrier()
            dist.destroy_process_group()
        return self.rank != 0

    def share(self, record: Any) -> Any:
        """Rank 0's ``record`` on every rank; a process that stopped is one line, not a gloo trace."""
        if self.fabric is None:
            return record
        try:
            return self.fabric.broadcast(record, src=0)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:200]
            raise AelabError(f"another process of --devices {self.fabric.world_size} stopped ({detail}); "
                             "its message is above; run the same command again to resume") from None


def shared_stages() -> tuple[str, ...]:
    """Stages every process of ``--devices N`` runs (the denoising pretraining and the methods of study 1 whose
    `Method.shared` is set); rank 0 alone runs the others."""
    return ("pretrain", *[m.name for m in METHODS.values() if m.shared])


class _Ctx:
    """What the stages share: the settings, the run folder's layout and the results of finished stages."""

    def __init__(self, cfg: RunConfig, run_dir: Path, stages: RunStages, rank: int = 0):
        self.cfg, self.dir, self.layout, self.stages, self.rank = cfg, run_dir, RunLayout(run_dir), stages, rank
        self.results = {k: stages.result(k) for k in stages.names()}
        # Rank 0's own stages (clustering, anomaly detection) run in one process.
        self.engine = cfg.engine().single()

    @property
    def data(self) -> Path:
        return Path(self.cfg.data) if self.cfg.data else self.layout.demo_data

    def sub(self, name: str, fresh: bool = True) -> Path:
        path = self.layout.stage(name)
        if fresh and path.exists() and self.rank == 0:
            shutil.rmtree(path)  # a stage interrupted half-way starts over
        return path


def _stage_data(ctx: _Ctx) -> dict:
    from aelab.data import make_demo_data, resolve_layout

    if ctx.cfg.data is None:
        make_demo_data(ctx.sub("demo_data"), seed=ctx.cfg.seed, labelled_per_class=ctx.cfg.demo_labelled_per_class,
                       n_unlabelled=ctx.cfg.demo_unlabelled, n_test=ctx.cfg.demo_test)
    layout = resolve_layout(ctx.data)
    parts = {k: (str(v) if v else None) for k, v in asdict(layout).items() if k != "root"}
    return DataResult(str(ctx.data), ctx.cfg.data is None, **parts).to_dict()


def _need(ctx: _Ctx, part: str, why: str) -> None:
    """Skip the stage (with the reason in the report) when the data lack a folder of the course layout."""
    if not getattr(DataResult.from_dict(ctx.results.get("data", {})), part):
        where = "dev/" if part in ("labelled", "unlabelled") else ""
        raise StageSkipped(f"the data have no {where}{part} folder ({why})")


def _stage_pretrain(ctx: _Ctx) -> dict:
    from aelab.train.study import pretrain_denoise

    _need(ctx, "unlabelled", "the course report's pretraining learns from unlabelled images")
    return PretrainResult(str(pretrain_denoise(ctx.cfg, ctx.data, ctx.sub("pretrain")))).to_dict()


def _method_stage(method: str) -> Callable[[_Ctx], dict]:
    def stage(ctx: _Ctx) -> dict:
        from aelab.train.study import run_method

        _need(ctx, "labelled", "study 1 trains on labelled images")
        pre = PretrainResult.from_dict(ctx.results.get("pretrain", {}))
        ctx.sub(method)
        try:
            return run_method(method, ctx.cfg, ctx.data, ctx.layout, Path(pre.run) if pre else None).to_dict()
        except NoUnlabelledImages as exc:  # the data cannot serve this method: a reason, not a failure
            raise StageSkipped(str(exc)) from None

    stage.__name__ = f"_stage_{method}"
    return stage


def _stage_predict(ctx: _Ctx) -> dict:
    """Table 1b and the submission: the method with the best validation accuracy."""
    from aelab.train.study import study_settings, submission, summarize

    methods = ctx.cfg.method_list()
    rows = [MethodResult.from_dict(ctx.results[m]) for m in methods if ctx.results.get(m)]
    skipped = {m: (ctx.stages.get(m) or {}).get("reason") or "did not run" for m in methods if not ctx.results.get(m)}
    result = submission(summarize(rows, ctx.layout, skipped, study_settings(ctx.cfg, ctx.data)), ctx.layout)
    if result.predictions is None:  # skipped; the model to embed, if any, still serves study 2
        raise StageSkipped(result.reason, None if result.model is None else result.to_dict())
    return result.to_dict()


def _stage_cluster(ctx: _Ctx) -> dict:
    """Study 2b (``cfg.cluster``; by default the course report's classes 2, 5, 8 at 2:1:1), clustered by EKM,
    k-means, the course report's softmax variant and semi-supervised EKM, on the embeddings just computed."""
    from aelab.cluster.study import ClusterConfig, auto_classes, run_cluster_study
    from aelab.train import EmbedConfig, embed_result

    model = ClassificationResult.from_dict(ctx.results.get("predict", {})).model
    if model is None:
        raise StageSkipped("no fine-tuned model to embed the images with (every study-1 method failed)")
    emb = embed_result(EmbedConfig(model=str(ctx.dir / model), data=str(ctx.data), out=str(ctx.sub("embed")),
                                   device=ctx.cfg.device))
    embeddings = (emb.embeddings, emb.names, emb.labels)
    settings = ctx.cfg.cluster
    if str(settings.classes).lower() == "auto":
        try:
            settings = replace(settings, classes=",".join(auto_classes(emb.labels)))
        except AelabError as exc:
            raise StageSkipped(f"the clustering study needs at least three labelled classes ({exc})") from None
    out = ClusterStudyResult(str(emb.run_dir), settings.classes.split(","), int(len(emb.embeddings)))
    for method in ("ekm", "kmeans", "course-softmax", "ssekm"):
        cfg = ClusterConfig(input=str(emb.run_dir), out=str(ctx.sub(ctx.layout.cluster_run(method).name)),
                            seed=ctx.cfg.seed, **(asdict(settings) | {"method": method}))
        res = run_cluster_study(cfg, embeddings)
        out.runs[method], out.ari[method] = str(res.run_dir), res.metrics.get("ari")
    return out.to_dict()


def _stage_anomaly(ctx: _Ctx) -> dict:
    from aelab.anomaly.run_study import run_anomaly_study

    ctx.sub(ctx.layout.anomaly.name)
    return run_anomaly_study(ctx.cfg, ctx.data, ctx.layout, ctx.engine).to_dict()


def _stage_report(ctx: _Ctx) -> dict:
    from aelab.report.build import build_report

    files = build_report(ctx.dir)
    return {k: str(v) for k, v in files.items()}


def stages_for(cfg: RunConfig) -> list[tuple[str, Callable[[_Ctx], dict]]]:
    """The stages of a run, in order: data, study 1 (one stage per method), its summary, studies 2 and 3."""
    methods = cfg.method_list()
    pre = [("pretrain", _stage_pretrain)] if any(METHODS[m].pretrain for m in methods) else []
    return [("data", _stage_data), *pre, *[(m, _method_stage(m)) for m in methods],
            ("predict", _stage_predict), ("cluster", _stage_cluster), ("anomaly", _stage_anomaly)]


#: Stages whose failure stops the run (later stages need them).
CRITICAL = ("data",)


#: Options added after run folders existed, with the value that reproduces a run from before them: a run folder
#: whose ``config.yaml`` lacks one resumes when the option has that value (the k-means features summed their codes
#: over quadrants before these two existed; study 1's rows had the whitening first layer before ``stem_kind``).
ADDED_OPTIONS = {"kmeans_features_pooling": "sum", "kmeans_features_grid": 2, "stem_kind": "whiten"}


def _changed_settings(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, bool]]:
    """``(dotted name, value the run folder was run with, whether its config.yaml lacked it)`` of each setting
    that differs, nested settings (``anomaly.geometric.score``) by their command-line names."""
    out: list[tuple[str, object, bool]] = []
    for key, value in new.items():
        name = prefix + key
        before = old.get(key, ADDED_OPTIONS.get(name))
        if isinstance(value, dict) and isinstance(before, dict):
            out += _changed_settings(before, value, name + ".")
        elif before != value:
            out.append((name, before, key not in old))
    return out


def _flag_value(value: object) -> str:
    """A setting as the command line reads it back (true/false, null)."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _prepare(cfg: RunConfig) -> Path:
    """Check ``cfg.out`` (a new folder, or a run folder of the same settings) and save the settings."""
    run_dir = Path(cfg.out)
    if cfg.data is not None and Path(cfg.data).resolve().is_relative_to(run_dir.resolve()):
        raise AelabError(f"the data folder {cfg.data} lies inside the run folder {run_dir}; choose another --out")
    cfg.method_list()  # unknown methods fail before anything is written
    if run_dir.exists() and run_dir_entries(run_dir) and not RunLayout(run_dir).stages.is_file():
        raise AelabError(f"--force would delete {run_dir}, which is not an aelab run folder (no stages.json)"
                         if cfg.force else f"{run_dir} exists and is not an aelab run folder; choose another --out")
    lock_run_dir(run_dir)  # one process per run folder; a second one is told which holds it
    if cfg.force:
        clear_run_dir(run_dir)
    old_stages = RunStages.read(RunLayout(run_dir))
    finished = [k for k in old_stages.names() if old_stages[k].get("status") == "done"]
    if RunLayout(run_dir).config.is_file() and finished:
        from aelab.runs import load_config

        old = load_config(run_dir)
        ignore = ("force", "out", "device", "devices", "num_nodes", "precision", "logger")  # the machine may change
        changed = _changed_settings(old, {k: v for k, v in asdict(cfg).items() if k not in ignore})
        if changed:
            flags = " ".join(f"--{name} {_flag_value(value)}" for name, value, missing in changed
                             if (not missing or name in ADDED_OPTIONS)
                             and (value is None or isinstance(value, (str, int, float, bool))))
            earlier = "it is from an earlier aelab: " if any(missing for *_, missing in changed) else ""
            hint = f"; {earlier}{flags} resumes it as it was run" if flags else ""
            raise AelabError(f"{run_dir} was run with other settings ({', '.join(n for n, *_ in changed)}); "
                             f"use another --out or --force to start over{hint}")
    save_config(run_dir, cfg)
    return run_dir


def _run_stage(ctx: _Ctx, name: str, fn: Callable[[_Ctx], dict]) -> dict:
    """Run one stage; a failure of a non-critical stage is recorded, not raised."""
    set_seed(ctx.cfg.seed)
    info(f"[run] {name} ...")
    t0 = time.perf_counter()
    try:
        result, status, reason = fn(ctx), "done", None
    except StageSkipped as exc:  # before AelabError, which it is
        result, status, reason = exc.result, "skipped", str(exc)
        info(f"[run] {name}: skipped: {reason}")
    except AelabError as exc:
        if name in CRITICAL:
            raise  # later stages depend on these
        result, status, reason = {}, "failed", f"failed: {exc}"
        info(f"[run] {name}: {reason}")
    except Exception as exc:  # a bug in one study must not lose the others; keep the trace on disk
        if name in CRITICAL:
            raise
        if ctx.rank == 0:
            atomic_write_text(ctx.layout.error_file(name), traceback.format_exc())
        result, status, reason = {}, "failed", f"failed with {exc.__class__.__name__}: {exc} (see {name}.error.txt)"
        info(f"[run] {name}: {reason}")
    elapsed = time.perf_counter() - t0
    info(f"[run] {name}: {status} in {elapsed:.1f} s")
    return StageRecord(status, reason, round(elapsed, 2), result).to_dict()


def _start(cfg: RunConfig) -> tuple[Path, dict[str, Any]]:
    """Rank 0's part of the start: the checked, locked run folder and the stages it holds."""
    run_dir = _prepare(cfg)
    stages = RunStages.read(RunLayout(run_dir))
    stages.write(RunLayout(run_dir))  # marks the folder as a run folder from the start
    from aelab.train.inference import pick_device

    stages.setdefault("_meta", {"aelab_version": __version__, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                "device": str(pick_device(cfg.device)), "processes": cfg.devices * cfg.num_nodes})
    return run_dir, stages


def run_all(cfg: RunConfig) -> Path:
    """Run every stage not yet finished in ``cfg.out``, then build the report. Returns the run folder.

    With ``cfg.devices`` (or ``num_nodes``) above 1 the training stages run in that many processes;
    see `_Group`.
    """
    group = _Group(cfg)
    run_dir, stages = group.from_rank0(lambda: _start(cfg))
    ctx = _Ctx(cfg, Path(run_dir), stages, group.rank)
    todo = [(n, fn) for n, fn in stages_for(cfg) if stages.get(n, {}).get("status") not in ("done", "skipped")]
    shared = shared_stages()
    last_shared = max((i for i, (n, _) in enumerate(todo) if n in shared), default=-1) if group.fabric else len(todo)
    for name, _ in stages_for(cfg):
        if all(name != n for n, _ in todo):
            info(f"[run] {name}: already done, skipping (use --force to redo)")
    for i, (name, fn) in enumerate(todo):
        if i > last_shared and group.leave():
            return ctx.dir  # the other processes' part is over; rank 0 goes on alone
        record = _run_stage(ctx, name, fn) if group.rank == 0 or name in shared else None
        if i <= last_shared:
            record = group.share(record)  # rank 0's record; also waits for rank 0's own stages
        stages[name], ctx.results[name] = record, record["result"]
        if group.rank == 0:
            stages.write(ctx.layout)
    if group.leave():
        return ctx.dir
    t0 = time.perf_counter()
    files = _stage_report(ctx)
    info(f"[run] report written in {time.perf_counter() - t0:.1f} s: {files.get('html')}, {files.get('pdf')}")
    return ctx.dir

"""The training engine: Lightning Fabric for devices, precision and DDP; one training stage for all.

Fabric owns device placement, mixed precision and distributed launch; this module adds the one loop
that pretraining, fine-tuning (supervised, the course report's method, FixMatch) and the anomaly
detector share: per-epoch validation, ``metrics.csv`` (through Lightning's logger interface),
``last``/``best`` checkpoints, early stopping, an optional weight average (EMA) and exact resume.

Under ``--devices N`` every process runs the loop; only rank 0 writes files, and the decisions
(best epoch, early stop) come from a validation every process computes on the same images, so they
agree without communication.
"""

from __future__ import annotations

import inspect
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from aelab.errors import AelabError
from aelab.progress import info, progress
from aelab.train.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["make_fabric", "FitState", "fit_loop", "from_rank0", "resolve_precision", "shared_run_dir", "start_run"]


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto`` → bf16-mixed on a GPU that supports it, else full float32."""
    if precision != "auto":
        return precision
    if accelerator == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def make_fabric(device: str = "auto", devices: int | str = 1, precision: str = "auto", strategy: str = "auto",
                num_nodes: int = 1, loggers: list | None = None):
    """A launched ``lightning.Fabric``; ``device`` is auto, cpu, cuda, cuda:N or mps (`aelab.devices`).

    With ``devices > 1`` on one machine Fabric starts the other processes by re-running the command
    (each with its ``LOCAL_RANK``); under torchrun or SLURM it joins the processes those started.
    """
    import lightning as L

    from aelab.devices import fabric_device

    accelerator, devices = fabric_device(device, devices)  # cuda:N -> ("cuda", [N]); auto -> cuda, mps or cpu
    if not isinstance(devices, list) and int(devices) > 1 and strategy == "auto" and accelerator == "cpu":
        strategy = "ddp"  # Fabric's default for several CPU processes; gloo backend
    try:
        fabric = L.Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                          precision=resolve_precision(precision, accelerator), loggers=loggers)
    except (ValueError, RuntimeError) as exc:
        raise AelabError(f"cannot set up the engine: {exc}") from None
    fabric.launch()
    return fabric


def from_rank0(fabric, fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0; every rank gets its (picklable) value, or its `AelabError`, so none waits forever.

    ``fabric`` None (one process without a launched Fabric) just calls ``fn``.
    """
    made: tuple[str, Any] | None = None
    if fabric is None or fabric.global_rank == 0:
        try:
            made = ("ok", fn())
        except AelabError as exc:
            made = ("error", str(exc))
    if fabric is not None and fabric.world_size > 1:
        made = fabric.broadcast(made, src=0)
    status, value = made
    if status == "error":
        raise AelabError(value)
    return value


def shared_run_dir(fabric, out, verb: str) -> Path:
    """Rank 0 creates the run folder (`aelab.runs.new_run_dir`) and every rank gets its path.

    A refusal (say, a folder that already holds a run) is raised on every rank, so none waits forever.
    """
    from aelab.runs import new_run_dir

    return Path(from_rank0(fabric, lambda: str(new_run_dir(out, verb))))


def start_run(fabric, cfg, verb: str, run_dir: Path | None) -> Path:
    """The run folder of a training verb: created once (or the resumed one), its config saved, loggers added.

    ``cfg`` is the verb's settings (a `RunOptions`); ``run_dir`` is the folder of ``--resume`` or None.
    """
    from aelab.runs import save_config
    from aelab.train.loggers import extra_loggers

    if run_dir is None:
        run_dir = shared_run_dir(fabric, cfg.out, verb)
    if fabric.is_global_zero:
        save_config(run_dir, cfg)
        fabric.loggers.extend(extra_loggers(cfg.logger, run_dir))
    return Path(run_dir)


def write_model_summary(fabric, model, run_dir: Path) -> None:
    """``model.json``: the architecture as data (blocks, parameter counts), so the report never loads a model."""
    if not fabric.is_global_zero:
        return
    from aelab.models.summary import describe_model
    from aelab.runs import write_json

    write_json(Path(run_dir) / "model.json", describe_model(model))


@dataclass
class FitState:
    """What a resumed run needs beyond weights: where it was and the early-stopping memory."""

    epoch: int = 0  # number of finished epochs
    best: float | None = None
    best_epoch: int = -1
    best_tiebreak: float | None = None  # the secondary metric at the best epoch
    bad_epochs: int = 0
    step: int = 0  # optimiser steps so far
    planned_epochs: int | None = None  # epochs a time budget allows, fixed after the first epoch
    history: list[dict[str, Any]] = field(default_factory=list)


def _better(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best + min_delta if mode == "max" else value < best - min_delta


@dataclass
class _Loop:
    """The pieces of one training stage (see `fit_loop` for their meaning)."""

    fabric: Any
    model: torch.nn.Module
    raw_model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    train_loader: Any
    train_step: Callable
    validate: Callable[[], dict[str, float]]
    epochs: int
    run_dir: Path
    monitor: str
    mode: str
    patience: int
    payload: dict[str, Any]
    min_delta: float
    desc: str
    ema: Any = None
    tiebreak: str | None = None  # "later", or a "min" metric that decides between epochs equal on ``monitor``
    train_state: Any = None  # a module whose buffers the train step updates (FlexMatch, distribution alignment)
    state: FitState = field(default_factory=FitState)
    metrics_file: Any = None  # RunMetricsLogger of metrics.csv, attached after a resume is restored
    budget_s: float | None = None  # seconds this stage may take; None = all ``epochs``

    def __post_init__(self) -> None:
        self._step_takes_index = len(inspect.signature(self.train_step).parameters) >= 2

    # --- resume and checkpoints -------------------------------------------------------------
    def restore(self) -> None:
        ckpt = load_checkpoint(self.run_dir, which="last")
        self.raw_model.load_state_dict(ckpt.get("train_state_dict") or ckpt["state_dict"])
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt["state_dict"])
            self.ema.updates.fill_(int(ckpt.get("ema_updates", 0)))
        if self.train_state is not None and ckpt.get("train_state") is not None:
            self.train_state.load_state_dict(ckpt["train_state"])
        # Fabric's optimizer wrapper keeps a copy of the state dict attributes: load into the real one.
        getattr(self.optimizer, "optimizer", self.optimizer).load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng_state"])
        if ckpt.get("cuda_rng_state") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["cuda_rng_state"])
        self.state = FitState(**ckpt["fit_state"])
        if self.state.planned_epochs is not None and self.budget_s is not None:
            self.epochs = min(self.epochs, self.state.planned_epochs)  # an edited, lower --epochs still counts
        info(f"[{self.desc}] resuming {self.run_dir} after epoch {self.state.epoch}")

    def save(self, epoch: int, row: dict[str, Any], improved: bool) -> None:
        weights = self.raw_model.state_dict() if self.ema is None else self.ema.module.state_dict()
        ckpt = dict(
            self.payload,
            state_dict=weights,  # what predict/embed load: the averaged weights when there is an EMA
            train_state_dict=None if self.ema is None else self.raw_model.state_dict(),
            ema_updates=None if self.ema is None else int(self.ema.updates),
            train_state=None if self.train_state is None else self.train_state.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=None if self.scheduler is None else self.scheduler.state_dict(),
            rng_state=torch.get_rng_state(),
            cuda_rng_state=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            fit_state=self.state.__dict__, epoch=epoch,
            metrics={k: v for k, v in row.items() if isinstance(v, (int, float))},
        )
        if improved:
            save_checkpoint(self.run_dir / "best.ckpt", **ckpt)
        save_checkpoint(self.run_dir / "last.ckpt", **ckpt)

    # --- one epoch ------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, float]:
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "shuffle_epoch"):
            sampler.shuffle_epoch = epoch
        self.model.train()
        sums: dict[str, float] = {}
        count = 0
        for batch in progress(self.train_loader, desc=f"{self.desc} epoch {epoch + 1}/{self.epochs}"):
            losses = self.train_step(batch, self.state.step) if self._step_takes_index else self.train_step(batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.fabric.backward(losses["loss"])
            self.optimizer.step()
            self.state.step += 1
            if self.ema is not None:
                self.ema.update(self.raw_model)
            n = len(batch[0])
            count += n
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
        return {f"train_{k}": v / max(count, 1) for k, v in sums.items()}

    def plan(self, first_epoch_s: float) -> None:
        """Fit the stage into ``budget_s``: as many epochs as the first one's time allows (at least 1, at
        most ``epochs``), decided on rank 0 and shared; the cosine schedule is stretched to end with them."""
        planned = max(1, min(self.epochs, int(self.budget_s // max(first_epoch_s, 1e-6))))
        if self.fabric.world_size > 1:
            planned = int(self.fabric.broadcast(planned, src=0))
        if planned != self.epochs:
            info(f"[{self.desc}] budget {self.budget_s / 60:.1f} min: {planned} epochs of {first_epoch_s:.1f} s "
                 f"(of at most {self.epochs})")
        self.epochs = self.state.planned_epochs = planned
        if self.scheduler is not None and hasattr(self.scheduler, "T_max"):
            self.scheduler.T_max = planned

    def epoch(self, epoch: int) -> bool:
        """Train and validate one epoch, log it, save checkpoints; True when training should stop."""
        t0 = time.perf_counter()
        row: dict[str, Any] = {"epoch": epoch, **self.train_epoch(epoch)}
        lr = getattr(self.optimizer, "optimizer", self.optimizer).param_groups[0]["lr"]  # the rate this epoch used
        if self.scheduler is not None:
            self.scheduler.step()
        self.model.eval()
        with torch.no_grad():
            row.update(self.validate())
        row["lr"], row["seconds"] = lr, round(time.perf_counter() - t0, 3)
        st = self.state
        value = float(row[self.monitor])
        second = float(row[self.tiebreak]) if self.tiebreak not in (None, "later") else None
        tie = st.best is not None and value == st.best
        improved = _better(value, st.best, self.mode, self.min_delta) or (tie and (
            self.tiebreak == "later" or (second is not None and st.best_tiebreak is not None and second < st.best_tiebreak)))
        if improved:
            st.best, st.best_epoch, st.best_tiebreak, st.bad_epochs = value, epoch, second, 0
        else:
            st.bad_epochs += 1
        st.epoch = epoch + 1
        if epoch == 0 and self.budget_s is not None:
            self.plan(row["seconds"])
        st.history.append(dict(row))
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float))}
        self.metrics_file.log_metrics(numbers, step=epoch)
        self.fabric.log_dict(numbers, step=epoch)  # --logger tensorboard/mlflow, when asked for
        if self.fabric.is_global_zero:
            self.save(epoch, row, improved)
        shown = "  ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float) and k != "seconds")
        info(f"[{self.desc}] epoch {epoch + 1}/{self.epochs}  {shown}  ({row['seconds']:.1f} s){'  *best' if improved else ''}")
        if st.bad_epochs >= self.patience:
            info(f"[{self.desc}] early stop: no {self.monitor} improvement for {st.bad_epochs} epochs")
            return True
        return False


def fit_loop(*, fabric, model, raw_model, optimizer, scheduler, train_loader, train_step, validate, epochs: int,
             run_dir: Path, monitor: str, mode: str, patience: int, payload: dict[str, Any], resume: bool = False,
             min_delta: float = 0.0, desc: str = "train", ema=None, tiebreak: str | None = None, train_state=None,
             budget_s: float | None = None) -> FitState:
    """Train for up to ``epochs`` epochs; save ``last.ckpt`` every epoch and ``best.ckpt`` on improvement.

    ``train_step(batch)`` or ``train_step(batch, step)`` (``step`` = optimiser steps so far) returns a
    dict of scalar losses whose ``"loss"`` is optimised; ``validate()`` returns a dict holding
    ``monitor`` (``mode`` "max" or "min"). ``payload`` (model config, preprocessing, classes, resolved
    config) goes into every checkpoint; ``tiebreak`` decides between epochs with the same ``monitor``
    value: ``"later"`` (the later epoch wins, and a tie does not count against ``patience``) or the
    name of a lower-is-better metric. With 40 validation images accuracy ties often. ``ema`` (a `aelab.train.semi.ModelEMA`) is updated after
    every step and its weights are the checkpoint's ``state_dict``; ``train_state`` (a module whose buffers
    ``train_step`` updates) is saved and restored with the rest. Metrics go to every logger of
    ``fabric`` (``metrics.csv`` always). With ``resume``, model, EMA, train state, optimizer, scheduler, RNG and
    early-stopping state come from ``run_dir/last.ckpt``, so the run ends with the same weights as
    an uninterrupted one. ``budget_s`` (seconds) caps the stage's time: after the first epoch the number of
    epochs becomes what the budget allows at that epoch's speed (at most ``epochs``), and the learning-rate
    schedule ends with them.
    """
    loop = _Loop(fabric, model, raw_model, optimizer, scheduler, train_loader, train_step, validate, epochs,
                 Path(run_dir), monitor, mode, patience, payload, min_delta, desc, ema, tiebreak, train_state,
                 budget_s=budget_s)
    if resume:
        loop.restore()
    from aelab.train.loggers import RunMetricsLogger

    loop.metrics_file = RunMetricsLogger(loop.run_dir, start_epoch=loop.state.epoch, rank=fabric.global_rank)
    stopped = loop.state.epoch > 0 and loop.state.bad_epochs >= patience
    epoch = loop.state.epoch
    while epoch < loop.epochs and not stopped:  # loop.epochs: the budget's plan may lower it after epoch 1
        stopped = loop.epoch(epoch)
        epoch += 1
    if fabric.is_global_zero:
        for logger in fabric.loggers:
            logger.finalize("success")
    fabric.barrier()  # every process leaves the stage once rank 0 has written its checkpoints
    if loop.state.best is None:
        raise AelabError(f"[{desc}] {monitor} was NaN in every epoch (training diverged?); try a lower --lr")
    return loop.state


def is_child_process() -> bool:
    """True in a process that Fabric's launcher started for rank > 0 on this machine."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0) > 0

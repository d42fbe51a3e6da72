"""One trainer for every training stage, in the shape of minGPT's ``Trainer(config, model, data)``.

`Trainer` owns what pretraining (denoising, VICReg), fine-tuning (supervised, the course report's
method, FixMatch) and the anomaly detectors share: the optimiser (AdamW, or SGD with Nesterov
momentum), the cosine schedule, Fabric's ``setup`` of model, optimiser and loaders, the train and
validation loaders, an optional weight average (EMA), the train state (buffers the step updates,
such as FlexMatch's per-image memory), the time budget, per-epoch validation, ``metrics.csv``
(through Lightning's logger interface), ``last.ckpt`` every epoch and ``best.ckpt`` (a copy of
``last.ckpt`` when the epoch is kept), early stopping and exact resume. A caller supplies only what
differs, a `Task`: the loss of one batch, the validation, and whether the best or the last epoch is
kept (`TrainerConfig.keep`).

Under ``--devices N`` every process runs the loop; only rank 0 writes files, and the decisions
(best epoch, early stop) come from a validation every process computes on the same images, so they
agree without communication.

Example:
    >>> trainer = Trainer(TrainerConfig(epochs=10, batch_size=64, lr=1e-3), model,   # doctest: +SKIP
    ...                   TrainData(Rows(images, index=train_idx), Rows(images, index=val_idx)),
    ...                   fabric=fabric, run_dir=run_dir)
    >>> state = trainer.fit(Task(step=loss_of_batch, validate=validation), payload={})  # doctest: +SKIP
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from aelab.errors import AelabError
from aelab.progress import info, progress
from aelab.results import StagePlan
from aelab.runs import atomic_write
from aelab.train.checkpoint import load_checkpoint, save_checkpoint
from aelab.train.loaders import make_loader

__all__ = ["FitState", "Rows", "Task", "TrainData", "Trainer", "TrainerConfig"]

OPTIMIZERS = ("adamw", "sgd")
KEEP = ("best", "last")


@dataclass
class TrainerConfig:
    """The settings of one training stage.

    Attributes:
        epochs: maximum number of epochs (passes over the training loader).
        batch_size: images per training batch (per process).
        lr: learning rate, cosine-annealed to 0 over the epochs (Loshchilov & Hutter 2017, without restarts).
        weight_decay: the optimiser's weight decay.
        seed: seed of the training loader's shuffling (a function of seed and epoch, so resume is exact).
        optimizer: ``adamw`` (Loshchilov & Hutter 2019) or ``sgd`` (momentum 0.9, Nesterov).
        monitor: the validation metric that decides the best epoch and early stopping.
        mode: ``max`` or ``min``: whether a higher or a lower ``monitor`` is better.
        keep: ``best`` (``best.ckpt`` is the epoch with the best ``monitor``; ``patience`` stops early) or
            ``last`` (every epoch is kept: ``best.ckpt`` is the last epoch, and training never stops early).
        patience: with ``keep="best"``, stop after this many epochs without improvement.
        tiebreak: between epochs equal on ``monitor``: ``"later"`` (the later one wins, and a tie does not count
            against ``patience``), the name of a lower-is-better metric, or None (the earlier one stays).
        ema_decay: decay of an exponential moving average of the weights (`aelab.train.semi.ModelEMA`), whose
            weights validation and checkpoints use; 0 = none.
        budget_s: seconds the stage may take: after the first epoch the number of epochs becomes the whole number
            nearest to what fits at that epoch's speed (at most ``epochs``), after the second at the second one's
            (the first carries one-time costs), and the schedule ends with them; None = all ``epochs``.
        val_batch_size: images per validation batch; None = ``max(batch_size, 256)``.
        desc: the stage's name in progress lines.
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    seed: int = 0
    optimizer: str = "adamw"
    monitor: str = "val_loss"
    mode: str = "min"
    keep: str = "best"
    patience: int = 3
    tiebreak: str | None = None
    ema_decay: float = 0.0
    budget_s: float | None = None
    val_batch_size: int | None = None
    desc: str = "train"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise AelabError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.keep not in KEEP:
            raise AelabError(f"keep must be one of {', '.join(KEEP)}, got {self.keep!r}")
        if self.mode not in ("max", "min"):
            raise AelabError(f"mode must be max or min, got {self.mode!r}")


@dataclass
class Rows:
    """Rows of uint8 images ``(N, C, H, W)`` a loader reads batch by batch (`aelab.train.loaders.make_loader`).

    ``images``: an array, tensor, memory map or `aelab.data.RowReader`; ``labels`` (aligned with ``images``) make
    the batches ``(x, y)`` instead of ``(x,)``; ``index`` lists the rows to read (default all).
    """

    images: Any
    labels: np.ndarray | None = None
    index: np.ndarray | None = None


@dataclass
class TrainData:
    """The training rows (shuffled by (seed, epoch), the last short batch dropped) and the validation rows.

    Every process reads all validation rows (no distributed sampler), so every process decides the same.
    ``val`` None: the task validates without a loader.
    """

    train: Rows
    val: Rows | None = None


@dataclass
class Task:
    """What differs between training stages.

    ``step(batch, step)`` (``step``: optimiser steps so far) returns a dict of scalar losses whose ``"loss"`` is
    optimised; ``validate()`` returns a dict of numbers holding the config's ``monitor``; ``train_state`` is a
    module whose buffers ``step`` updates (FlexMatch's per-image memory), saved and restored with the rest.
    """

    step: Callable[[Any, int], dict[str, torch.Tensor]]
    validate: Callable[[], dict[str, float]]
    train_state: nn.Module | None = None


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


def _better(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if mode == "max" else value < best


def copy_file(src: Path, dst: Path) -> None:
    """``dst`` becomes a copy of ``src``, atomically (through `aelab.runs.atomic_write`)."""
    with open(src, "rb") as fh:
        atomic_write(dst, lambda out: shutil.copyfileobj(fh, out, 1 << 20))


class Trainer:
    """One training stage: ``Trainer(config, model, data, fabric=, run_dir=).fit(task, payload=)``.

    The constructor builds the optimiser over the parameters that require a gradient (freeze modules before),
    the cosine schedule, sets model, optimiser and loaders up with ``fabric`` and makes the EMA. A task's
    ``step`` and ``validate`` use ``trainer.model`` (the Fabric-wrapped network), ``trainer.raw_model``,
    ``trainer.evaluated`` (the EMA's weights when there is one), ``trainer.val_loader`` and ``trainer.fabric``.
    """

    def __init__(self, config: TrainerConfig, model: nn.Module, data: TrainData, *, fabric, run_dir: Path):
        self.config, self.fabric, self.run_dir = config, fabric, Path(run_dir)
        self.raw_model = model
        params = [p for p in model.parameters() if p.requires_grad]
        if config.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, lr=config.lr, momentum=0.9, nesterov=True,
                                        weight_decay=config.weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.epochs, 1))
        self.model, self.optimizer = fabric.setup(model, optimizer)
        self.train_loader = fabric.setup_dataloaders(make_loader(
            data.train.images, data.train.labels, batch_size=config.batch_size, shuffle=True, seed=config.seed,
            drop_last=True, index=data.train.index))
        self.val_loader = None
        if data.val is not None:
            batch = config.val_batch_size or max(config.batch_size, 256)
            self.val_loader = fabric.setup_dataloaders(make_loader(
                data.val.images, data.val.labels, batch_size=batch, index=data.val.index),
                use_distributed_sampler=False)
        self.ema = None
        if config.ema_decay > 0:
            from aelab.train.semi import ModelEMA

            self.ema = ModelEMA(model, config.ema_decay).to(fabric.device)
        self.epochs = config.epochs  # a time budget may lower it after the first epoch
        self.state = FitState()
        self.train_state: nn.Module | None = None
        self.metrics_file = None

    @property
    def evaluated(self) -> nn.Module:
        """The weights validation, ``best.ckpt`` and prediction use: the EMA's when there is one."""
        return self.model if self.ema is None else self.ema.module

    # --- the stage ------------------------------------------------------------------------------
    def fit(self, task: Task, *, payload: dict[str, Any], resume: bool = False) -> FitState:
        """Train for up to ``epochs`` epochs; ``payload`` (model config, preprocessing, classes, resolved
        settings) goes into every checkpoint. With ``resume``, model, EMA, train state, optimiser, schedule,
        RNG and early-stopping state come from ``run_dir/last.ckpt``, so the run ends with the same weights
        as an uninterrupted one."""
        from aelab.train.loggers import RunMetricsLogger

        cfg, fabric = self.config, self.fabric
        self.train_state = task.train_state
        if resume:
            self.restore()
        self.metrics_file = RunMetricsLogger(self.run_dir, start_epoch=self.state.epoch, rank=fabric.global_rank)
        stopped = self.state.epoch > 0 and self._patience_spent()
        epoch = self.state.epoch
        while epoch < self.epochs and not stopped:  # the budget's plan may lower self.epochs after epoch 1
            stopped = self.run_epoch(task, epoch, payload)
            epoch += 1
        if fabric.is_global_zero:
            for logger in fabric.loggers:
                logger.finalize("success")
        fabric.barrier()  # every process leaves the stage once rank 0 has written its checkpoints
        if self.state.best is None:
            raise AelabError(f"[{cfg.desc}] {cfg.monitor} was NaN in every epoch (training diverged?); "
                             "try a lower --lr")
        return self.state

    def _patience_spent(self) -> bool:
        return self.config.keep == "best" and self.state.bad_epochs >= self.config.patience

    def run_epoch(self, task: Task, epoch: int, payload: dict[str, Any]) -> bool:
        """Train and validate one epoch, log it, save checkpoints; True when training should stop."""
        cfg = self.config
        t0 = time.perf_counter()
        row: dict[str, Any] = {"epoch": epoch, **self.train_epoch(task, epoch)}
        lr = self._inner_optimizer().param_groups[0]["lr"]  # the rate this epoch used
        self.model.eval()
        with torch.no_grad():
            row.update(task.validate())
        row["lr"], row["seconds"] = lr, round(time.perf_counter() - t0, 3)
        improved = self._judge(row)
        self.state.epoch = epoch + 1
        if epoch == 0 and cfg.budget_s is not None:
            self.plan(row["seconds"])
        elif epoch == 1 and cfg.budget_s is not None:
            self.replan(row["seconds"])
        self.scheduler.step()
        if cfg.budget_s is not None and epoch < 2:
            self._closed_form_rate()
        self.state.history.append(dict(row))
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float))}
        self.metrics_file.log_metrics(numbers, step=epoch)
        self.fabric.log_dict(numbers, step=epoch)  # --logger tensorboard/mlflow, when asked for
        if self.fabric.is_global_zero:
            self.save(epoch, numbers, improved, payload)
        shown = "  ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float) and k != "seconds")
        info(f"[{cfg.desc}] epoch {epoch + 1}/{self.epochs}  {shown}  ({row['seconds']:.1f} s)"
             f"{'  *best' if improved else ''}")
        if self._patience_spent():
            info(f"[{cfg.desc}] early stop: no {cfg.monitor} improvement for {self.state.bad_epochs} epochs")
            return True
        return False

    def _judge(self, row: dict[str, Any]) -> bool:
        """Whether this epoch's weights become ``best.ckpt``; updates the early-stopping memory."""
        cfg, st = self.config, self.state
        value = float(row[cfg.monitor])
        second = float(row[cfg.tiebreak]) if cfg.tiebreak not in (None, "later") else None
        if cfg.keep == "last":
            improved = not math.isnan(value)
        else:
            tie = st.best is not None and value == st.best
            improved = _better(value, st.best, cfg.mode) or (tie and (cfg.tiebreak == "later" or (
                second is not None and st.best_tiebreak is not None and second < st.best_tiebreak)))
        if improved:
            st.best, st.best_epoch, st.best_tiebreak, st.bad_epochs = value, int(row["epoch"]), second, 0
        else:
            st.bad_epochs += 1
        return improved

    def train_epoch(self, task: Task, epoch: int) -> dict[str, float]:
        """One pass over the training loader; the image-weighted mean of each loss term as ``train_<name>``."""
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "shuffle_epoch"):
            sampler.shuffle_epoch = epoch
        self.model.train()
        sums: dict[str, float] = {}
        count = 0
        for batch in progress(self.train_loader, desc=f"{self.config.desc} epoch {epoch + 1}/{self.epochs}"):
            losses = task.step(batch, self.state.step)
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
        """Fit the stage into ``budget_s``: the whole number of epochs nearest to what the first one's time allows
        (at least 1, at most ``epochs``; `replan` revises it after the second), decided on rank 0 and shared; the
        cosine schedule is stretched to end with them. Nearest, not fewer: a stage then misses its share by at
        most half an epoch either way, where rounding down lost up to a whole one (with 45,000 unlabelled photos
        one FixMatch epoch took 190 s, and rounding down used 195 s of a 360 s share: benchmarks/README.md)."""
        budget = self.config.budget_s
        planned = max(1, min(self.epochs, int(budget / max(first_epoch_s, 1e-6) + 0.5)))
        if self.fabric.world_size > 1:
            planned = int(self.fabric.broadcast(planned, src=0))
        if planned != self.epochs:
            info(f"[{self.config.desc}] budget {budget / 60:.1f} min: {planned} epochs of {first_epoch_s:.1f} s "
                 f"(of at most {self.epochs})")
        self._record_plan(StagePlan(round(budget, 1), round(first_epoch_s, 3), planned, self.epochs),
                          final=planned < 2)  # with 2 or more, `replan` has the last word
        self.epochs = self.state.planned_epochs = planned
        self.scheduler.T_max = planned

    def replan(self, second_epoch_s: float) -> None:
        """After the second epoch, plan the epochs left at its speed: the first epoch carries one-time costs (on
        photos the first FixMatch epoch took 25.3 s and the next ones 17-21 s, so the plan from it used 287 s of a
        360 s share; a supervised epoch 1.0 s and then 0.4 s: benchmarks/README.md)."""
        budget, first = self.config.budget_s, float(self.state.history[0]["seconds"])
        before = self.state.planned_epochs or self.epochs
        left = budget - first - second_epoch_s
        planned = max(2, min(self.config.epochs, 2 + int(left / max(second_epoch_s, 1e-6) + 0.5)))
        if self.fabric.world_size > 1:
            planned = int(self.fabric.broadcast(planned, src=0))
        if planned != before:
            info(f"[{self.config.desc}] budget {budget / 60:.1f} min: {planned} epochs at the second epoch's "
                 f"{second_epoch_s:.1f} s (the first took {first:.1f} s)")
        self._record_plan(StagePlan(round(budget, 1), round(first, 3), planned, self.config.epochs), final=True)
        self.epochs = self.state.planned_epochs = self.scheduler.T_max = planned

    def _closed_form_rate(self) -> None:
        """After a (re)plan and the scheduler's step: the next epoch's rate from the planned cosine's closed form
        ``η_min + (η_0 − η_min)(1 + cos(π t / T)) / 2`` (Loshchilov & Hutter 2017, Eq. 5; ``t`` the epochs done,
        ``T`` the planned ones), which torch's recursive step then continues exactly. Recursing from the old
        length's last rate instead ran the second of 2 planned epochs at 99.7 % of the first one's rate, not half."""
        sched = self.scheduler
        for group, base in zip(self._inner_optimizer().param_groups, sched.base_lrs):
            cosine = (1 + math.cos(math.pi * sched.last_epoch / sched.T_max)) / 2
            group["lr"] = sched.eta_min + (base - sched.eta_min) * cosine

    def _record_plan(self, plan: StagePlan, final: bool) -> None:
        """Write the plan into the run folder (the report reads it) and, once final, tell the user if the budget
        cuts the stage short."""
        if self.fabric.is_global_zero:
            plan.write(self.run_dir)
        if final and plan.cut_short:
            info(f"[{self.config.desc}] note: only {plan.planned_epochs} of its {plan.max_epochs} epochs fit in its "
                 f"{plan.budget_s / 60:.1f}-minute time budget, so it may end far below what it reaches with more "
                 "time: raise --budget, or --budget null to run every epoch")

    # --- checkpoints and resume -----------------------------------------------------------------
    def _inner_optimizer(self):
        # Fabric's optimizer wrapper keeps a copy of the state dict attributes: use the real one.
        return getattr(self.optimizer, "optimizer", self.optimizer)

    def save(self, epoch: int, metrics: dict[str, Any], improved: bool, payload: dict[str, Any]) -> None:
        """``last.ckpt``, serialised once; ``best.ckpt`` becomes a copy of it when the epoch is kept."""
        ema = self.ema
        save_checkpoint(
            self.run_dir / "last.ckpt", **payload,
            state_dict=self.raw_model.state_dict() if ema is None else ema.module.state_dict(),  # what predict loads
            train_state_dict=None if ema is None else self.raw_model.state_dict(),
            ema_updates=None if ema is None else int(ema.updates),
            train_state=None if self.train_state is None else self.train_state.state_dict(),
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            rng_state=torch.get_rng_state(),
            cuda_rng_state=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            fit_state=self.state.__dict__, epoch=epoch, metrics=metrics,
        )
        if improved:
            copy_file(self.run_dir / "last.ckpt", self.run_dir / "best.ckpt")

    def restore(self) -> None:
        """Continue from ``run_dir/last.ckpt``: weights, EMA, train state, optimiser, schedule, RNG, memory."""
        ckpt = load_checkpoint(self.run_dir, which="last")
        self.raw_model.load_state_dict(ckpt.get("train_state_dict") or ckpt["state_dict"])
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt["state_dict"])
            self.ema.updates.fill_(int(ckpt.get("ema_updates", 0)))
        if self.train_state is not None and ckpt.get("train_state") is not None:
            self.train_state.load_state_dict(ckpt["train_state"])
        self._inner_optimizer().load_state_dict(ckpt["optimizer"])
        if ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng_state"])
        if ckpt.get("cuda_rng_state") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["cuda_rng_state"])
        self.state = FitState(**ckpt["fit_state"])
        if self.state.planned_epochs is not None and self.config.budget_s is not None:
            self.epochs = min(self.epochs, self.state.planned_epochs)  # an edited, lower --epochs still counts
        if self.state.epoch > 0 and self.state.best_epoch == self.state.epoch - 1 and self.fabric.is_global_zero:
            # The last epoch was kept: its copy may not have been made before the interruption.
            copy_file(self.run_dir / "last.ckpt", self.run_dir / "best.ckpt")
        info(f"[{self.config.desc}] resuming {self.run_dir} after epoch {self.state.epoch}")

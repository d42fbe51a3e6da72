"""The training engine: Lightning Fabric for devices, precision and DDP; one epoch loop for all stages.

Fabric owns device placement, mixed precision and distributed launch; this module only adds the
loop that pretraining, fine-tuning and the anomaly detector share: per-epoch validation,
``metrics.csv``, ``last``/``best`` checkpoints, early stopping and exact resume.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from aelab.errors import AelabError
from aelab.progress import info, progress
from aelab.runs import MetricsLogger
from aelab.train.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["make_fabric", "FitState", "fit_loop", "resolve_precision"]


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto`` → bf16-mixed on a GPU that supports it, else full float32."""
    if precision != "auto":
        return precision
    if accelerator == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def make_fabric(device: str = "auto", devices: int | str = 1, precision: str = "auto", strategy: str = "auto", num_nodes: int = 1):
    """A launched ``lightning.Fabric``; ``device`` is auto, cpu, cuda or mps; ``devices`` per node."""
    import lightning as L

    accelerator = device
    if device == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise AelabError("device 'cuda' was asked for but no CUDA GPU is available; use --device auto or cpu")
    try:
        fabric = L.Fabric(
            accelerator=accelerator, devices=devices, precision=resolve_precision(precision, accelerator), strategy=strategy,
            num_nodes=num_nodes,
        )
    except (ValueError, RuntimeError) as exc:
        raise AelabError(f"cannot set up the engine: {exc}") from None
    fabric.launch()
    return fabric


@dataclass
class FitState:
    """What a resumed run needs beyond weights: where it was and the early-stopping memory."""

    epoch: int = 0  # number of finished epochs
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def _better(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best + min_delta if mode == "max" else value < best - min_delta


def fit_loop(
    *,
    fabric,
    model: torch.nn.Module,
    raw_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    train_loader,
    train_step: Callable[[Any], dict[str, torch.Tensor]],
    validate: Callable[[], dict[str, float]],
    epochs: int,
    run_dir: Path,
    monitor: str,
    mode: str,
    patience: int,
    payload: dict[str, Any],
    resume: bool = False,
    min_delta: float = 0.0,
    desc: str = "train",
) -> FitState:
    """Train for up to ``epochs`` epochs; save ``last.ckpt`` every epoch and ``best.ckpt`` on improvement.

    ``train_step(batch)`` returns a dict of scalar losses whose ``"loss"`` is optimised;
    ``validate()`` returns a dict holding ``monitor``. ``payload`` (model config, preprocessing,
    classes, resolved config) goes into every checkpoint. With ``resume``, model, optimizer,
    scheduler, RNG and early-stopping state come from ``run_dir/last.ckpt`` and the loop continues
    where it stopped, so it ends with the same weights as an uninterrupted run.
    """
    state = FitState()
    if resume:
        ckpt = load_checkpoint(run_dir, which="last")
        raw_model.load_state_dict(ckpt["state_dict"])
        # Fabric's optimizer wrapper keeps a copy of the state dict attributes: load into the real one.
        getattr(optimizer, "optimizer", optimizer).load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng_state"])
        if ckpt.get("cuda_rng_state") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["cuda_rng_state"])
        state = FitState(**ckpt["fit_state"])
        info(f"[{desc}] resuming {run_dir} after epoch {state.epoch}")
    logger = MetricsLogger(run_dir / "metrics.csv", start_epoch=state.epoch)
    sampler = getattr(train_loader, "sampler", None)
    stopped = state.bad_epochs >= patience
    for epoch in range(state.epoch, epochs):
        if stopped:
            break
        t0 = time.perf_counter()
        if hasattr(sampler, "shuffle_epoch"):
            sampler.shuffle_epoch = epoch
        model.train()
        sums: dict[str, float] = {}
        count = 0
        for batch in progress(train_loader, desc=f"{desc} epoch {epoch + 1}/{epochs}"):
            losses = train_step(batch)
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(losses["loss"])
            optimizer.step()
            n = len(batch[0])
            count += n
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
        lr = getattr(optimizer, "optimizer", optimizer).param_groups[0]["lr"]  # the rate this epoch used
        if scheduler is not None:
            scheduler.step()
        model.eval()
        with torch.no_grad():
            val = validate()
        row: dict[str, Any] = {"epoch": epoch}
        row.update({f"train_{k}": v / max(count, 1) for k, v in sums.items()})
        row.update(val)
        row["lr"] = lr
        row["seconds"] = round(time.perf_counter() - t0, 3)
        value = float(val[monitor])
        improved = _better(value, state.best, mode, min_delta)
        if improved:
            state.best, state.best_epoch, state.bad_epochs = value, epoch, 0
        else:
            state.bad_epochs += 1
        state.epoch = epoch + 1
        state.history.append({k: v for k, v in row.items()})
        logger.log(row)
        ckpt = dict(
            payload,
            state_dict=raw_model.state_dict(),
            optimizer=optimizer.state_dict(),
            scheduler=None if scheduler is None else scheduler.state_dict(),
            rng_state=torch.get_rng_state(),
            cuda_rng_state=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            fit_state=state.__dict__,
            epoch=epoch,
            metrics={k: v for k, v in row.items() if isinstance(v, (int, float))},
        )
        if fabric.is_global_zero:
            if improved:
                save_checkpoint(run_dir / "best.ckpt", **ckpt)
            save_checkpoint(run_dir / "last.ckpt", **ckpt)
        shown = "  ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float) and k != "seconds")
        info(f"[{desc}] epoch {epoch + 1}/{epochs}  {shown}  ({row['seconds']:.1f} s){'  *best' if improved else ''}")
        if state.bad_epochs >= patience:
            info(f"[{desc}] early stop: no {monitor} improvement for {state.bad_epochs} epochs")
            stopped = True
    if state.best is None:
        raise AelabError(f"[{desc}] {monitor} was NaN in every epoch (training diverged?); try a lower --lr")
    return state

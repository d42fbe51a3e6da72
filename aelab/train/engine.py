"""The training engine: Lightning Fabric for devices, precision and DDP, and the run folder of a training verb.

Fabric owns device placement, mixed precision and distributed launch (`make_fabric`); rank 0 creates
the run folder and every rank gets its path (`shared_run_dir`, `start_run`). The training loop all
stages share is `aelab.train.trainer.Trainer`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from aelab.errors import AelabError

__all__ = [
    "make_fabric", "from_rank0", "is_child_process", "resolve_precision", "shared_run_dir", "start_run",
    "write_model_summary",
]


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


def is_child_process() -> bool:
    """True in a process that Fabric's launcher started for rank > 0 on this machine."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0) > 0

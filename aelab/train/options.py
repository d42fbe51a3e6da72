"""Options every training or inference command shares, and where its images come from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aelab.errors import AelabError

__all__ = ["RunOptions", "Sources", "resolve_sources"]


@dataclass
class RunOptions:
    """Engine and bookkeeping options.

    Attributes:
        seed: one seed for splits, initialisation, noise and augmentation (repeatable on CPU).
        device: auto, cpu, cuda or mps.
        devices: number of devices (processes) per machine for Lightning Fabric; >1 uses DDP.
        num_nodes: number of machines (Fabric's multi-node launch: torchrun or SLURM start the processes).
        precision: auto (bf16-mixed on a GPU that has it, else 32-true), 32-true, bf16-mixed, 16-mixed.
        out: run folder to write; default the next free runs/<verb>/<N>.
        strict: treat unreadable image files as an error instead of skipping and listing them.
        logger: where training metrics go besides metrics.csv: csv (only metrics.csv), tensorboard or mlflow (needs that package).
    """

    seed: int = 0
    device: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    precision: str = "auto"
    out: str | None = None
    strict: bool = False
    logger: str = "csv"


@dataclass
class Sources:
    root: Path | None = None
    labelled: Path | None = None
    unlabelled: Path | None = None
    test: Path | None = None
    test_labels: Path | None = None


def resolve_sources(
    data: str | None = None,
    *,
    labelled: str | None = None,
    unlabelled: str | None = None,
    test: str | None = None,
    test_labels: str | None = None,
) -> Sources:
    """Folders from a root in the seed layout (``--data``) with explicit folders overriding it."""
    src = Sources()
    if data is not None:
        from aelab.data import resolve_layout

        layout = resolve_layout(data)
        src = Sources(Path(data), layout.labelled, layout.unlabelled, layout.test, layout.test_labels)
    for name, value in (("labelled", labelled), ("unlabelled", unlabelled), ("test", test), ("test_labels", test_labels)):
        if value is not None:
            setattr(src, name, Path(value))
    return src


def restore_for_resume(cls, cfg):
    """For ``--resume RUN``: the run's saved settings, with this machine's engine flags.

    Returns ``(cfg, run_dir, resume)``; without ``--resume`` the settings are returned as given.
    """
    from dataclasses import fields

    from aelab.runs import load_config

    if cfg.resume is None:
        return cfg, None, False
    run_dir = Path(cfg.resume)
    if not (run_dir / "last.ckpt").is_file():
        raise AelabError(f"cannot resume: {run_dir / 'last.ckpt'} does not exist")
    saved = load_config(run_dir)
    names = {f.name for f in fields(cls)}
    restored = cls(**{k: v for k, v in saved.items() if k in names})
    # The machine may differ from the one that started the run.
    restored.device, restored.devices, restored.precision = cfg.device, cfg.devices, cfg.precision
    restored.num_nodes = cfg.num_nodes
    restored.resume = str(run_dir)
    return restored, run_dir, True


def require(path: Path | None, what: str, flag: str) -> Path:
    if path is None:
        raise AelabError(f"no {what} folder: pass --data ROOT (seed layout) or {flag} DIR")
    return path

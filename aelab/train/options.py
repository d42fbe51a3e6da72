"""Options every training or inference command shares, and where its images come from."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from aelab.errors import AelabError

__all__ = ["RunOptions", "Sources", "resolve_sources", "validate_options", "check_option", "DEVICES", "PRECISIONS"]

#: Values of ``--device`` (``cuda:N`` picks one GPU).
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
#: Values of ``--precision`` (Lightning Fabric's names).
PRECISIONS: tuple[str, ...] = ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")


def _int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)  # numpy integers too


def _num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _device(v: Any) -> bool:
    return isinstance(v, str) and (v in DEVICES or (v.startswith("cuda:") and v[5:].isdigit()))


# Every option name any verb uses, with its rule: (test, what it must be). One table, so the
# CLI and the Python API check the same things, and before any folder is created.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "patience": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "devices": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "seed": (lambda v: _int(v) and 0 <= v < 2**32, "an integer from 0 to 2**32 - 1"),  # what NumPy's and sklearn's seeding take
    "lr": (lambda v: _num(v) and v > 0, "a number > 0"),
    "weight_decay": (lambda v: _num(v) and v >= 0, "a number >= 0"),
    "noise_factor": (lambda v: _num(v) and v >= 0, "a number >= 0"),
    "val_fraction": (lambda v: _num(v) and 0 < v < 1, "a number between 0 and 1 (exclusive)"),
    "dropout": (lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
    "recon_weight": (lambda v: _num(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "contamination": (lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
    "threshold": (lambda v: _num(v), "a finite number"),
    "channels": (lambda v: v in (1, 3) and _int(v), "1 or 3"),
    "image_size": (lambda v: _int(v) and v >= 4, "an integer >= 4"),
    "width": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "depth": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "ssim_window": (lambda v: _int(v) and v >= 3 and v % 2 == 1, "an odd integer >= 3"),
    "top": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "cases": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "device": (_device, "one of " + ", ".join(DEVICES) + " (or cuda:N)"),
    "precision": (lambda v: v in PRECISIONS, "one of " + ", ".join(PRECISIONS)),
    "pretrain_epochs": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "finetune_epochs": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "demo_unlabelled": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "demo_labelled_per_class": (lambda v: _int(v) and v >= 2, "an integer >= 2"),
    "demo_test": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "budget": (lambda v: v is None or (_num(v) and v > 0), "a number of minutes > 0, or null (no budget)"),
    "stem": (lambda v: _int(v) and v >= 0 and v % 2 == 0, "an even integer >= 0"),
}


def validate_options(options: Any) -> None:
    """Check every known option of a settings dataclass; raise one `AelabError` naming the first bad one.

    A field whose default is ``None`` may be ``None``. Called by `RunOptions.__post_init__` (and
    ``aelab run``'s settings), so every verb checks its settings when they are made, before any
    folder is created.
    """
    for f in fields(options):
        value = getattr(options, f.name)
        if is_dataclass(value):
            validate_options(value)  # nested settings (aelab run's --cluster.*, --anomaly.*)
            continue
        if value is None and f.default is None:
            continue
        check_option(f.name, value)


def check_option(name: str, value: Any) -> None:
    """Check one option by the table's rule for its name (none: anything goes); raise a one-line `AelabError`."""
    rule = _RULES.get(name)
    if rule is not None and not rule[0](value):
        raise AelabError(f"--{name} must be {rule[1]}, got {value!r}")


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

    #: ``aelab run`` re-uses its own run folder to resume; every other verb writes a new one.
    OUT_MAY_HOLD_A_RUN: ClassVar[bool] = False

    def __post_init__(self) -> None:
        validate_options(self)
        if self.out is not None and getattr(self, "resume", None) is None and not self.OUT_MAY_HOLD_A_RUN:
            from aelab.runs import check_out_folder

            check_out_folder(self.out)  # a file or a non-empty folder: refused before any work


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
    """Folders from a root in the course layout (``--data``) with explicit folders overriding it."""
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
    from aelab.runs import load_config, lock_run_dir

    if cfg.resume is None:
        return cfg, None, False
    run_dir = Path(cfg.resume)
    if not (run_dir / "last.ckpt").is_file():
        raise AelabError(f"cannot resume: {run_dir / 'last.ckpt'} does not exist")
    from aelab.progress import is_rank_zero

    if is_rank_zero():  # the extra processes of a --devices N run share rank 0's lock
        lock_run_dir(run_dir)  # one process per run folder
    saved = load_config(run_dir)
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in saved.items() if k in names}
    values["resume"] = str(run_dir)
    try:
        restored = cls(**values)
    except AelabError as exc:  # the saved settings were edited
        raise AelabError(f"{run_dir / 'config.yaml'}: {exc}") from None
    # The machine may differ from the one that started the run.
    restored.device, restored.devices, restored.precision = cfg.device, cfg.devices, cfg.precision
    restored.num_nodes = cfg.num_nodes
    restored.resume = str(run_dir)
    return restored, run_dir, True


def require(path: Path | None, what: str, flag: str) -> Path:
    if path is None:
        raise AelabError(f"no {what} folder: pass --data ROOT (course layout: dev/labelled, dev/unlabelled, test) or {flag} DIR")
    return path

"""Run folders: versioned directories holding config.yaml, metrics.csv, checkpoints and outputs.

Every command that produces something writes it into a run folder so that a run can be
inspected, resumed and reported on later. Helpers here are shared by all studies.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Mapping

import numpy as np
import yaml

__all__ = [
    "new_run_dir",
    "save_config",
    "load_config",
    "MetricsLogger",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_torch_save",
    "write_json",
    "read_json_file",
    "set_seed",
    "to_plain",
    "read_csv_rows",
    "write_csv",
]


def new_run_dir(out: str | os.PathLike | None, verb: str, root: str | os.PathLike = "runs") -> Path:
    """Return a fresh run folder.

    With ``out`` given, that folder is used (created if missing). Without it, the next free
    ``root/verb/N`` (N = 0, 1, ...) is created, so earlier runs are never overwritten.
    """
    if out is not None:
        path = Path(out)
        if (path / "config.yaml").is_file():
            from aelab.errors import AelabError

            # Never mix a new run's files with an old one's (a stale best.ckpt would survive).
            raise AelabError(f"{path} already holds a run (config.yaml); choose another --out or remove it")
        path.mkdir(parents=True, exist_ok=True)
        return path
    base = Path(root) / verb
    base.mkdir(parents=True, exist_ok=True)
    taken = {int(p.name) for p in base.iterdir() if p.name.isdigit()}
    n = 0
    while n in taken:
        n += 1
    path = base / str(n)
    path.mkdir()
    return path


def to_plain(obj: Any) -> Any:
    """Convert dataclasses, paths, numpy scalars and tuples into YAML/JSON-safe plain values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any], mode: int = 0o644) -> None:
    """Call ``write(fh)`` on a temporary file beside ``path``, then rename it into place.

    Readers never see half a file, and an interrupted write leaves the old file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, mode)  # mkstemp makes 0600; outputs and caches should stay readable
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file and an atomic rename."""
    import torch

    atomic_write(path, lambda fh: torch.save(obj, fh))


def save_config(run_dir: str | os.PathLike, config: Any, name: str = "config.yaml") -> Path:
    """Save the resolved configuration (a dataclass or a mapping) as YAML in the run folder."""
    path = Path(run_dir) / name
    atomic_write_text(path, yaml.safe_dump(to_plain(config), sort_keys=False))
    return path


def load_config(run_dir: str | os.PathLike, name: str = "config.yaml") -> dict:
    path = Path(run_dir) / name
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def read_json_file(path: str | os.PathLike) -> dict:
    """A JSON object from ``path`` ({} when the file does not exist); one-line error when it is not valid JSON."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        from aelab.errors import AelabError

        raise AelabError(f"{path} is not valid JSON ({exc}); restore it or start over with --force") from None
    if not isinstance(value, dict):
        from aelab.errors import AelabError

        raise AelabError(f"{path} does not hold a JSON object; restore it or start over with --force")
    return value


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(to_plain(obj), indent=2, sort_keys=False) + "\n")


class MetricsLogger:
    """Appends one row per epoch to ``metrics.csv``; the header is the union of keys seen first.

    On resume the existing file is kept and rows after ``start_epoch`` are dropped, so the file
    ends exactly as an uninterrupted run's would.
    """

    def __init__(self, path: str | os.PathLike, start_epoch: int = 0):
        self.path = Path(path)
        self.rows: list[dict] = []
        if start_epoch > 0 and self.path.exists():
            with open(self.path, newline="", encoding="utf-8") as fh:
                self.rows = [r for r in csv.DictReader(fh) if int(r.get("epoch", 0)) < start_epoch]
        elif self.path.exists():
            self.path.unlink()
        self._flush()

    def log(self, row: Mapping[str, Any]) -> None:
        self.rows.append({k: to_plain(v) for k, v in row.items()})
        self._flush()

    def _flush(self) -> None:
        keys: list[str] = []
        for row in self.rows:
            keys.extend(k for k in row if k not in keys)
        lines: list[str] = []
        if keys:
            import io

            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.rows)
            lines.append(buf.getvalue())
        atomic_write_text(self.path, "".join(lines))


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices) for repeatable CPU runs."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def read_csv_rows(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_csv(path: str | os.PathLike, header: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    """Write a plain CSV atomically (a spreadsheet opens it as is)."""
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(header))
    for row in rows:
        writer.writerow([to_plain(v) for v in row])
    atomic_write_text(path, buf.getvalue())

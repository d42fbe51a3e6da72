"""Run folders: versioned directories holding config.yaml, metrics.csv, checkpoints and outputs.

Every command that produces something writes it into a run folder so that a run can be
inspected, resumed and reported on later. Helpers here are shared by all studies. The atomic
writers live in `aelab.atomic` and the run-folder lock in `aelab.locks`; both are re-exported here.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import yaml

from aelab.atomic import (
    atomic_save_image,
    atomic_save_npy,
    atomic_savefig,
    atomic_torch_save,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
)
from aelab.csvsafe import safe_cell
from aelab.errors import AelabError
from aelab.locks import LOCK_NAME, held, lock_run_dir, make_dir, release_run_dir, release_run_dirs

__all__ = [
    "new_run_dir",
    "check_out_folder",
    "run_dir_entries",
    "clear_run_dir",
    "lock_run_dir",
    "release_run_dir",
    "release_run_dirs",
    "LOCK_NAME",
    "read_json",
    "save_config",
    "load_config",
    "MetricsLogger",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_torch_save",
    "atomic_save_npy",
    "atomic_savefig",
    "atomic_save_image",
    "load_yaml",
    "write_json",
    "set_seed",
    "to_plain",
    "read_csv_rows",
    "write_csv",
]


def new_run_dir(out: str | os.PathLike | None, verb: str, root: str | os.PathLike = "runs") -> Path:
    """Return a fresh run folder, locked for this process (see `lock_run_dir`).

    With ``out`` given, that folder is used: created if missing, or taken if it exists and is
    empty; a non-empty folder (or a file) is refused, so nothing of the user's is ever
    overwritten. Without it, the next free ``root/verb/N`` (N = 0, 1, ...) is created, so earlier
    runs are never overwritten.

    Raises:
        AelabError: ``out`` is a file, a non-empty folder, cannot be created, or is in use.
    """
    if out is not None:
        path = Path(out)
        check_out_folder(path)
        lock_run_dir(path)
        try:
            check_out_folder(path)  # again under the lock: another process may have written meanwhile
        except AelabError:
            release_run_dir(path)
            raise
        return path
    base = Path(root) / verb
    make_dir(base)
    while True:
        taken = {int(p.name) for p in base.iterdir() if p.name.isdigit()}
        path = base / str(min(set(range(len(taken) + 1)) - taken))
        try:
            path.mkdir()
        except FileExistsError:  # another process took that number first
            continue
        except OSError as exc:
            raise AelabError(f"cannot create run folder {path}: {exc.strerror or exc}") from None
        return lock_run_dir(path)


def run_dir_entries(path: str | os.PathLike) -> list[str]:
    """Names in a folder, ignoring aelab's own lock file."""
    try:
        return [name for name in os.listdir(path) if name != LOCK_NAME]
    except OSError as exc:
        raise AelabError(f"cannot read {path}: {exc.strerror or exc}") from None


def check_out_folder(path: str | os.PathLike) -> None:
    """Refuse an ``--out`` that is a file or a folder that already holds something."""
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise AelabError(f"--out {path} is a broken symbolic link; choose another --out")
        return
    if not path.is_dir():
        raise AelabError(f"--out {path} is a file, not a folder; choose another --out")
    names = run_dir_entries(path)
    if "config.yaml" in names:
        raise AelabError(f"{path} already holds a run (config.yaml); aelab never overwrites: "
                         "choose another --out or remove it")
    if names:
        raise AelabError(f"{path} is not empty ({len(names)} entries, e.g. {sorted(names)[0]!r}); aelab only writes "
                         "into a new or empty folder: choose another --out")


def clear_run_dir(path: str | os.PathLike) -> None:
    """Delete everything in a run folder this process has locked, keeping the lock (``--force``)."""
    import shutil

    path = Path(path)
    if not held(path):
        raise RuntimeError(f"clear_run_dir({path}): lock it first (lock_run_dir)")
    for name in run_dir_entries(path):
        entry = path / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()



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



def save_config(run_dir: str | os.PathLike, config: Any, name: str = "config.yaml") -> Path:
    """Save the resolved configuration (a dataclass or a mapping) as YAML in the run folder."""
    path = Path(run_dir) / name
    atomic_write_text(path, yaml.safe_dump(to_plain(config), sort_keys=False))
    return path


def load_config(run_dir: str | os.PathLike, name: str = "config.yaml") -> dict:
    """Read a run's saved settings; a missing, edited or invalid file is a one-line `AelabError`."""
    path = Path(run_dir) / name
    try:
        with open(path, encoding="utf-8") as fh:
            config = load_yaml(fh.read(), path)
    except FileNotFoundError:
        raise AelabError(f"{path} not found (is {run_dir} an aelab run folder?)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AelabError(f"cannot read {path}: {_first_line(exc)}") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise AelabError(f"{path} is not a mapping of settings (found {type(config).__name__}); was it edited?")
    return config


#: Most values a YAML settings file may expand to, aliases (``*name``) counted each time they are used.
YAML_MAX_NODES = 100_000


def load_yaml(text: str, source: str | os.PathLike) -> Any:
    """``yaml.safe_load(text)``, refusing aliases that expand past `YAML_MAX_NODES` values.

    PyYAML shares an aliased value instead of copying it, so 9 levels of 9 aliases (the "billion
    laughs" attack) load in microseconds but expand to 9^9 values in anything that walks or
    copies the settings (jsonargparse, YAML or JSON dumps): minutes of work and gigabytes. The
    node graph is sized before anything is built; a recursive alias is refused too.

    Raises:
        AelabError: invalid YAML, or too many values once aliases are expanded; names ``source``.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}, set()) > YAML_MAX_NODES:
            raise AelabError(f"{source}: its aliases (*name) expand to more than {YAML_MAX_NODES:,} values; "
                             "write the settings out instead")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise AelabError(f"cannot read {source}: {_first_line(exc)}") from None
    except RecursionError:
        raise AelabError(f"cannot read {source}: nested too deeply") from None
    finally:
        loader.dispose()


def _expanded_size(node: Any, sizes: dict[int, int], open_: set[int]) -> int:
    """Values ``node`` stands for once every alias is copied out (a cycle counts as too many)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        return YAML_MAX_NODES + 1  # a recursive alias expands without end
    open_.add(key)
    total = 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            total += _expanded_size(k, sizes, open_) + _expanded_size(v, sizes, open_)
            if total > YAML_MAX_NODES:
                break
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            total += _expanded_size(v, sizes, open_)
            if total > YAML_MAX_NODES:
                break
    open_.discard(key)
    sizes[key] = total
    return total


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """Read a JSON file the run wrote; an edited or truncated file is a one-line `AelabError`.

    A missing file gives ``default`` when one is given, else an error; with a ``default``, a file
    holding another kind of value (a list where an object belongs) is an error too.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh)
        if default is not None and not isinstance(value, type(default)):
            raise AelabError(f"{path} holds a JSON {type(value).__name__}, not a {type(default).__name__}; "
                             "restore it or start over with --force")
        return value
    except FileNotFoundError:
        if default is not None:
            return default
        raise AelabError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AelabError(f"cannot read {path}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    """An exception's message as one line (YAML and JSON errors span several), at most 200 characters."""
    text = " ".join(str(getattr(exc, "strerror", None) or exc).split())
    return (text[:197] + "...") if len(text) > 200 else (text or exc.__class__.__name__)


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
            try:
                with open(self.path, newline="", encoding="utf-8") as fh:
                    self.rows = [r for r in csv.DictReader(fh) if int(r.get("epoch") or 0) < start_epoch]
            except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
                raise AelabError(f"cannot resume: {self.path} is not a metrics file aelab wrote "
                                 f"({_first_line(exc)})") from None
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
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow([safe_cell(k) for k in keys])
            writer.writerows([safe_cell(row.get(k, "")) for k in keys] for row in self.rows)
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
    """Write a plain CSV atomically, safe to open in a spreadsheet.

    Every cell goes through `aelab.csvsafe.safe_cell`: text that a spreadsheet would run as a
    formula (``=``, ``+``, ``-``, ``@``, tab, CR first) gets a leading ``'`` and undecodable
    file-name bytes are written as ``\\xNN``. This is the one CSV writer of aelab.
    """
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([safe_cell(h) for h in header])
    for row in rows:
        writer.writerow([safe_cell(to_plain(v)) for v in row])
    atomic_write_text(path, buf.getvalue())


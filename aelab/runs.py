"""Run folders: versioned directories holding config.yaml, metrics.csv, checkpoints and outputs.

Every command that produces something writes it into a run folder so that a run can be
inspected, resumed and reported on later. Helpers here are shared by all studies.
"""

from __future__ import annotations

import atexit
import csv
import dataclasses
import json
import os
import random
import socket
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Mapping

import numpy as np
import yaml

from aelab.csvsafe import printable, safe_cell
from aelab.errors import AelabError

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
    _mkdir(base)
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
        raise AelabError(f"{path} already holds a run (config.yaml); aelab never overwrites: choose another --out or remove it")
    if names:
        raise AelabError(f"{path} is not empty ({len(names)} entries, e.g. {sorted(names)[0]!r}); aelab only writes into a new "
                         "or empty folder: choose another --out")


def clear_run_dir(path: str | os.PathLike) -> None:
    """Delete everything in a run folder this process has locked, keeping the lock (``--force``)."""
    import shutil

    path = Path(path)
    if str(path.resolve()) not in _HELD:
        raise RuntimeError(f"clear_run_dir({path}): lock it first (lock_run_dir)")
    for name in run_dir_entries(path):
        entry = path / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise AelabError(f"cannot create folder {path}: a file of that name is in the way") from None
    except OSError as exc:
        raise AelabError(f"cannot create folder {path}: {exc.strerror or exc}") from None


# ---------------------------------------------------------------------------------------------
# One process per run folder: an exclusive lock on RUN/.aelab.lock.
#
# The lock is an flock(2) on the lock file, so the kernel drops it when the process ends in any
# way (crash, SIGKILL): a lock left by a dead process is never in the way. The file holds the
# holder's pid, host, start time and command so that a second process can say who holds it.
# Where flock is unavailable (some network file systems, Windows) the pid in the file decides:
# a holder on this host whose pid no longer runs is stale and the lock is taken over.
# ---------------------------------------------------------------------------------------------

#: Name of the lock file inside a run folder.
LOCK_NAME = ".aelab.lock"

_HELD: dict[str, tuple[int, int, int]] = {}  # resolved folder -> (fd, inode of its lock file, pid of the holder)
_ROOTS: dict[str, str] = {}  # resolved folder -> the folder as it was named (its links not followed)


def lock_run_dir(path: str | os.PathLike) -> Path:
    """Take the exclusive lock of a run folder (created if missing) for this process.

    Taking a lock this process already holds is a no-op. Locks are released by
    `release_run_dir`, by `release_run_dirs` (the CLI does so after each command) or when the
    process exits.

    Raises:
        AelabError: Another running process holds the lock; the message names it.
    """
    path = Path(path)
    _mkdir(path)
    key = str(path.resolve())
    lock = path / LOCK_NAME
    if key in _HELD:
        if _inode(lock) == _HELD[key][1] and _HELD[key][2] == os.getpid():
            return path
        _forget(key)  # the folder was emptied under us (aelab run --force): lock afresh
    if lock.is_symlink():  # opening it would write the holder's line into the link's target
        raise AelabError(f"{lock} is a symbolic link; aelab never follows links in a run folder: remove it and try again")
    for _ in range(5):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            raise AelabError(f"cannot create the lock file {lock}: {exc.strerror or exc}") from None
        if not _try_lock(fd):
            holder = _read_holder(fd)
            os.close(fd)
            raise AelabError(f"{path} is in use by {holder}; wait for it to finish (or stop it) and try again")
        if _inode_fd(fd) != _inode(lock):  # its holder removed the file as we opened it: retry
            os.close(fd)
            continue
        _write_holder(fd)
        _HELD[key] = (fd, _inode_fd(fd), os.getpid())
        _ROOTS[key] = os.path.abspath(path)
        return path
    raise AelabError(f"cannot lock {path}: its lock file keeps changing")


def release_run_dir(path: str | os.PathLike) -> None:
    """Release this process's lock of a run folder (nothing happens if it holds none)."""
    key = str(Path(path).resolve())
    if key in _HELD:
        _, ino, pid = _HELD[key]
        lock = Path(key) / LOCK_NAME
        if _inode(lock) == ino and pid == os.getpid():  # a forked child never removes its parent's lock
            try:
                lock.unlink()
            except OSError:
                pass
        _forget(key)


def release_run_dirs() -> None:
    """Release every run-folder lock this process holds."""
    for key in list(_HELD):
        release_run_dir(key)


atexit.register(release_run_dirs)


def _forget(key: str) -> None:
    _ROOTS.pop(key, None)
    fd, _, _ = _HELD.pop(key)
    try:
        os.close(fd)  # closing the descriptor drops the flock
    except OSError:
        pass


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _inode_fd(fd: int) -> int:
    return os.fstat(fd).st_ino


def _try_lock(fd: int) -> bool:
    """flock the file; fall back to the recorded pid where flock is not supported."""
    try:
        import fcntl
    except ImportError:  # Windows
        return _holder_is_gone(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:  # e.g. ENOLCK on a network file system
        return _holder_is_gone(fd)


def _holder_is_gone(fd: int) -> bool:
    info = _parse_holder(_read_text(fd))
    if not info or info.get("host") != socket.gethostname():
        return not info  # an empty file is free; a holder on another host cannot be checked
    try:
        pid = int(info.get("pid", ""))
    except ValueError:
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True  # stale: that process is gone
    except OSError:
        return False  # it exists (owned by another user)
    return False


def _read_text(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 4096).decode("utf-8", "replace")
    except OSError:
        return ""


def _parse_holder(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _read_holder(fd: int) -> str:
    info = _parse_holder(_read_text(fd))
    if not info:
        return "another process"
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} "
            f"(since {info.get('since', '?')}: {info.get('command', '?')})")


def _write_holder(fd: int) -> None:
    import shlex
    import sys
    import time

    command = " ".join(shlex.quote(printable(a)) for a in sys.argv)[:300] or "python"
    text = (f"pid={os.getpid()}\nhost={socket.gethostname()}\n"
            f"since={time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}\ncommand={command[:300]}\n")
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, text.encode("utf-8", "backslashreplace"))
    except OSError:
        pass  # the lock holds even if its description cannot be written (a full disk)


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

    This is the one writer of every file aelab puts in a run folder. Readers never see half a
    file, and an interrupted write leaves the old file intact. A symbolic link at ``path`` is
    replaced, never followed (``rename(2)`` replaces the link itself), so a link planted in a
    run folder cannot make aelab overwrite the file it points to; a linked folder inside a run
    folder this process holds (`lock_run_dir`) is refused (see `_check_no_links`). An
    ``OSError`` (a full disk, a read-only folder), also one that torch's writer reports as a
    ``RuntimeError`` raised while handling it, becomes one `AelabError` line naming the file.
    """
    path = Path(path)
    _check_no_links(path)
    _mkdir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        os.chmod(tmp, mode)  # mkstemp makes 0600; outputs and caches should stay readable
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        cause = _os_error(exc)
        if cause is not None:  # a full disk, a read-only folder: one line naming the file
            raise _write_error(path, cause) from None
        raise


def _os_error(exc: BaseException | None) -> OSError | None:
    """``exc`` when it is an ``OSError``; else the ``OSError`` a ``RuntimeError`` was raised from or while
    handling (torch's writer: ``RuntimeError: [enforce fail ...] unexpected pos`` over ``[Errno 28]``)."""
    for _ in range(8):
        if exc is None or isinstance(exc, OSError):
            return exc
        if not isinstance(exc, RuntimeError):
            return None
        exc = exc.__cause__ or exc.__context__
    return None


def _write_error(path: Path, exc: OSError) -> AelabError:
    import errno

    if exc.errno == errno.ENOSPC:
        return AelabError(f"no space left on device writing {path}")
    return AelabError(f"cannot write {path}: {exc.strerror or exc}")


def _check_no_links(path: Path) -> None:
    """Refuse to write below a linked folder inside a run folder this process holds.

    ``RUN/figures -> ~/`` would otherwise put ``figures/training_curves.png`` into the home
    folder (replacing a file of that name there). The run folder itself may be a link (a run on
    another disk); the folders aelab makes inside it never are.
    """
    target = os.path.abspath(path.parent)
    for root in _ROOTS.values():
        if target != root and not target.startswith(root.rstrip(os.sep) + os.sep):
            continue
        folder = root
        for part in Path(os.path.relpath(target, root)).parts:
            folder = os.path.join(folder, part)
            if os.path.islink(folder):
                raise AelabError(f"{folder} is a symbolic link; aelab writes only inside the run folder {root} and "
                                 "never follows links there: remove it and try again")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` as UTF-8 atomically; undecodable file-name bytes become ``\\xNN`` escapes."""
    atomic_write_bytes(path, printable(text).encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file and an atomic rename."""
    import torch

    atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_save_npy(path: str | os.PathLike, array: Any) -> None:
    """``np.save`` through a temporary file and an atomic rename (no pickles)."""
    atomic_write(path, lambda fh: np.save(fh, np.asarray(array), allow_pickle=False))


def atomic_savefig(fig: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """``fig.savefig`` through a temporary file and an atomic rename; the format comes from the suffix."""
    fmt = kwargs.pop("format", None) or Path(path).suffix.lstrip(".").lower() or "png"
    atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, **kwargs))


def atomic_save_image(image: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """A Pillow image's ``save`` through a temporary file and an atomic rename; the format comes from the suffix."""
    from PIL import Image

    fmt = kwargs.pop("format", None) or Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    atomic_write(path, lambda fh: image.save(fh, format=fmt, **kwargs))


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
                raise AelabError(f"cannot resume: {self.path} is not a metrics file aelab wrote ({_first_line(exc)})") from None
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

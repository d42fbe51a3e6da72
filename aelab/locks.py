"""One process per run folder: an exclusive lock on ``RUN/.aelab.lock`` (`lock_run_dir`, `release_run_dir(s)`)."""

from __future__ import annotations

import atexit
import os
import socket
from pathlib import Path

from aelab.csvsafe import printable
from aelab.errors import AelabError

__all__ = ["LOCK_NAME", "lock_run_dir", "release_run_dir", "release_run_dirs", "held", "make_dir"]


def make_dir(path: Path) -> None:
    """``mkdir -p`` whose failure (a file in the way, no permission) is one `AelabError` line."""
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
    make_dir(path)
    key = str(path.resolve())
    lock = path / LOCK_NAME
    if key in _HELD:
        if _inode(lock) == _HELD[key][1] and _HELD[key][2] == os.getpid():
            return path
        _forget(key)  # the folder was emptied under us (aelab run --force): lock afresh
    if lock.is_symlink():  # opening it would write the holder's line into the link's target
        raise AelabError(f"{lock} is a symbolic link; aelab never follows links in a run folder: "
                         "remove it and try again")
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



def held(path: str | os.PathLike) -> bool:
    """Whether this process holds the lock of the run folder ``path``."""
    return str(Path(path).resolve()) in _HELD


def held_roots() -> list[str]:
    """The run folders this process holds, as they were named (their links not followed)."""
    return list(_ROOTS.values())

"""Atomic writes: THE writer of every file in a run folder (a temporary file beside it, then a rename)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from aelab.csvsafe import printable
from aelab.errors import AelabError
from aelab.locks import held_roots, make_dir

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_torch_save", "atomic_save_npy",
           "atomic_savefig", "atomic_save_image"]


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
    make_dir(path.parent)
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
    for root in held_roots():
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


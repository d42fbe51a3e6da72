"""Progress output: a bar on a terminal, plain lines otherwise (logs, CI, pipes)."""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

__all__ = ["progress", "info", "is_rank_zero", "Stage"]


def _is_tty() -> bool:
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def is_rank_zero() -> bool:
    """False in the extra processes of a multi-process run (Lightning sets their ranks in the environment)."""
    return all(int(os.environ.get(k, "0") or 0) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def info(msg: str) -> None:
    """One line of progress for the user, on stderr so stdout stays clean for data (rank 0 only)."""
    if is_rank_zero():
        print(msg, file=sys.stderr, flush=True)


def progress(it: Iterable[T], desc: str = "", total: int | None = None, quiet: bool = False) -> Iterator[T]:
    """Iterate with a tqdm bar on a terminal; off a terminal, nothing per step (callers log per epoch)."""
    if quiet or not _is_tty() or not is_rank_zero():
        yield from it
        return
    from tqdm.auto import tqdm

    yield from tqdm(it, desc=desc, total=total, leave=False, dynamic_ncols=True)


class Stage:
    """Context manager printing ``[name] ...`` then ``[name] done in 12.3 s``."""

    def __init__(self, name: str):
        self.name = name
        self.elapsed = 0.0

    def __enter__(self) -> "Stage":
        self._t0 = time.perf_counter()
        info(f"[{self.name}] started")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.elapsed = time.perf_counter() - self._t0
        if exc_type is None:
            info(f"[{self.name}] done in {self.elapsed:.1f} s")

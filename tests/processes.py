"""Run a test's worker in several CPU processes (torch.multiprocessing, fork) without ever hanging the suite."""

from __future__ import annotations

import time

import pytest


def run_processes(worker, args: tuple, what: str, nprocs: int = 2, timeout: float = 300) -> None:
    """Call ``worker(rank, *args)`` in ``nprocs`` forked processes and wait; fail the test after ``timeout`` s.

    fork: the children need not re-import torch and aelab (seconds each on a busy machine). A child's
    exception fails the test with its traceback (``ProcessRaisedException``).
    """
    import torch.multiprocessing as mp

    ctx = mp.start_processes(worker, args=args, nprocs=nprocs, join=False, start_method="fork")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {nprocs} {what} processes did not finish in {timeout:.0f} s")

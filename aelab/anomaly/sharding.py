"""Scoring under ``--devices N``: each process scores a block of whole batches, gathered in file order.

The pattern of `aelab.train.inference.sharded_forward` for ``aelab anomaly score`` and ``aelab
anomaly evaluate``: Lightning Fabric starts the processes (it re-runs the command, or joins the
processes torchrun or SLURM started) after every check, rank 0 decodes the images first (filling
the disk cache the others then read), every rank runs the same batches one process would run
on its contiguous block of rows (so each image's score and map are bit for bit one process's),
one all-gather per output puts the rows back in file order, and only rank 0 writes files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["launch", "images_once", "per_image", "run_dir_once", "is_writer"]


def launch(cfg):
    """A launched Fabric when ``cfg.devices`` or ``cfg.num_nodes`` ask for several processes, else None."""
    engine = cfg.engine()
    if engine.devices == 1 and engine.num_nodes == 1:
        return None
    from aelab.train.inference import launch_inference

    return launch_inference(engine.device, engine.devices, engine.num_nodes)


def is_writer(fabric) -> bool:
    """True in the process that writes files (rank 0, or the only process)."""
    return fabric is None or fabric.global_rank == 0


def run_dir_once(fabric, out, verb: str) -> Path:
    """The run folder: created by rank 0 (`aelab.runs.new_run_dir`), its path given to every rank."""
    from aelab.runs import new_run_dir

    if fabric is None:
        return new_run_dir(out, verb)
    from aelab.train.engine import shared_run_dir

    return shared_run_dir(fabric, out, verb)


def images_once(fabric, det, X):
    """``det.as_images(X)`` on rank 0 first (it decodes and fills the cache), then on the other ranks."""
    from aelab.train.inference import rank0_first

    return rank0_first(fabric, lambda: det.as_images(X))


def per_image(fabric, fn: Callable[[int, int], tuple], n: int, batch_size: int) -> tuple:
    """``fn(start, stop)`` (arrays with one row per image of ``start:stop``) for all ``n`` images.

    One process: ``fn(0, n)``. Several: each rank calls ``fn`` on its block of whole batches
    (`aelab.train.inference.shard_range`) and the blocks are all-gathered in rank order, so
    every rank gets all ``n`` rows in file order.
    """
    if fabric is None or fabric.world_size == 1:
        return fn(0, n)
    import torch
    import torch.distributed as dist

    from aelab.train.inference import shard_range

    start, stop, block = shard_range(n, batch_size, fabric.global_rank, fabric.world_size)
    rows = stop - start
    local = fn(start, stop) if rows else fn(0, min(n, 1))  # an empty block still needs the shapes
    out = []
    for part in local:
        padded = np.zeros((block, *part.shape[1:]), dtype=part.dtype)
        padded[:rows] = part[:rows]
        mine = torch.from_numpy(padded).to(fabric.device)
        blocks = [torch.empty_like(mine) for _ in range(fabric.world_size)]
        dist.all_gather(blocks, mine)  # one call per output, in rank order
        out.append(torch.cat(blocks).cpu().numpy()[:n])
    return tuple(out)

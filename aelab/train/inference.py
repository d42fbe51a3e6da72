"""Batched forward passes for prediction, embedding and scoring (no gradients, any device), in one
process or sharded across Lightning Fabric's processes (``--devices N``) with the same outputs."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from aelab.devices import resolve_device
from aelab.errors import AelabError

__all__ = [
    "ForwardResult", "batched_forward", "pick_device", "launch_inference", "shard_range",
    "load_images_once", "sharded_forward",
]


@dataclass
class ForwardResult:
    """Per-image outputs as CPU arrays; fields not asked for are ``None``."""

    logits: np.ndarray | None = None  # (N, K)
    embedding: np.ndarray | None = None  # (N, D)
    reconstruction: np.ndarray | None = None  # (N, C, H, W) float32 in [0, 1]


def pick_device(device: str = "auto") -> torch.device:
    """The torch device of ``--device`` (`aelab.devices.resolve_device`: auto, cpu, cuda, cuda:N, mps)."""
    return resolve_device(device)


@torch.no_grad()
def batched_forward(
    model: torch.nn.Module,
    preprocessing,
    images: np.ndarray,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    want: tuple[str, ...] = ("logits", "embedding"),
    pooling: str = "flatten",
) -> ForwardResult:
    """Run ``model`` on uint8 images ``(N, C, H, W)`` with the checkpoint's own preprocessing.

    ``pooling`` shapes the embedding: ``flatten`` (the course report's flattened bottleneck, what the head
    sees) or ``mean`` (global average over the bottleneck's spatial grid: one value per channel). A network
    without a decoder (`aelab.models.PlainCNN`) returns its pooled embedding for both.
    """
    device = pick_device(device) if isinstance(device, str) else device
    model = model.to(device).eval()
    parts: dict[str, list[np.ndarray]] = {k: [] for k in want}
    for start in range(0, len(images), batch_size):
        # A copy of one batch: ``images`` may be a read-only memory map of the decode cache.
        x = torch.from_numpy(np.array(images[start : start + batch_size])).to(device)
        out = model(preprocessing.model_input(x))
        if "logits" in parts and out.logits is not None:
            parts["logits"].append(out.logits.float().cpu().numpy())
        if "embedding" in parts:
            emb = out.embedding
            if pooling == "mean":
                emb = model.pool_embedding(emb)
            parts["embedding"].append(emb.float().cpu().numpy())
        if "reconstruction" in parts:
            if out.reconstruction is None:
                raise AelabError(f"a {model.config.arch} network has no decoder: it gives no reconstruction")
            parts["reconstruction"].append(out.reconstruction.float().cpu().numpy())
    return ForwardResult(**{k: (np.concatenate(v) if v else None) for k, v in parts.items()})


# --- several processes ------------------------------------------------------------------------------
# Inference under ``--devices N``: every process runs a contiguous block of whole batches (the same
# batches one process would run, so each image's outputs are bit-for-bit those of one process), the
# blocks are gathered in file order, and only rank 0 writes files.


def launch_inference(device: str = "auto", devices: int = 1, num_nodes: int = 1):
    """A launched Fabric for inference (full float32: the outputs do not depend on ``--precision``).

    With ``devices > 1`` on a CPU, Fabric re-runs the command in child processes; everything a verb
    does before this call runs in each of them, so it must only read (load the model, list files).
    Under torchrun or SLURM the processes already exist and Fabric joins them
    (``devices`` per node, ``num_nodes`` nodes).
    """
    from aelab.train.engine import make_fabric

    return make_fabric(device=device, devices=devices, precision="32-true", num_nodes=num_nodes)


def shard_range(n: int, batch_size: int, rank: int, world: int) -> tuple[int, int, int]:
    """``(start, stop, block)``: this rank's rows of ``n`` and the (padded) rows per rank.

    Ranks get contiguous blocks of whole batches, so rank ``r`` holds rows ``r*block ...``; the
    last blocks may be short or empty.
    """
    n_batches = -(-n // batch_size)
    block = -(-n_batches // world) * batch_size
    return min(n, rank * block), min(n, (rank + 1) * block), block


def rank0_first(fabric, load: Callable[[], Any]) -> Any:
    """``load()`` on rank 0 first (it decodes and fills the disk cache), then on the other ranks, which
    read the memory-mapped cache; an `AelabError` on rank 0 is raised on every rank (none waits forever)."""
    if fabric is None or fabric.world_size == 1:
        return load()
    data, failure = None, None
    if fabric.global_rank == 0:
        try:
            data = load()
        except AelabError as exc:
            failure = str(exc)
    failure = fabric.broadcast(failure, src=0)
    if failure is not None:
        raise AelabError(failure)
    if fabric.global_rank != 0:
        with warnings.catch_warnings():  # rank 0 already said which files it skipped
            warnings.simplefilter("ignore", UserWarning)
            data = load()
    return data


def load_images_once(fabric, paths, image_size: int, channels: int, strict: bool = False):
    """`aelab.data.load_images` through `rank0_first` (each rank only touches the rows it runs)."""
    from aelab.data import load_images

    return rank0_first(fabric, lambda: load_images(paths, image_size, channels, strict=strict))


def sharded_forward(
    fabric,
    model: torch.nn.Module,
    preprocessing,
    images: np.ndarray,
    *,
    batch_size: int = 256,
    want: tuple[str, ...] = ("logits", "embedding"),
    pooling: str = "flatten",
) -> ForwardResult:
    """`batched_forward` split across Fabric's processes; every rank gets all rows, in order."""
    kwargs = dict(device=fabric.device, batch_size=batch_size, want=want, pooling=pooling)
    if fabric.world_size == 1:
        return batched_forward(model, preprocessing, images, **kwargs)
    start, stop, block = shard_range(len(images), batch_size, fabric.global_rank, fabric.world_size)
    local = batched_forward(model, preprocessing, images[start:stop], **kwargs)
    if stop == start:  # an empty shard still needs the output shapes to take part in the gather
        local = batched_forward(model, preprocessing, images[:1], **kwargs)
    gathered = {}
    for name in want:
        part = getattr(local, name)
        if part is None:
            gathered[name] = None
            continue
        padded = np.zeros((block, *part.shape[1:]), dtype=part.dtype)
        rows = stop - start
        padded[:rows] = part[:rows]
        gathered[name] = _gather_rows(fabric, padded)[: len(images)]
    return ForwardResult(**gathered)


def _gather_rows(fabric, block: np.ndarray) -> np.ndarray:
    """Every rank's equal-sized ``block`` concatenated in rank order (one all-gather)."""
    import torch.distributed as dist

    local = torch.from_numpy(block).to(fabric.device)
    parts = [torch.empty_like(local) for _ in range(fabric.world_size)]
    dist.all_gather(parts, local)
    return torch.cat(parts).cpu().numpy()

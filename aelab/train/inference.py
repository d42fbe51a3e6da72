"""Batched forward passes for prediction, embedding and scoring (no gradients, any device)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aelab.models import ResUNetAutoencoder

__all__ = ["ForwardResult", "batched_forward", "pick_device"]


@dataclass
class ForwardResult:
    """Per-image outputs as CPU arrays; fields not asked for are ``None``."""

    logits: np.ndarray | None = None  # (N, K)
    embedding: np.ndarray | None = None  # (N, D)
    reconstruction: np.ndarray | None = None  # (N, C, H, W) float32 in [0, 1]


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


@torch.no_grad()
def batched_forward(
    model: ResUNetAutoencoder,
    preprocessing,
    images: np.ndarray,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    want: tuple[str, ...] = ("logits", "embedding"),
    pooling: str = "flatten",
) -> ForwardResult:
    """Run ``model`` on uint8 images ``(N, C, H, W)`` with the checkpoint's own preprocessing.

    ``pooling`` shapes the embedding: ``flatten`` (the seed's flattened bottleneck, what the head
    sees) or ``mean`` (global average over the bottleneck's spatial grid: one value per channel).
    """
    device = pick_device(device) if isinstance(device, str) else device
    model = model.to(device).eval()
    parts: dict[str, list[np.ndarray]] = {k: [] for k in want}
    for start in range(0, len(images), batch_size):
        x = torch.as_tensor(images[start : start + batch_size]).to(device)
        out = model(preprocessing.model_input(x))
        if "logits" in parts and out.logits is not None:
            parts["logits"].append(out.logits.float().cpu().numpy())
        if "embedding" in parts:
            emb = out.embedding
            if pooling == "mean":
                side = model.config.image_size // 2**model.config.depth
                emb = emb.view(len(x), -1, side * side).mean(-1)
            parts["embedding"].append(emb.float().cpu().numpy())
        if "reconstruction" in parts:
            parts["reconstruction"].append(out.reconstruction.float().cpu().numpy())
    return ForwardResult(**{k: (np.concatenate(v) if v else None) for k, v in parts.items()})

"""Checkpoints as plain dicts of tensors and plain values, written atomically.

A checkpoint holds everything ``predict`` needs (model config, preprocessing, class names), so it
loads with ``torch.load(path, weights_only=True)`` and no other file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from aelab.errors import AelabError
from aelab.models import ModelConfig, ResUNetAutoencoder, build_model
from aelab.runs import atomic_torch_save, to_plain

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "load_model", "resolve_checkpoint"]

FORMAT = "aelab-checkpoint-v1"


def save_checkpoint(path: str | os.PathLike, **payload: Any) -> None:
    """Write ``payload`` (plus the format tag) atomically; values are made plain first."""
    ckpt: dict[str, Any] = {"format": FORMAT}
    for key, value in payload.items():
        ckpt[key] = value if _is_torch_state(value) else to_plain(value)
    atomic_torch_save(ckpt, path)


def _is_torch_state(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, dict):
        return any(_is_torch_state(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_is_torch_state(v) for v in value)
    return False


def resolve_checkpoint(path: str | os.PathLike, which: str = "best") -> Path:
    """A checkpoint file from a file path or a run folder (``best.ckpt`` there, else ``last.ckpt``)."""
    p = Path(path)
    if p.is_dir():
        for name in (f"{which}.ckpt", "best.ckpt", "last.ckpt"):
            if (p / name).is_file():
                return p / name
        raise AelabError(f"no checkpoint (best.ckpt or last.ckpt) in run folder {p}")
    if not p.is_file():
        raise AelabError(f"checkpoint not found: {p}")
    return p


def load_checkpoint(path: str | os.PathLike, which: str = "best") -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True`` from a file or a run folder."""
    file = resolve_checkpoint(path, which)
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which, not a pickle traceback
        raise AelabError(f"cannot read checkpoint {file}: {exc.__class__.__name__}: {exc}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise AelabError(f"{file} is not an aelab checkpoint")
    return ckpt


def load_model(path: str | os.PathLike, which: str = "best") -> tuple[ResUNetAutoencoder, dict[str, Any]]:
    """Rebuild the network of a checkpoint with its weights, in eval mode, on the CPU."""
    ckpt = load_checkpoint(path, which)
    model = build_model(ModelConfig.from_dict(ckpt["model_config"]))
    # A VICReg-pretrained checkpoint carries its projector, which is not part of the network.
    model.load_state_dict({k: v for k, v in ckpt["state_dict"].items() if not k.startswith("projector.")})
    model.eval()
    return model, ckpt

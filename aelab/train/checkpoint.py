"""Checkpoints as plain dicts of tensors and plain values, written atomically.

A checkpoint holds everything ``predict`` needs (model config, preprocessing, class names), so it
loads with ``torch.load(path, weights_only=True)`` and no other file.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from aelab.errors import AelabError
from aelab.models import ModelConfig, build_model
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
    """Load a checkpoint dict with ``weights_only=True`` from a file or a run folder.

    Nothing in a checkpoint is ever run: a file holding other objects than tensors and plain
    values is refused, in one line (no advice to load it with ``weights_only=False``).
    """
    file = resolve_checkpoint(path, which)
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise AelabError(f"cannot read checkpoint {file}: {_first_line(exc)}") from None
        raise AelabError(f"cannot read checkpoint {file}: it holds objects other than tensors and plain values, "
                         "which aelab never loads (it is not a checkpoint aelab wrote)") from None
    except Exception as exc:  # a truncated or foreign file: say which, not a pickle traceback
        raise AelabError(f"cannot read checkpoint {file}: {_first_line(exc)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise AelabError(f"{file} is not an aelab checkpoint")
    return ckpt


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{exc.__class__.__name__}: {lines[0][:200]}" if lines else exc.__class__.__name__


def load_model(path: str | os.PathLike, which: str = "best") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the network of a checkpoint with its weights, in eval mode, on the CPU.

    Raises:
        AelabError: The checkpoint is inconsistent: no weights or model settings, weights that
            do not fit the network, or fewer class names than classifier outputs.
    """
    ckpt = load_checkpoint(path, which)
    file = resolve_checkpoint(path, which)
    state, config = ckpt.get("state_dict"), ckpt.get("model_config")
    if not isinstance(state, dict) or not isinstance(config, dict):
        missing = "state_dict" if not isinstance(state, dict) else "model_config"
        raise AelabError(f"{file} is damaged: it has no {missing}")
    # A VICReg-pretrained checkpoint carries its projector, which is not part of the network.
    state = {k: v for k, v in state.items() if not k.startswith("projector.")}
    try:
        model = build_model(ModelConfig.from_dict(config))
    except AelabError as exc:
        raise AelabError(f"{file} is damaged: {exc}") from None
    except (TypeError, ValueError, KeyError) as exc:
        raise AelabError(f"{file} is damaged: its model_config is invalid ({_first_line(exc)})") from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise AelabError(f"{file} is damaged: its weights do not fit its model_config ({_first_line(exc)})") from None
    classes = ckpt.get("classes")
    outputs = config.get("num_classes", 0) if model.head is not None else 0
    if classes is not None and (not isinstance(classes, list) or (outputs and len(classes) != outputs)):
        n = len(classes) if isinstance(classes, list) else type(classes).__name__
        raise AelabError(f"{file} is damaged: {n} class names for {outputs} classifier outputs")
    prep = ckpt.get("preprocessing")
    if not isinstance(prep, dict):
        raise AelabError(f"{file} is damaged: it has no preprocessing settings")
    for key, model_key in (("channels", "in_channels"), ("image_size", "image_size")):
        if key in prep and prep[key] != getattr(model.config, model_key, prep[key]):
            raise AelabError(f"{file} is damaged: preprocessing {key}={prep[key]} but the network takes "
                             f"{model_key}={getattr(model.config, model_key)}")
    model.eval()
    return model, ckpt

"""A JSON-safe description of a network: per-block rows and parameter counts.

Training stages write it into their run folder as ``model.json``, so the report can show the
architecture without loading a checkpoint or running the model.

Example:
    >>> from aelab.models import build_model, preset_config
    >>> info = describe_model(build_model(preset_config("tiny", in_channels=1, num_classes=10)))
    >>> info["parameters"] == sum(row["parameters"] for row in info["blocks"])
    True
    >>> info["blocks"][0]["name"], info["blocks"][0]["output_shape"]
    ('encoders.0', [8, 32, 32])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["FORMAT", "describe_model"]

FORMAT = "aelab-model-v1"
# Modules that hold no parameters and only repeat a shape already shown (pooling) are left out.
_SKIP_TYPES = (nn.MaxPool2d, nn.AvgPool2d, nn.Identity)


def _unwrap(model: nn.Module) -> nn.Module:
    # Lightning Fabric and DistributedDataParallel wrap the user's module in ``.module``.
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level children, with module lists expanded one level (``encoders.0``, ...)."""
    out = []
    for name, child in model.named_children():
        if isinstance(child, nn.ModuleList):
            out += [(f"{name}.{i}", m) for i, m in enumerate(child)]
        elif not isinstance(child, _SKIP_TYPES):
            out.append((name, child))
    return out


def _config(model: nn.Module) -> dict[str, Any] | None:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    if hasattr(cfg, "to_dict"):
        return dict(cfg.to_dict())
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None


def _input_shape(model: nn.Module, input_shape: Sequence[int] | None) -> list[int] | None:
    if input_shape is not None:
        return [int(s) for s in input_shape]
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "in_channels") and hasattr(cfg, "image_size"):
        return [int(cfg.in_channels), int(cfg.image_size), int(cfg.image_size)]
    return None


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return next((t for t in out if isinstance(t, torch.Tensor)), None)
    return None


def _output_shapes(model: nn.Module, blocks, input_shape: list[int]) -> dict[str, list[int]]:
    """One forward pass of a zero image (batch of 1, eval mode) recording each block's output."""
    shapes: dict[str, list[int]] = {}

    def hook(name):
        def record(module, inputs, output):
            t = _first_tensor(output)
            if t is not None:
                shapes[name] = [int(s) for s in t.shape[1:]]
        return record

    param = next(model.parameters(), None)
    x = torch.zeros(1, *input_shape, device=param.device if param is not None else "cpu",
                    dtype=param.dtype if param is not None and param.is_floating_point() else torch.float32)
    handles = [m.register_forward_hook(hook(name)) for name, m in blocks]
    was_training = model.training
    try:
        model.eval()  # batch norm cannot take a batch of one in training mode
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return shapes


def describe_model(model: nn.Module, input_shape: Sequence[int] | None = None) -> dict[str, Any]:
    """Describe ``model`` as plain data (the content of a run's ``model.json``).

    Args:
        model: Any ``torch.nn.Module`` (a Fabric or DDP wrapper is unwrapped).
        input_shape: ``(C, H, W)`` of one input, used for one forward pass that records each
            block's output shape. Default: from ``model.config`` (``in_channels``, ``image_size``)
            when it has them; otherwise no forward pass and no output shapes.

    Returns:
        ``{"format", "class", "config", "input_shape", "parameters", "trainable_parameters",
        "blocks"}`` where ``blocks`` is a list of ``{"name", "type", "output_shape",
        "parameters"}`` (top-level children, module lists expanded; ``output_shape`` excludes
        the batch axis and is ``None`` when unknown). Only ints, strings, lists, dicts,
        booleans, floats and ``None``: ``json.dumps`` writes it as is.
    """
    model = _unwrap(model)
    blocks = _blocks(model)
    shape = _input_shape(model, input_shape)
    shapes = _output_shapes(model, blocks, shape) if shape is not None else {}
    return {
        "format": FORMAT,
        "class": type(model).__name__,
        "config": _config(model),
        "input_shape": shape,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "blocks": [
            {"name": name, "type": type(m).__name__, "output_shape": shapes.get(name),
             "parameters": sum(p.numel() for p in m.parameters())}
            for name, m in blocks
        ],
    }

"""The one device resolver: ``--device`` (auto, cpu, cuda, cuda:N, mps) to a torch device or Fabric's arguments.

Every place that picks a device asks here (Fabric's set-up in `aelab.train.engine.make_fabric`, inference in
`aelab.train.inference`, the k-means torch backend in `aelab.cluster.torch_backend`), so ``cuda:N`` means the same
everywhere: Fabric gets ``accelerator="cuda", devices=[N]``; a tensor goes to ``cuda:N``.
"""

from __future__ import annotations

import torch

from aelab.errors import ParameterError

__all__ = ["DEVICES", "is_device", "resolve_device", "fabric_device"]

#: Values of ``--device`` besides ``cuda:N`` (one GPU by its index).
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")


def is_device(value: object) -> bool:
    """True for ``auto``, ``cpu``, ``cuda``, ``mps`` and ``cuda:N`` (N a non-negative integer)."""
    if isinstance(value, torch.device):
        value = str(value)
    return isinstance(value, str) and (value in DEVICES or (value.startswith("cuda:") and value[5:].isdigit()))


def _mps() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(device: str | torch.device = "auto", *, mps: bool = True) -> torch.device:
    """The torch device of ``device``: ``auto`` = cuda when present, else mps (when ``mps``), else cpu.

    A CUDA device that is not there (no GPU, or an index past the last one) is a one-line `ParameterError`.
    """
    name = str(device)
    if not is_device(name):
        raise ParameterError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)} (or cuda:N)")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps and _mps() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ParameterError(f"device {name!r} was asked for but no CUDA GPU is available; "
                                 "use --device auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ParameterError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                                 f"numbered from 0")
    return dev


def fabric_device(device: str, devices: int | str = 1) -> tuple[str, int | str | list[int]]:
    """Lightning Fabric's ``(accelerator, devices)`` for ``--device`` and ``--devices``.

    ``cuda:N`` picks GPU N alone: ``("cuda", [N])`` (so ``--devices`` must be 1 with it); the rest keep
    ``devices`` as the number of processes.
    """
    dev = resolve_device(device)
    if dev.index is None:
        return dev.type, devices
    if int(devices) != 1:
        raise ParameterError(f"--device {device} names one GPU: use --devices 1 with it, or --device cuda "
                             f"with --devices {devices}")
    return dev.type, [dev.index]

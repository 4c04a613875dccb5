"""The one torch device picker (QSM, SWI, training, prediction).

``auto`` means one thing everywhere: CUDA when this machine has it, else the CPU. A command
passes what its user or config said (``auto`` by default); a numerics function given None
computes on the CPU (it computes where it is told)."""
from __future__ import annotations

import torch

from deepmir.errors import InputError


def pick_device(name=None) -> torch.device:
    """None: the CPU; ``auto`` (or empty): CUDA when available, else the CPU; a torch.device
    as it is; otherwise the named torch device (``cpu``, ``cuda``, ``cuda:1``)."""
    if name is None:
        return torch.device("cpu")
    if isinstance(name, torch.device):
        return name
    if name in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_threads(n) -> None:
    """CPU threads for torch (0 or None: torch's default)."""
    if n:
        torch.set_num_threads(int(n))


def check_device(name, where) -> None:
    """A one-line InputError (naming ``where``) before any work when ``name`` is not a torch
    device, or asks for CUDA on a machine without it."""
    try:
        dev = pick_device(None if name in ("", "auto") else name)
    except RuntimeError as err:
        raise InputError(where, f"bad device {name!r} ({err})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(where, f"device {name}: CUDA is not available here")

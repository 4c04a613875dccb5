"""The torch device a job runs on (shared by QSM, training and prediction)."""
from __future__ import annotations

import torch


def pick_device(name=None) -> torch.device:
    """``auto``/empty/None: cuda when available, else cpu; otherwise the named torch device."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)

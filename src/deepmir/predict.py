"""Prediction of a participant's volume with a trained UNet (pure: arrays in, arrays out)."""
from __future__ import annotations

import numpy as np
import torch

from deepmir.dataset import unstack
from deepmir.device import pick_device as resolve_device
from deepmir.train import amp_settings
from deepmir.unet import UNet, probabilities


def model_from_checkpoint(ckpt: dict) -> UNet:
    """A UNet in eval mode from a ``best.pt`` dictionary (``config`` + ``state_dict``), as
    loaded with ``torch.load(path, weights_only=True)``."""
    cfg = dict(ckpt["config"])
    model = UNet(cfg.pop("in_channels"), cfg.pop("n_classes"), **cfg)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


@torch.no_grad()
def predict_probs(model: torch.nn.Module, x_stack, device=None, batch_size: int = 16,
                  amp: bool | None = None) -> np.ndarray:
    """Class probabilities ``[S, K, H, W]`` float32 of a stack ``[S, C, H, W]`` (K = 1: the
    sigmoid of the single logit; otherwise the softmax over classes)."""
    dev = resolve_device(device)
    use_amp, amp_dtype, _ = amp_settings(dev, amp)
    model = model.to(dev).eval()
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    x_stack = np.asarray(x_stack, dtype=np.float32)
    out = []
    for b in range(0, len(x_stack), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x_stack[b:b + batch_size])).to(dev)
        if dev.type == "cuda":
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=dev.type, dtype=amp_dtype, enabled=use_amp):
            logits = model(xb)
        out.append(probabilities(logits).cpu().numpy())
    return np.concatenate(out).astype(np.float32, copy=False)


def predict_volume(model: torch.nn.Module, x_stack, meta: dict, n_classes: int, device=None,
                   batch_size: int = 16, class_value: int = 1, threshold: float = 0.5,
                   mask=None, amp: bool | None = None):
    """(label map uint8 on the original 3D grid, probability maps float32 original shape + [K]).

    Multi-class: labels are the argmax class (0 background, 1 CMB, 2 iron), probabilities the
    softmax (K = n_classes). Single class: voxels with probability > ``threshold`` get
    ``class_value`` (the dseg label of the experiment: 1 CMB, 2 iron), probabilities the
    sigmoid (K = 1). ``mask`` (3D, original grid): labels outside it are set to 0.
    """
    probs = predict_probs(model, x_stack, device=device, batch_size=batch_size, amp=amp)
    if probs.shape[1] != n_classes:
        raise ValueError(f"the model gives {probs.shape[1]} output channels, expected n_classes={n_classes}")
    if n_classes == 1:
        lab = np.where(probs[:, 0] > threshold, class_value, 0).astype(np.uint8)
    else:
        lab = probs.argmax(axis=1).astype(np.uint8)
    labels = unstack(lab, meta, fill=0)
    probs3d = unstack(probs, meta, fill=0.0)
    if mask is not None:
        labels[~np.asarray(mask, dtype=bool)] = 0
    return labels, probs3d

"""Prediction of a participant's volume with a trained UNet (pure: arrays in, arrays out)."""
from __future__ import annotations

import numpy as np
import torch

from deepmir.device import pick_device
from deepmir.learn.dataset import unstack
from deepmir.learn.train import amp_settings
from deepmir.learn.unet import UNet, probabilities


def model_from_checkpoint(ckpt: dict) -> UNet:
    """A UNet in eval mode from a ``best.pt`` dictionary (``config`` + ``state_dict``), as
    loaded with ``torch.load(path, weights_only=True)``."""
    cfg = dict(ckpt["config"])
    model = UNet(cfg.pop("in_channels"), cfg.pop("n_classes"), **cfg)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


@torch.no_grad()
def predict_probs(model: torch.nn.Module, x_stack, device=None, batch_size: int = 16,
                  amp: bool | None = None, context: int = 0, tta: bool = False,
                  slices=None) -> np.ndarray:
    """Class probabilities ``[N, K, H, W]`` float32 of slices ``slices`` (default: all) of a
    stack ``[S, C, H, W]`` (K = 1: the sigmoid of the single logit; otherwise the softmax over
    classes). ``context``: neighbouring slices on each side given as extra channels (2.5D,
    :func:`deepmir.learn.patches.context_slices`); ``tta``: average over the four in-plane flips."""
    from deepmir.learn.patches import context_slices

    dev = pick_device(device)
    use_amp, amp_dtype, _ = amp_settings(dev, amp)
    model = model.to(dev).eval()
    model.to(memory_format=torch.channels_last)    # faster on CPUs too (oneDNN), same results
    x_stack = np.asarray(x_stack, dtype=np.float32)
    index = np.arange(len(x_stack)) if slices is None else np.asarray(slices, dtype=np.int64)
    flips = [(), (-2,), (-1,), (-2, -1)] if tta else [()]
    out = []
    for b in range(0, len(index), batch_size):
        xb = torch.from_numpy(context_slices(x_stack, index[b:b + batch_size], context)).to(dev)
        xb = xb.contiguous(memory_format=torch.channels_last)
        acc = 0
        for dims in flips:
            xf = torch.flip(xb, dims) if dims else xb
            with torch.autocast(device_type=dev.type, dtype=amp_dtype, enabled=use_amp):
                p = probabilities(model(xf))
            acc = acc + (torch.flip(p, dims) if dims else p)
        out.append((acc / len(flips)).cpu().numpy())
    if not out:
        return np.zeros((0, model.n_classes, *x_stack.shape[-2:]), np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def brain_window(brain, multiple: int, margin: int = 16):
    """(row0, row1, col0, col1): the in-plane bounding box of ``brain [S, H, W]`` grown by
    ``margin`` and to a multiple of ``multiple`` voxels per side, inside the slice."""
    brain = np.asarray(brain, bool)
    h, w = brain.shape[-2:]
    rows, cols = np.flatnonzero(brain.any((0, 2))), np.flatnonzero(brain.any((0, 1)))
    box = []
    for idx, n in ((rows, h), (cols, w)):
        if not len(idx):
            return 0, h, 0, w
        lo, hi = max(0, idx[0] - margin), min(n, idx[-1] + 1 + margin)
        size = min(n - n % multiple if n % multiple else n, -(-(hi - lo) // multiple) * multiple)
        lo = min(max(0, (lo + hi - size) // 2), n - size)
        box += [lo, lo + size]
    return tuple(int(b) for b in box)


def predict_brain_probs(model: torch.nn.Module, x_stack, brain, device=None, batch_size: int = 16,
                        amp: bool | None = None, context: int = 0, tta: bool = False) -> np.ndarray:
    """``[S, K, H, W]`` probabilities of a stack where ``brain [S, H, W]`` is: the slices that
    hold brain, cropped to :func:`brain_window` (the network is fully convolutional and the
    stack is zero outside the brain); background probability 1 elsewhere."""
    x_stack = np.asarray(x_stack, dtype=np.float32)
    s, _, h, w = x_stack.shape
    k = model.n_classes
    out = np.zeros((s, k, h, w), np.float32)
    if k > 1:
        out[:, 0] = 1.0
    sl = np.flatnonzero(np.asarray(brain).reshape(s, -1).any(1))
    if not len(sl):
        return out
    r0, r1, c0, c1 = brain_window(brain, 2 ** (len(model.widths) - 1))
    out[sl, :, r0:r1, c0:c1] = predict_probs(model, x_stack[:, :, r0:r1, c0:c1], device, batch_size, amp,
                                             context, tta, sl)
    return out


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


def predict_patch_stack(model, info: dict, x, st: dict, device=None, batch_size: int = 16, amp=None):
    """Labels (3D) and probabilities (3D + class) of a patch-learner model on a stack (``x``:
    the channels the model takes) at the operating point chosen on its validation participants
    (threshold, minimum size per class), iron lesions kept to the stack's iron region when it
    has one."""
    from deepmir.learn.dataset import restack, stack_voxel_size
    from deepmir.learn.postprocess import lesions_from_probs
    from deepmir.learn.stack import iron_region

    meta = st["meta"]
    brain = restack(st["mask"].astype(bool), meta, fill=False)
    probs = predict_brain_probs(model, x, brain, device=device, batch_size=batch_size, amp=amp,
                                context=int(info["context"]), tta=bool(info.get("tta")))
    op = {int(k): v for k, v in info["operating_point"].items()}
    labels = lesions_from_probs(np.moveaxis(probs, 1, 0), info["label_mode"], op,
                                stack_voxel_size(st["affine"], meta), info.get("max_cmb_diameter_mm"), brain,
                                iron_region(st))
    return unstack(labels, meta, fill=0), unstack(probs, meta, fill=0.0)


def predict_stack_file(model_path, stack_path, threshold: float, device=None, batch_size: int = 16, amp=None,
                       mask: bool = True):
    """(labels, probabilities, affine) of the model of ``deepmir train`` (best.pt) on a stack file,
    both on the input grid: the patch learner at its own operating point, the paper learner
    at ``threshold`` (single class). The model, the stack and the device are checked first."""
    from deepmir import niio
    from deepmir.device import check_device
    from deepmir.errors import InputError
    from deepmir.learn.stack import load_stack

    check_device(device, model_path)
    mp = niio.regular_file(model_path, "model")
    try:
        ck = torch.load(mp, map_location="cpu", weights_only=True)
        model = model_from_checkpoint(ck)
    except Exception as err:
        raise InputError(mp, f"not a deepmir model checkpoint (best.pt) ({err})") from None
    info = ck.get("info", {})
    st = load_stack(stack_path)
    names = st["meta"]["channels"]
    want = info.get("channels") or names
    missing = [c for c in want if c not in names]
    if missing:
        raise InputError(stack_path, f"stack lacks channel(s) {missing} the model was trained on")
    if len(want) * (2 * int(info.get("context", 0)) + 1) != model.config["in_channels"]:
        raise InputError(mp, "model input channels do not match its recorded channel names")
    f = 2 ** (model.config["depth"] - 1)
    if st["x"].shape[-1] % f:
        raise InputError(stack_path, f"slice size {st['x'].shape[-1]} not divisible by {f}")
    if batch_size < 1:
        raise InputError(stack_path, "--batch-size must be at least 1")
    x = st["x"][:, [names.index(c) for c in want]]
    if info.get("learner") == "patch":
        labels, probs = predict_patch_stack(model, info, x, st, device, batch_size, amp)
    else:
        labels, probs = predict_volume(
            model, x, st["meta"], model.config["n_classes"], device=device, batch_size=batch_size,
            class_value=int(info.get("class_value", 1)), threshold=threshold,
            mask=st["mask"].astype(bool) if mask else None, amp=amp)
    return labels, probs, st["affine"]

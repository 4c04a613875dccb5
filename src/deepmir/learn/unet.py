"""2D U-Net with padded convolutions (preprint supplement S2.1).

``depth`` resolutions (6 in the study: five analysis stages with 2×2 max-pooling, a central
block at 256/32 = 8 × 8, five synthesis stages). Every block is [3×3 conv (padding 1) →
BatchNorm → ReLU] × 2; synthesis stages up-sample with a 2×2 stride-2 transposed convolution
and concatenate the analysis features of the same resolution (taken before pooling). Widths
double per resolution from ``base_width`` (optionally capped at ``max_width``); the preprint
does not state them, 64 is the original U-Net's.

Head: a 1×1 convolution. ``n_classes == 1``: one logit, sigmoid / BCE-with-logits.
``n_classes > 1``: one logit per class {background, CMB, iron}, softmax / cross-entropy; the
preprint puts a ReLU between the 1×1 convolution and the softmax of the multi-class model
(``head_relu``, on by default for n_classes > 1). The module returns logits; use
:func:`probabilities` for probabilities.
"""
from __future__ import annotations

import torch
from torch import nn


def _relu(negative_slope: float) -> nn.Module:
    return nn.LeakyReLU(negative_slope, inplace=True) if negative_slope else nn.ReLU(inplace=True)


class ConvBlock(nn.Sequential):
    """[conv 3×3, padding 1 → BatchNorm → ReLU (leaky with ``negative_slope`` > 0)] × 2."""

    def __init__(self, c_in: int, c_out: int, negative_slope: float = 0.0):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), _relu(negative_slope),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), _relu(negative_slope),
        )


class UNet(nn.Module):
    def __init__(self, in_channels: int, n_classes: int, depth: int = 6, base_width: int = 64,
                 max_width: int | None = None, head_relu: bool | None = None, negative_slope: float = 0.0):
        super().__init__()
        if in_channels < 1 or n_classes < 1 or depth < 2 or base_width < 1:
            raise ValueError("UNet needs in_channels ≥ 1, n_classes ≥ 1, depth ≥ 2, base_width ≥ 1")
        self.config = dict(in_channels=int(in_channels), n_classes=int(n_classes), depth=int(depth),
                           base_width=int(base_width), max_width=max_width,
                           head_relu=bool(n_classes > 1 if head_relu is None else head_relu),
                           negative_slope=float(negative_slope))
        widths = [base_width * 2 ** i for i in range(depth)]
        if max_width is not None:
            widths = [min(w, int(max_width)) for w in widths]
        self.widths = widths
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths[:-1]:
            self.down.append(ConvBlock(c, w, negative_slope))
            c = w
        self.pool = nn.MaxPool2d(2)
        self.center = ConvBlock(c, widths[-1], negative_slope)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        c = widths[-1]
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(c, w, 2, stride=2))
            self.dec.append(ConvBlock(2 * w, w, negative_slope))
            c = w
        self.head = nn.Conv2d(c, n_classes, 1)
        self.head_act = nn.ReLU() if self.config["head_relu"] else nn.Identity()

    @property
    def n_classes(self) -> int:
        return self.config["n_classes"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = 2 ** (len(self.widths) - 1)
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"input H, W must be divisible by {f}, got {tuple(x.shape[-2:])}")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.center(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head_act(self.head(x))


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid of a single logit channel, softmax over classes otherwise."""
    logits = logits.float()
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def macs_per_slice(model: nn.Module, in_channels: int, height: int, width: int) -> int:
    """Multiply-accumulates of one forward pass on one ``in_channels × height × width`` slice,
    counting Conv2d (out elements × in/groups × kh × kw) and ConvTranspose2d (in elements ×
    out/groups × kh × kw). Runs the model on the meta device (no compute, no memory)."""
    total = 0

    def conv_hook(mod, inp, out):
        nonlocal total
        kh, kw = mod.kernel_size
        if isinstance(mod, nn.ConvTranspose2d):
            total += inp[0].numel() * (mod.out_channels // mod.groups) * kh * kw
        else:
            total += out.numel() * (mod.in_channels // mod.groups) * kh * kw

    tensors = {k: torch.empty_like(v, device="meta")
               for k, v in [*model.named_parameters(), *model.named_buffers()]}
    hooks = [m.register_forward_hook(conv_hook) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            torch.func.functional_call(model, tensors, (torch.empty(1, in_channels, height, width, device="meta"),))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return int(total)


def flops_per_slice(model: nn.Module, in_channels: int, height: int, width: int) -> int:
    """Forward FLOPs of one slice from the convolutions: 2 × :func:`macs_per_slice`
    (a training step costs about 3× this: forward + two backward products)."""
    return 2 * macs_per_slice(model, in_channels, height, width)

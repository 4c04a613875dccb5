"""A montage of one participant's raw data through a lesion: echo-1 and last-echo magnitude,
echo-1 phase, T2w (resampled onto the MEGRE grid) and the labels."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def resample_onto(moving, moving_affine, target_shape, target_affine, xfm=None, order=1):
    """``moving`` sampled on the target grid; ``xfm`` maps moving world → target world
    (x_target = xfm @ x_moving), identity when None."""
    xfm = np.eye(4) if xfm is None else np.asarray(xfm, float)
    m = np.linalg.inv(moving_affine) @ np.linalg.inv(xfm) @ target_affine
    return ndi.affine_transform(np.asarray(moving, np.float32), m[:3, :3], offset=m[:3, 3],
                                output_shape=tuple(target_shape), order=order, mode="constant")


def lesion_slice(labels, axis: int) -> int:
    """Index along ``axis`` through the largest labelled component (centre if none)."""
    if labels is None or not np.any(labels):
        return labels.shape[axis] // 2 if labels is not None else 0
    comp, n = ndi.label(labels > 0, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(comp.ravel())[1:]
    centre = ndi.center_of_mass(comp == (np.argmax(sizes) + 1))
    return int(round(centre[axis]))


def montage_figure(panels: list, labels, axis: int, index: int, title: str):
    """panels: list of (name, 3D array, (vmin, vmax) or None, cmap)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(panels) + (labels is not None)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.6), dpi=100)
    take = lambda a: np.rot90(np.take(a, index, axis=axis))
    for ax, (name, vol, lim, cmap) in zip(axes, panels):
        sl = take(vol)
        if lim is None:
            finite = sl[np.isfinite(sl)]
            lim = np.percentile(finite, [1, 99.5]) if finite.size else (0, 1)
        ax.imshow(sl, cmap=cmap, vmin=lim[0], vmax=lim[1], interpolation="nearest")
        ax.set_title(name, fontsize=9)
    if labels is not None:
        base = take(panels[0][1])
        ax = axes[-1]
        ax.imshow(base, cmap="gray", vmin=0, vmax=np.percentile(base, 99.5), interpolation="nearest")
        lab = take(labels).astype(float)
        ax.imshow(np.ma.masked_where(lab == 0, lab), cmap="autumn_r", vmin=1, vmax=2, alpha=0.8,
                  interpolation="nearest")
        ax.set_title("labels (1 CMB yellow, 2 iron red)", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig

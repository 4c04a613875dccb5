"""A montage of one participant's raw data through a lesion: echo-1 and last-echo magnitude,
echo-1 phase, T2w (resampled onto the MEGRE grid) and the labels."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


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


def census_figure(image, labels, table, axis: int, title: str, max_slices: int = 6):
    """Axial slices holding lesions, every lesion outlined and numbered as in the census."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ks = [int(round(v)) for v in table[["centroid_i", "centroid_j", "centroid_k"][axis]]] if len(table) else []
    order = sorted(set(ks), key=lambda k: -ks.count(k))[:max_slices] or [labels.shape[axis] // 2]
    order = sorted(order)
    fig, axes = plt.subplots(1, len(order), figsize=(3.4 * len(order), 3.8), dpi=100, squeeze=False)
    lim = np.percentile(image[np.isfinite(image)], [1, 99.5])
    other = [a for a in range(3) if a != axis]
    for ax, k in zip(axes[0], order):
        img = np.take(image, k, axis=axis)
        lab = np.take(labels, k, axis=axis)
        ax.imshow(np.rot90(img), cmap="gray", vmin=lim[0], vmax=lim[1], interpolation="nearest")
        for value, colour in ((1, "yellow"), (2, "red")):
            if np.any(lab == value):
                ax.contour(np.rot90(lab == value), levels=[0.5], colors=colour, linewidths=0.8)
        for row in table.itertuples():
            if int(round(getattr(row, ["centroid_i", "centroid_j", "centroid_k"][axis]))) != k:
                continue
            c = [getattr(row, n) for n in ("centroid_i", "centroid_j", "centroid_k")]
            # np.rot90 maps (r, c) of the slice to (W-1-c, r): label position in the image
            x, y = c[other[0]], img.shape[1] - 1 - c[other[1]]
            ax.annotate(str(row.lesion_id), (x, y), xytext=(x + 6, y - 6), color="cyan", fontsize=8,
                        arrowprops=dict(arrowstyle="-", color="cyan", lw=0.6))
        ax.set_title(f"slice {k}", fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig

"""QC figures (matplotlib, Agg): the registration and brain-mask overlays of the anatomical
stage, and the montage of one participant's raw data through a lesion (echo-1 and last-echo
magnitude, echo-1 phase, T2w resampled onto the MEGRE grid, the labels)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from deepmir import niio
from deepmir.geometry import voxel_sizes


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


# registration and brain-mask overlays (anatomical stage)
def _display_orient(arrays, affine):
    """Reorder arrays to the closest RAS axis order for display (if an affine is given);
    also returns the voxel sizes along the reordered axes (for the aspect ratio)."""
    if affine is None:
        return arrays, np.ones(3)
    import nibabel.orientations as no
    ornt = no.io_orientation(np.asarray(affine, float))
    vs = voxel_sizes(affine)[np.argsort(ornt[:, 0])]
    return [no.apply_orientation(np.asarray(a), ornt) for a in arrays], vs


def _center_slices(shape, ref=None):
    if ref is not None and np.any(ref):
        c = np.round(ndi.center_of_mass(np.asarray(ref, bool))).astype(int)
    else:
        c = np.array(shape) // 2
    return c


def _planes(vol, c):
    # sagittal (x fixed), coronal (y fixed), axial (z fixed); rotate so superior/anterior
    # are up in the figure
    return [np.rot90(vol[c[0], :, :]), np.rot90(vol[:, c[1], :]), np.rot90(vol[:, :, c[2]])]


def _aspects(vs):
    """imshow aspect (row / column spacing) of the three planes of ``_planes``."""
    return [vs[2] / vs[1], vs[2] / vs[0], vs[1] / vs[0]]


def _robust_limits(a):
    v = a[np.isfinite(a)]
    v = v[v > 0] if np.any(v > 0) else v
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(v, [1, 99.5])
    return float(lo), float(max(hi, lo + 1e-6))


def _edges(vol, pct=90.0):
    v = ndi.gaussian_filter(np.asarray(vol, dtype=np.float32), 1.0)
    g = np.sqrt(sum(ndi.sobel(v, axis=a) ** 2 for a in range(3)))
    nz = g[np.asarray(vol) > 0]
    thr = np.percentile(nz, pct) if nz.size else np.inf
    return g > thr


def _save_fig(fig, path):
    return niio.write_png(path, fig, dpi=100, bbox_inches="tight", facecolor="black")


def qc_registration_figure(gre_mag, moved, affine=None, title=None):
    """Figure: edges of the moved T1w/T2w (red) over the GRE magnitude, three planes."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    (gre_mag, moved), vs = _display_orient([gre_mag, moved], affine)
    edges = _edges(moved)
    c = _center_slices(gre_mag.shape, moved > 0)
    lo, hi = _robust_limits(gre_mag)
    fig = Figure(figsize=(12, 4.4))
    axes = fig.subplots(1, 3)
    for ax, g, e, asp in zip(axes, _planes(gre_mag, c), _planes(edges, c), _aspects(vs)):
        ax.imshow(g, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest", aspect=asp)
        rgba = np.zeros(e.shape + (4,))
        rgba[e] = (1.0, 0.15, 0.15, 0.9)
        ax.imshow(rgba, interpolation="nearest", aspect=asp)
        ax.axis("off")
    if title:
        fig.suptitle(title, color="white")
    return fig


def qc_registration_png(gre_mag, moved_t2, path, affine=None, title=None):
    """PNG: edges of the moved T2w (or T1w) over the GRE magnitude in three planes."""
    return _save_fig(qc_registration_figure(gre_mag, moved_t2, affine, title), path)


def qc_mask_figure(gre_mag, mask, affine=None, title=None):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    (gre_mag, mask), vs = _display_orient([gre_mag, np.asarray(mask, bool)], affine)
    c = _center_slices(gre_mag.shape, mask)
    lo, hi = _robust_limits(gre_mag)
    fig = Figure(figsize=(12, 4.4))
    axes = fig.subplots(1, 3)
    for ax, g, m, asp in zip(axes, _planes(gre_mag, c), _planes(mask.astype(float), c),
                             _aspects(vs)):
        ax.imshow(g, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest", aspect=asp)
        if m.any() and not m.all():
            ax.contour(m, levels=[0.5], colors=["#00ff66"], linewidths=1.0)
        ax.axis("off")
    if title:
        fig.suptitle(title, color="white")
    return fig


def qc_mask_png(gre_mag, mask, path, affine=None, title=None):
    """PNG: brain-mask contour over the GRE magnitude in three planes."""
    return _save_fig(qc_mask_figure(gre_mag, mask, affine, title), path)


# central slices of maps (QSM and SWI stages)
def central_slices_png(path, panels, title):
    """A row of central slices (axial, coronal, sagittal) for each named panel: ``panels`` lists
    (name, array, vmin, vmax, colormap); the QSM and SWI stages' QC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 3, figsize=(9, 3 * len(panels)), squeeze=False)
    for row, (name, arr, vmin, vmax, cmap) in enumerate(panels):
        c = [s // 2 for s in arr.shape]
        views = [arr[:, :, c[2]], arr[:, c[1], :], arr[c[0], :, :]]
        for col, v in enumerate(views):
            ax = axes[row, col]
            im = ax.imshow(np.rot90(v), vmin=vmin, vmax=vmax, cmap=cmap)
            ax.axis("off")
        axes[row, 0].set_title(name, loc="left", fontsize=9)
        fig.colorbar(im, ax=axes[row, 2], fraction=0.046)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        niio.write_png(path, fig, dpi=80)
    finally:
        plt.close(fig)

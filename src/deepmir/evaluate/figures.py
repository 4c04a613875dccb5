"""Figures of the study (matplotlib, Agg canvas, no pyplot state).

* :func:`joint_scatter` — sensitivity vs precision per participant with marginal
  histograms, one panel per (label mode, class) group, every modality set overlaid; round
  points = participants, X = the experiment's mean (coordinates in the legend). Figs 4, 5, S3.
* :func:`magnitude_histograms` — per-participant magnitude accuracy histograms per group,
  legend "modalities: mean ± SEM". Fig 6.
* :func:`overlay_png` — SWI / QSM / T2 slices with predicted (solid) and reference
  (dashed) lesion contours and mimic markers.

Each function returns ``(figure, axes)``; with ``path`` it also writes a PNG (atomically).
Participants whose sensitivity or precision is undefined (NaN) are left out of the scatter;
each marginal histogram uses every defined value of its measure.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import ndimage

from deepmir import niio
from deepmir.evaluate.tables import TABLE3_SECTIONS, TABLE_S31_SECTIONS, _order, modality_name

GROUP_TITLES = {(mode, cls): title for title, mode, cls in TABLE3_SECTIONS + TABLE_S31_SECTIONS}
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
          "tab:pink", "tab:gray")
SCORE_BINS = np.linspace(0.0, 1.0, 11)
MAGNITUDE_BINS = np.linspace(0.0, np.sqrt(2.0), 15)
CLASS_STYLE = {1: ("CMB", "red", "orange"), 2: ("iron", "lime", "cyan")}  # name, pred, ref
MIMIC_STYLE = {"vein": ("^", "deepskyblue"), "calcification": ("s", "white"),
               "epvs": ("D", "yellow")}


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure rendered as PNG bytes."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def write_png(fig: Figure, path, dpi: int = 100) -> Path:
    """Write the figure as PNG atomically (deepmir.niio)."""
    return niio.write_text(path, png_bytes(fig, dpi))


def placeholder(text: str = "no data", size=(5.0, 3.0)) -> Figure:
    """A figure that only says ``text`` (for outputs a workflow declares but has no data for)."""
    fig = Figure(figsize=size)
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12)
    ax.set_axis_off()
    return fig


def _groups(df: pd.DataFrame, groups) -> list[tuple[str, str]]:
    if groups is not None:
        return [tuple(g) for g in groups]
    present = set(zip(df["mode"], df["class"]))
    known = [(m, c) for _, m, c in TABLE3_SECTIONS + TABLE_S31_SECTIONS if (m, c) in present]
    return known + sorted(present - set(known))


def _finite(x) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    return x[np.isfinite(x)]


def _mean(x) -> float:
    x = _finite(x)
    return float(x.mean()) if x.size else float("nan")


def joint_scatter(df: pd.DataFrame, groups=None, path=None, baseline: str = "SWI"):
    """Sensitivity (x) vs precision (y) joint scatter with marginal histograms.

    ``df``: per-participant rows with mode, class, experiment, sensitivity, precision.
    ``groups``: (mode, class) pairs, one panel each (default: those present, Table 3 order).
    Returns ``(fig, axes)`` with ``axes[(mode, class)] = {"main", "top", "right"}``. In the
    main axes each experiment adds two collections, gid ``"<experiment>:participants"``
    (points of participants with both values) and ``"<experiment>:mean"`` (the X at the
    NaN-skipping means).
    """
    groups = _groups(df, groups)
    fig = Figure(figsize=(5.0 * max(1, len(groups)), 5.0))
    outer = fig.add_gridspec(1, max(1, len(groups)), wspace=0.3)
    axes = {}
    for g, (mode, cls) in enumerate(groups):
        inner = outer[g].subgridspec(2, 2, width_ratios=(4, 1), height_ratios=(1, 4),
                                     wspace=0.05, hspace=0.05)
        ax = fig.add_subplot(inner[1, 0])
        top = fig.add_subplot(inner[0, 0], sharex=ax)
        right = fig.add_subplot(inner[1, 1], sharey=ax)
        sub = df[(df["mode"] == mode) & (df["class"] == cls)]
        for i, exp in enumerate(_order(sub["experiment"], baseline)):
            e = sub[sub["experiment"] == exp]
            color = COLORS[i % len(COLORS)]
            s = e["sensitivity"].to_numpy(float)
            p = e["precision"].to_numpy(float)
            ok = np.isfinite(s) & np.isfinite(p)
            pts = ax.scatter(s[ok], p[ok], marker="o", color=color, alpha=0.6, s=25)
            pts.set_gid(f"{exp}:participants")
            ms, mp = _mean(s), _mean(p)
            mean = ax.scatter([ms], [mp], marker="x", color=color, s=90, linewidths=2.5,
                              label=f"{modality_name(exp, baseline)}: ({ms:.2f}, {mp:.2f})")
            mean.set_gid(f"{exp}:mean")
            top.hist(_finite(s), bins=SCORE_BINS, histtype="step", color=color)
            right.hist(_finite(p), bins=SCORE_BINS, histtype="step", color=color,
                       orientation="horizontal")
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("sensitivity")
        ax.set_ylabel("precision")
        ax.legend(loc="upper left", fontsize="x-small", title="mean (sens, prec)",
                  title_fontsize="x-small")
        top.tick_params(labelbottom=False)
        right.tick_params(labelleft=False)
        top.set_title(GROUP_TITLES.get((mode, cls), f"{mode} / {cls}"))
        axes[(mode, cls)] = {"main": ax, "top": top, "right": right}
    if path is not None:
        write_png(fig, path)
    return fig, axes


def magnitude_histograms(df: pd.DataFrame, groups=None, path=None, baseline: str = "SWI"):
    """Histograms of per-participant magnitude accuracy sqrt(sens² + prec²), one panel per
    (mode, class) group, one bar series per experiment (``ax.containers`` in the legend's
    order), bins of width √2/14 on [0, √2]; legend "modalities: mean ± SEM".
    Returns ``(fig, axes)`` with ``axes[(mode, class)]``.
    """
    from deepmir.evaluate.stats import magnitude_accuracy, mean_sem_ci

    groups = _groups(df, groups)
    n = max(1, len(groups))
    fig = Figure(figsize=(4.5 * n, 3.8))
    axs = fig.subplots(1, n, squeeze=False)[0]
    axes = {}
    for ax, (mode, cls) in zip(axs, groups):
        sub = df[(df["mode"] == mode) & (df["class"] == cls)]
        data, labels, colors = [], [], []
        for i, exp in enumerate(_order(sub["experiment"], baseline)):
            e = sub[sub["experiment"] == exp]
            ma = (e["magnitude_accuracy"].to_numpy(float) if "magnitude_accuracy" in e
                  else magnitude_accuracy(e["sensitivity"], e["precision"]))
            stat = mean_sem_ci(ma)
            data.append(_finite(ma))
            labels.append(f"{modality_name(exp, baseline)}: {stat['mean']:.2f} ± "
                          f"{stat['sem']:.2f}")
            colors.append(COLORS[i % len(COLORS)])
        if data:
            ax.hist(data, bins=MAGNITUDE_BINS, label=labels, color=colors)
            ax.legend(loc="upper left", fontsize="x-small")
        ax.set_xlim(0, np.sqrt(2.0))
        ax.set_xlabel("magnitude accuracy")
        ax.set_ylabel("participants")
        ax.set_title(GROUP_TITLES.get((mode, cls), f"{mode} / {cls}"))
        axes[(mode, cls)] = ax
    fig.tight_layout()
    if path is not None:
        write_png(fig, path)
    return fig, axes


def _window(img: np.ndarray, symmetric: bool = False) -> tuple[float, float]:
    """Grey-scale window: 1st–99th percentile, or ±(99th percentile of |x|) (QSM)."""
    v = img[np.isfinite(img)]
    if v.size == 0:
        return 0.0, 1.0
    if symmetric:
        h = float(np.percentile(np.abs(v[v != 0]) if np.any(v != 0) else [1.0], 99))
        return -h, h
    lo, hi = np.percentile(v, [1, 99])
    return (float(lo), float(hi)) if hi > lo else (float(v.min()), float(v.min()) + 1.0)


def _draw_panel(ax, img, pred, ref, mimics=None, symmetric=False):
    img = np.asarray(img, dtype=float)
    lo, hi = _window(img, symmetric)
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    for lab, (cname, cpred, cref) in CLASS_STYLE.items():
        for kind, vol, color, style in (("pred", pred, cpred, "solid"),
                                        ("ref", ref, cref, "dashed")):
            m = (vol == lab).astype(float)
            if 0 < m.sum() < m.size:
                cs = ax.contour(m, levels=[0.5], colors=[color], linestyles=style,
                                linewidths=1.2)
                cs.set_gid(f"{kind}:{lab}")
                # small lesions are a few voxels: ring each one so that it can be seen
                lab2d, n = ndimage.label(m > 0, structure=np.ones((3, 3)))
                cen = np.array(ndimage.center_of_mass(m, lab2d, range(1, n + 1)))
                ring = ax.scatter(cen[:, 1], cen[:, 0], s=140 if kind == "pred" else 260,
                                  facecolors="none", edgecolors=color, linewidths=1.0,
                                  linestyles=style)
                ring.set_gid(f"{kind}:{lab}:ring")
    for mclass, pts in (mimics or {}).items():
        pts, hit = _mimic_points(pts)
        marker, color = MIMIC_STYLE.get(mclass, ("o", "magenta"))
        for sel, face, tag in ((~hit, "none", ""), (hit, color, ":hit")):
            if sel.any():
                sc = ax.scatter(pts[sel, 1], pts[sel, 0], marker=marker, facecolors=face,
                                edgecolors=color, s=60, linewidths=1.5)
                sc.set_gid(f"mimic:{mclass}{tag}")
    ax.set_axis_off()


def _mimic_points(pts):
    """(points (N, 2), hit (N,) bool) from (row, col) or (row, col, hit) entries."""
    a = np.asarray(pts, dtype=float)
    if a.size == 0:
        return np.zeros((0, 2)), np.zeros(0, bool)
    a = a.reshape(len(a), -1)
    hit = a[:, 2] > 0 if a.shape[1] > 2 else np.zeros(len(a), bool)
    return a[:, :2], hit


def _legend(fig, mimic_classes):
    handles = []
    for lab, (cname, cpred, cref) in CLASS_STYLE.items():
        handles += [Line2D([], [], color=cpred, label=f"predicted {cname}"),
                    Line2D([], [], color=cref, linestyle="--", label=f"reference {cname}")]
    for mclass in mimic_classes:
        marker, color = MIMIC_STYLE.get(mclass, ("o", "magenta"))
        handles.append(Line2D([], [], marker=marker, color=color, linestyle="none",
                              markerfacecolor="none", label=f"{mclass} (rejected)"))
        handles.append(Line2D([], [], marker=marker, color=color, linestyle="none",
                              label=f"{mclass} (hit)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5),
               fontsize="x-small", frameon=False)


def overlay_png(slices: dict, pred, ref, mimics=None, path=None, title: str | None = None):
    """One panel per entry of ``slices`` (name -> 2D image, e.g. SWI, QSM, T2), each with the
    contours of the predicted labels (solid; CMB red, iron lime) and reference labels
    (dashed; CMB orange, iron cyan) and mimic markers.

    ``pred``, ``ref``: 2D label slices (0/1/2) of the images' shape. ``mimics``: mapping
    mimic class (vein, calcification, epvs) -> sequence of (row, col) or (row, col, hit)
    points; hit mimics (a predicted lesion fell on them) are filled markers, rejected ones
    open. Images are drawn as given (row downwards, column to the right). Writes a PNG at
    ``path`` when given; returns ``(fig, axes)``. In each axes the contour sets carry gid
    ``"pred:<label>"`` / ``"ref:<label>"``, the rings around each lesion (inner solid =
    predicted, outer dashed = reference) ``"pred:<label>:ring"`` / ``"ref:<label>:ring"``
    and the markers ``"mimic:<class>"`` (rejected) or ``"mimic:<class>:hit"``.
    """
    if not slices:
        raise ValueError("no slices to show")
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    shape = next(iter(slices.values())).shape
    for name, img in [*slices.items(), ("pred", pred), ("ref", ref)]:
        if np.shape(img) != shape or len(shape) != 2:
            raise ValueError(f"{name}: shape {np.shape(img)} differs from {shape} or is not 2D")
    fig = Figure(figsize=(4.0 * len(slices), 4.4))
    axs = fig.subplots(1, len(slices), squeeze=False)[0]
    for ax, (name, img) in zip(axs, slices.items()):
        _draw_panel(ax, img, pred, ref, mimics, symmetric=name.upper() == "QSM")
        ax.set_title(name)
    _legend(fig, list(mimics or {}))
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.88, bottom=0.12, wspace=0.05)
    if path is not None:
        write_png(fig, path)
    return fig, list(axs)


def pick_slices(pred, ref, mimic_status=None, axis: int = 2, n: int = 3) -> list[int]:
    """Up to ``n`` slice indices along ``axis`` that show the most lesions: each slice is
    scored by the reference lesions (weight 2), predicted lesions and mimic components whose
    voxels it cuts; ties go to the lower index. No lesion at all: the middle slice."""
    from deepmir.lesions import components

    pred = np.asarray(pred)
    ref = np.asarray(ref)
    score = np.zeros(pred.shape[axis])
    for vol, w in ((ref, 2.0), (pred, 1.0)):
        c = components(vol, (1, 2))
        for k in range(c.n):
            hit = np.nonzero(np.any(np.moveaxis(c.labels == k + 1, axis, 0), axis=(1, 2)))[0]
            score[hit] += w
    if mimic_status is not None and len(mimic_status):
        col = ("centroid_i", "centroid_j", "centroid_k")[axis]
        for v in np.rint(mimic_status[col].to_numpy(float)).astype(int):
            score[np.clip(v, 0, len(score) - 1)] += 1.0
    if not score.any():
        return [pred.shape[axis] // 2]
    order = sorted(np.nonzero(score)[0], key=lambda k: (-score[k], k))
    return sorted(int(k) for k in order[:n])


def overlay_volume(images: dict, pred, ref, mimic_status=None, axis: int = 2, n_slices: int = 3,
                   path=None, title: str | None = None):
    """Figures 1, 7, 8: rows = the slices of :func:`pick_slices`, columns = ``images``
    (name -> 3D volume on the label grid, e.g. SWI, QSM, T2), with predicted (solid) and
    reference (dashed) contours and the mimics of ``mimic_status``
    (``deepmir.evaluate.metrics.mimic_status``: filled = hit, open = rejected) within one slice of
    the row. An image named QSM gets a window symmetric about 0. Returns ``(fig, axes)``,
    axes an array rows × columns; writes ``path``."""
    if not images:
        raise ValueError("no images to show")
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    for name, img in [*images.items(), ("ref", ref)]:
        if np.shape(img) != pred.shape or pred.ndim != 3:
            raise ValueError(f"{name}: shape {np.shape(img)} differs from {pred.shape} or is not 3D")
    ks = pick_slices(pred, ref, mimic_status, axis, n_slices)
    cols = len(images)
    fig = Figure(figsize=(3.2 * cols, 3.2 * len(ks) + 0.9))
    axs = fig.subplots(len(ks), cols, squeeze=False)
    others = [a for a in range(3) if a != axis]
    names = ("centroid_i", "centroid_j", "centroid_k")
    mclasses = []
    for r, k in enumerate(ks):
        mimics = {}
        if mimic_status is not None and len(mimic_status):
            near = mimic_status[np.abs(mimic_status[names[axis]] - k) <= 1.0]
            for mclass, g in near.groupby("mimic", sort=False):
                mimics[mclass] = np.c_[g[names[others[0]]], g[names[others[1]]], g["hit"]]
            mclasses += [m for m in mimic_status["mimic"].unique() if m not in mclasses]
        for c, (name, img) in enumerate(images.items()):
            ax = axs[r, c]
            _draw_panel(ax, np.take(np.asarray(img, float), k, axis),
                        np.take(pred, k, axis), np.take(ref, k, axis), mimics,
                        symmetric=name.upper() == "QSM")
            ax.set_title(f"{name}, slice {k}", fontsize="small")
    _legend(fig, mclasses)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.5 / fig.get_figheight(),
                        bottom=0.8 / fig.get_figheight(), wspace=0.04, hspace=0.12)
    if path is not None:
        write_png(fig, path)
    return fig, axs

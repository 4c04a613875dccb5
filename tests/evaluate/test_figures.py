"""Figures show the data they are given (checked on the matplotlib objects, not pixels)."""

import numpy as np
import pandas as pd
import pytest

from deepmir.evaluate import figures
from deepmir.evaluate.metrics import mimic_status


def per_participant():
    rows = []
    for exp, sens, prec in (("SWI", [1.0, 0.5, np.nan, 0.0], [0.5, 1.0, 0.2, np.nan]),
                            ("SWI+QSM", [1.0, 1.0, 0.5, 0.5], [1.0, 0.5, 0.5, 1.0])):
        for i, (s, p) in enumerate(zip(sens, prec)):
            rows.append({"participant": f"sub-{i}", "experiment": exp, "mode": "cmb",
                         "class": "cmb", "sensitivity": s, "precision": p})
    return pd.DataFrame(rows)


def by_gid(ax):
    return {c.get_gid(): c for c in ax.collections if c.get_gid()}


def test_joint_scatter_points_and_means():
    df = per_participant()
    fig, axes = figures.joint_scatter(df)
    assert list(axes) == [("cmb", "cmb")]
    main = by_gid(axes[("cmb", "cmb")]["main"])
    # SWI: only participants with both values (sub-0, sub-1)
    np.testing.assert_allclose(main["SWI:participants"].get_offsets(), [[1.0, 0.5], [0.5, 1.0]])
    np.testing.assert_allclose(main["SWI+QSM:participants"].get_offsets(),
                               [[1, 1], [1, .5], [.5, .5], [.5, 1]])
    # mean X: NaN-skipping means over each measure
    np.testing.assert_allclose(main["SWI:mean"].get_offsets(), [[0.5, (0.5 + 1 + 0.2) / 3]])
    texts = [t.get_text() for t in axes[("cmb", "cmb")]["main"].get_legend().get_texts()]
    assert texts[0].startswith("SWI (baseline)") and texts[1].startswith("SWI and QSM")
    # marginal histograms: 3 defined sensitivities for SWI, 4 for SWI+QSM
    top = axes[("cmb", "cmb")]["top"]
    assert len(top.patches) == 2
    assert len(figures.png_bytes(fig)) > 1000


def test_magnitude_histograms_counts_and_legend():
    df = per_participant()
    fig, axes = figures.magnitude_histograms(df)
    ax = axes[("cmb", "cmb")]
    counts = [sum(p.get_height() for p in c) for c in ax.containers]
    assert counts == [2, 4]  # per-participant MA defined for 2 SWI and 4 SWI+QSM participants
    label = ax.get_legend().get_texts()[1].get_text()
    ma = np.hypot([1, 1, .5, .5], [1, .5, .5, 1])
    assert label == f"SWI and QSM: {ma.mean():.2f} ± {ma.std(ddof=1) / 2:.2f}"


def test_overlay_png_contours_and_mimics(tmp_path):
    img = np.random.default_rng(0).normal(size=(20, 20))
    pred = np.zeros((20, 20), np.uint8)
    ref = np.zeros((20, 20), np.uint8)
    pred[4:6, 4:6] = 1
    ref[4:7, 4:7] = 1
    ref[12:14, 12:14] = 2
    fig, axs = figures.overlay_png({"SWI": img, "QSM": img}, pred, ref,
                                   {"vein": [(10, 3, 1), (2, 15, 0)]}, path=tmp_path / "o.png")
    gids = by_gid(axs[0])
    assert {"pred:1", "ref:1", "ref:2", "mimic:vein", "mimic:vein:hit", "pred:1:ring"} <= set(gids)
    np.testing.assert_allclose(gids["ref:1:ring"].get_offsets(), [[5, 5]])
    np.testing.assert_allclose(gids["ref:2:ring"].get_offsets(), [[12.5, 12.5]])
    assert "pred:2" not in gids
    np.testing.assert_allclose(gids["mimic:vein:hit"].get_offsets(), [[3, 10]])
    assert (tmp_path / "o.png").stat().st_size > 1000
    with pytest.raises(ValueError):
        figures.overlay_png({"SWI": img}, pred[:10], ref)


def test_overlay_volume_picks_lesion_slices():
    shape = (16, 16, 12)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    ref[4, 4, 3] = 1
    ref[10, 10, 3] = 2
    ref[8, 8, 9] = 1
    pred[4, 4, 3] = 1
    pred[2, 12, 6] = 1
    mimic = np.zeros(shape, np.int16)
    mimic[2, 12, 6] = 5
    status = mimic_status(pred, mimic, {5: "calcification"})
    assert list(status["hit"]) == [True]
    # scores: slice 3 = 2 + 2 + 1, slice 6 = 1 + 1 (mimic), slice 9 = 2; ties -> lower index
    assert figures.pick_slices(pred, ref, status, axis=2, n=2) == [3, 6]
    assert figures.pick_slices(pred, ref, None, axis=2, n=2) == [3, 9]
    assert figures.pick_slices(np.zeros(shape), np.zeros(shape)) == [6]
    img = np.random.default_rng(1).normal(size=shape)
    fig, axs = figures.overlay_volume({"SWI": img, "QSM": img, "T2": img}, pred, ref, status,
                                      n_slices=3)
    assert axs.shape == (3, 3)
    assert [a.get_title() for a in axs[:, 0]] == ["SWI, slice 3", "SWI, slice 6", "SWI, slice 9"]
    assert "mimic:calcification:hit" in by_gid(axs[1, 0])


def test_placeholder():
    fig = figures.placeholder("no data")
    assert fig.axes[0].texts[0].get_text() == "no data"

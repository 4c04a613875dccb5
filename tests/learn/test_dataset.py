import numpy as np
import pytest

from deepmir.learn.dataset import class_value, label_mode, make_stack, n_classes_for, slices_with_label, unstack, zscore


def test_label_modes():
    lab = np.array([[0, 1, 2, 3, 1, 2]])
    assert label_mode(lab, "cmb").tolist() == [[0, 1, 0, 0, 1, 0]]
    assert label_mode(lab, "iron").tolist() == [[0, 0, 1, 0, 0, 1]]
    assert label_mode(lab, "union").tolist() == [[0, 1, 1, 0, 1, 1]]
    assert label_mode(lab, "multiclass").tolist() == [[0, 1, 2, 0, 1, 2]]
    assert label_mode(lab, "cmb").dtype == np.uint8
    with pytest.raises(ValueError):
        label_mode(lab, "both")
    assert [n_classes_for(m) for m in ("cmb", "iron", "union", "multiclass")] == [1, 1, 1, 3]
    assert [class_value(m) for m in ("cmb", "iron", "union")] == [1, 2, 1]


def test_zscore_inside_mask_hand_values():
    vol = np.array([1.0, 2.0, 3.0, 4.0, 100.0, -7.0]).reshape(1, 2, 3)
    mask = np.array([1, 1, 1, 1, 0, 0], bool).reshape(1, 2, 3)
    z = zscore(vol, mask)
    sd = np.sqrt(1.25)  # values 1..4: mean 2.5, population variance 1.25
    assert np.allclose(z.ravel(), [-1.5 / sd, -0.5 / sd, 0.5 / sd, 1.5 / sd, 0, 0])
    assert z.dtype == np.float32
    with pytest.raises(ValueError):
        zscore(vol, np.zeros_like(mask))


def test_qsm_channel_clipped_at_5_sigma_others_not():
    v = np.zeros(101)
    v[:50], v[50:100], v[100] = 1.0, -1.0, 100.0  # one outlier
    vol = v.reshape(1, 1, 101)
    mask = np.ones_like(vol, bool)
    s = v.std()  # ≈ 10.05
    clipped = np.clip(v, -5 * s, 5 * s)
    assert clipped[100] < 100  # the outlier is truncated, the rest untouched
    exp_qsm = (clipped - clipped.mean()) / clipped.std()
    exp_swi = (v - v.mean()) / v.std()
    x, _, _ = make_stack({"SWI": vol, "QSM": vol}, mask, None, axial_axis=0, pad_to=104, qsm_clip_sigma=5.0)
    # axial axis 0 → one slice of 1 × 101, padded into 104 × 104 at row 51, columns 1..101
    assert np.allclose(x[0, 0, 51, 1:102], exp_swi, atol=1e-6)
    assert np.allclose(x[0, 1, 51, 1:102], exp_qsm, atol=1e-6)
    x2, _, _ = make_stack({"SWI": vol, "QSM": vol}, mask, None, axial_axis=0, pad_to=104, qsm_clip_sigma=None)
    assert np.allclose(x2[0, 1], x2[0, 0])


def test_stack_layout_padding_and_labels():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(5, 7, 3))
    mask = np.ones((5, 7, 3), bool)
    mask[0, 0, 0] = False
    lab = rng.integers(0, 3, size=(5, 7, 3))
    x, y, meta = make_stack({"SWI": vol}, mask, lab, axial_axis=2, pad_to=8)
    assert x.shape == (3, 1, 8, 8) and x.dtype == np.float32
    assert y.shape == (3, 8, 8) and y.dtype == np.uint8
    z = zscore(vol, mask)
    for s in range(3):  # H = 5 → rows 1..5 (pad 1 before, 2 after); W = 7 → columns 0..6
        assert np.array_equal(x[s, 0, 1:6, 0:7], z[:, :, s])
        assert np.array_equal(y[s, 1:6, 0:7], lab[:, :, s])
    assert not x[:, :, 0].any() and not x[:, :, 6:].any() and not x[:, :, :, 7].any()
    assert not y[:, 0].any() and not y[:, 6:].any()
    assert meta["cropped"] is False and meta["flip_dim"] == -2 and meta["channels"] == ["SWI"]
    assert meta["stack_start"] == [1, 0] and meta["orig_start"] == [0, 0] and meta["length"] == [5, 7]


def test_stack_crops_when_larger_and_records_it():
    vol = np.arange(10 * 4 * 2, dtype=float).reshape(10, 4, 2)
    mask = np.ones(vol.shape, bool)
    x, _, meta = make_stack({"T2": vol}, mask, None, axial_axis=2, pad_to=8)
    assert meta["cropped"] is True
    assert meta["orig_start"] == [1, 0] and meta["stack_start"] == [0, 2] and meta["length"] == [8, 4]
    z = zscore(vol, mask)
    assert np.array_equal(x[1, 0, :, 2:6], z[1:9, :, 1])


def test_round_trip_labels_and_probabilities():
    rng = np.random.default_rng(1)
    shape = (9, 6, 11)
    for axial in (0, 1, 2):
        lab = rng.integers(0, 3, size=shape).astype(np.uint8)
        mask = np.ones(shape, bool)
        _, y, meta = make_stack({"SWI": rng.normal(size=shape)}, mask, lab, axial_axis=axial, pad_to=12)
        back = unstack(y, meta)
        assert back.dtype == np.uint8 and np.array_equal(back, lab)
        # probabilities [S, K, H, W] → original grid + class axis
        probs = rng.random(size=shape + (3,)).astype(np.float32)
        s_probs = np.zeros((shape[axial], 3, 12, 12), np.float32)
        _, (sh, sw), (lh, lw) = meta["orig_start"], meta["stack_start"], meta["length"]
        for k in range(3):
            s_probs[:, k, sh:sh + lh, sw:sw + lw] = np.moveaxis(probs[..., k], axial, 0)
        back_p = unstack(s_probs, meta)
        assert back_p.shape == shape + (3,) and np.array_equal(back_p, probs)


def test_round_trip_with_crop_fills_outside():
    shape = (4, 10, 3)
    lab = np.ones(shape, np.uint8)
    _, y, meta = make_stack({"SWI": np.random.default_rng(2).normal(size=shape)}, np.ones(shape, bool), lab,
                            axial_axis=0, pad_to=8)
    back = unstack(y, meta)
    assert back[:, 1:9].all() and not back[:, 0].any() and not back[:, 9].any()
    with pytest.raises(ValueError):
        unstack(y[:2], meta)


def test_lr_axis_and_brain_slices_and_bad_shapes():
    shape = (6, 4, 5)
    mask = np.zeros(shape, bool)
    mask[:, 1:3, 2:4] = True
    _, _, meta = make_stack({"SWI": np.ones(shape)}, mask, None, axial_axis=0, pad_to=8, lr_axis=2)
    assert meta["flip_dim"] == -1
    _, _, meta = make_stack({"SWI": np.ones(shape)}, mask, None, axial_axis=2, pad_to=8)
    assert meta["brain_slices"] == [2, 3] and meta["flip_dim"] == -2
    with pytest.raises(ValueError):
        make_stack({"SWI": np.ones((6, 4, 4))}, mask, None, axial_axis=2)
    with pytest.raises(ValueError):
        make_stack({"SWI": np.ones(shape)}, mask, np.zeros((6, 4, 4)), axial_axis=2)
    y = np.zeros((3, 2, 2))
    y[1, 0, 1] = 2
    assert slices_with_label(y).tolist() == [False, True, False]

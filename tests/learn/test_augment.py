import math

import numpy as np
import pytest
import torch

from deepmir.learn.augment import AugmentConfig, Plan, make_plan, render

H = W = 32
R0, C0 = 6, 11  # centre of the 3×3 dot


def dot_stack():
    """One slice, two channels: a bright 3×3 dot (10 in channel 0, 5 in channel 1) on a faint
    ramp, and its label (1) — the ramp makes every pixel distinct except the dot's."""
    ramp = torch.arange(H * W, dtype=torch.float32).reshape(H, W) / (H * W)
    x = torch.stack([ramp, -ramp])[None].clone()
    x[0, 0, R0 - 1:R0 + 2, C0 - 1:C0 + 2] = 10
    x[0, 1, R0 - 1:R0 + 2, C0 - 1:C0 + 2] = 5
    y = torch.zeros(1, H, W, dtype=torch.uint8)
    y[0, R0 - 1:R0 + 2, C0 - 1:C0 + 2] = 1
    return x, y


def one(x, y, params, flip_dim=-2):
    xb, yb = render(x, y, [0], [params], flip_dim)
    return xb[0].numpy(), yb[0].numpy()


def test_identity_row_is_exact_copy():
    x, y = dot_stack()
    xb, yb = one(x, y, [0, 0, 0, 0])
    assert np.array_equal(xb, x[0].numpy()) and np.array_equal(yb, y[0].numpy())


@pytest.mark.parametrize("tx,ty", [(3, -2), (-5, 7), (45, 0), (0, -4)])
def test_translation_moves_dot_and_label_together(tx, ty):
    x, y = dot_stack()
    xb, yb = one(x, y, [tx, ty, 0, 0])
    exp_lab = np.zeros((H, W), np.int64)
    r0, c0 = R0 + ty, C0 + tx
    if 1 <= r0 < H - 1 and 1 <= c0 < W - 1:
        exp_lab[r0 - 1:r0 + 2, c0 - 1:c0 + 2] = 1
        assert np.array_equal(yb, exp_lab)
        # image: the same dot, moved by exactly (ty, tx)
        assert np.allclose(xb[0][r0 - 1:r0 + 2, c0 - 1:c0 + 2], 10, atol=1e-4)
        assert np.allclose(xb[1][r0 - 1:r0 + 2, c0 - 1:c0 + 2], 5, atol=1e-4)
        assert xb[0][exp_lab == 0].max() < 1.01 and xb[1][exp_lab == 0].max() < 1e-4  # no dot elsewhere
    else:  # the dot left the slice; so did its label
        assert yb.sum() == 0 and xb[0].max() < 1.01


def test_translation_interior_equals_shifted_array():
    x, y = dot_stack()
    xb, _ = one(x, y, [4, 3, 0, 0])
    # out[i, j] = in[i - 3, j - 4] inside; border (edge) padding outside
    assert np.allclose(xb[:, 3:, 4:], x[0, :, :-3, :-4].numpy(), atol=1e-5)
    assert np.allclose(xb[:, :3, 4:], x[0, :, :1, :-4].numpy(), atol=1e-5)  # edge rows replicated


def test_rotation_by_90_is_a_permutation():
    x, y = dot_stack()
    xb, yb = one(x, y, [0, 0, 90, 0])
    assert np.array_equal(yb, np.rot90(y[0].numpy(), -1))
    assert np.allclose(xb, np.rot90(x[0].numpy(), -1, axes=(1, 2)), atol=1e-4)


@pytest.mark.parametrize("angle", [1, 17, -30, 45, -60])
def test_rotation_moves_dot_and_label_together(angle):
    x, y = dot_stack()
    xb, yb = one(x, y, [0, 0, angle, 0])
    c = (W - 1) / 2
    a = math.radians(angle)
    dx, dy = C0 - c, R0 - c
    exp_c = c + math.cos(a) * dx - math.sin(a) * dy
    exp_r = c + math.sin(a) * dx + math.cos(a) * dy
    r, cc = np.nonzero(yb)
    assert 7 <= len(r) <= 11  # a 3×3 dot stays about 9 voxels under nearest sampling
    assert abs(r.mean() - exp_r) < 0.5 and abs(cc.mean() - exp_c) < 0.5
    for ch in (0, 1):
        pr, pc = np.unravel_index(np.argmax(xb[ch]), (H, W))
        assert yb[pr, pc] == 1  # the brightest pixel of each channel lies under the label
    assert np.isclose(xb[0].max(), 10, atol=1e-3) and np.isclose(xb[1].max(), 5, atol=1e-3)


@pytest.mark.parametrize("flip_dim", [-2, -1])
def test_flip_mirrors_dot_and_label(flip_dim):
    x, y = dot_stack()
    xb, yb = one(x, y, [0, 0, 0, 1], flip_dim)
    assert np.array_equal(yb, np.flip(y[0].numpy(), axis=flip_dim))
    assert np.allclose(xb, np.flip(x[0].numpy(), axis=flip_dim), atol=1e-5)
    r, c = np.nonzero(yb)
    if flip_dim == -2:
        assert r.mean() == H - 1 - R0 and c.mean() == C0
    else:
        assert r.mean() == R0 and c.mean() == W - 1 - C0


def test_mixed_batch_renders_each_row_with_its_own_transform():
    x, y = dot_stack()
    x2 = torch.cat([x, x.flip(-1)])
    y2 = torch.cat([y, y.flip(-1)])
    xb, yb = render(x2, y2, [1, 0, 0], [[0, 0, 0, 0], [2, 1, 0, 0], [0, 0, 0, 1]], -1)
    assert torch.equal(yb[0], y2[1].long())
    assert yb[1, R0 + 1, C0 + 2] == 1 and yb[1].sum() == 9
    assert torch.equal(yb[2], y[0].flip(-1).long())


def test_plan_counts_and_ranges():
    has = np.zeros(40, bool)
    has[[3, 4, 20]] = True
    eligible = np.ones(40, bool)
    eligible[30:] = False
    cfg = AugmentConfig()
    assert cfg.per_slice == 1 + 6 + 12 + 1 == 20
    assert AugmentConfig.multi_class().per_slice == 1 + 10 + 32 + 1 == 44
    plan = make_plan(has, cfg, seed=5, eligible=eligible)
    assert len(plan) == 3 * 20 + 3 * 20
    src = plan.index.reshape(-1, 20)[:, 0]
    assert list(src[:3]) == [3, 4, 20]
    unl = src[3:]
    assert len(set(unl)) == 3 and not has[unl].any() and eligible[unl].all()
    p = plan.params.reshape(-1, 20, 4)
    assert np.all(p[:, 0] == 0)                                   # original
    tr = p[:, 1:7]
    assert np.all(np.abs(tr[..., :2]) <= 45) and np.all(tr[..., 2:] == 0)
    assert np.array_equal(tr[..., :2], np.round(tr[..., :2]))     # integer shifts
    rot = p[:, 7:19, 2]
    assert np.all(rot[:, 0::2] == -rot[:, 1::2])                  # ±d pairs
    assert np.all((np.abs(rot) >= 1) & (np.abs(rot) <= 60))
    assert np.all(p[:, 7:19, [0, 1, 3]] == 0)
    assert np.all(p[:, 19] == [0, 0, 0, 1])                       # flip


def test_plan_is_seeded():
    has = np.arange(50) % 7 == 0
    a, b = make_plan(has, AugmentConfig(), seed=1), make_plan(has, AugmentConfig(), seed=1)
    c = make_plan(has, AugmentConfig(), seed=2)
    assert np.array_equal(a.index, b.index) and np.array_equal(a.params, b.params)
    assert not np.array_equal(a.params, c.params)


def test_plan_scaled_down_and_short_of_unlabelled():
    has = np.array([1, 1, 1, 0], bool)
    cfg = AugmentConfig(n_translations=1, n_rotations=1, flip=False, include_original=False)
    plan = make_plan(has, cfg, seed=0)
    assert cfg.per_slice == 3
    assert list(plan.index) == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3  # only one unlabelled slice exists
    assert len(make_plan(np.zeros(5, bool), cfg, seed=0)) == 0
    ident = Plan.identity([2, 0])
    assert list(ident.index) == [2, 0] and not ident.params.any()

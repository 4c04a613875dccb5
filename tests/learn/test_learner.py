"""The patch learner (deepmir.learn.learner, patches, postprocess) on tiny synthetic volumes with
known lesions: it learns, it is deterministic, it resumes bit-identically, it never resumes a
checkpoint made from other data, and its selection reads only the validation volumes."""
import json

import numpy as np
import pytest
import torch

from deepmir.evaluate.metrics import participant_metrics
from deepmir.learn import postprocess as pp
from deepmir.learn.learner import LearnerConfig, dice_ce_loss, lr_at, min_size_caps, train_patches, volume_probs
from deepmir.learn.patches import (
    BLUR_SIGMA,
    BRIGHTNESS,
    PatchSampler,
    SamplerConfig,
    context_slices,
    crop,
    false_positive_centres,
    find_lesions,
    intensity_augment,
    lesion_weights,
)

S, H = 8, 48


pytestmark = pytest.mark.usefixtures("one_thread")


def ball(shape, centre, r):
    z, y, x = np.indices(shape)
    # slices are 2 voxels thick in this toy: a ball of radius r mm covers few slices
    return ((z - centre[0]) * 2.0) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= r * r


def volume(seed, n_cmb=4, n_iron=2, n_calc=2):
    """SWI and QSM channels [S, 2, H, H] with CMBs (dark SWI, bright QSM), iron deposits
    (milder, larger) and calcifications (dark SWI, *negative* QSM: unlabelled mimics)."""
    rng = np.random.default_rng(seed)
    swi = rng.normal(0, 0.15, (S, H, H)).astype(np.float32)
    qsm = rng.normal(0, 0.15, (S, H, H)).astype(np.float32)
    y = np.zeros((S, H, H), np.uint8)
    brain = np.zeros((S, H, H), bool)
    brain[:, 4:H - 4, 4:H - 4] = True
    taken = []
    for kind, n in (("cmb", n_cmb), ("iron", n_iron), ("calc", n_calc)):
        for _ in range(n):
            while True:
                c = (int(rng.integers(2, S - 2)), int(rng.integers(9, H - 9)), int(rng.integers(9, H - 9)))
                if all(abs(c[1] - t[1]) + abs(c[2] - t[2]) > 12 or abs(c[0] - t[0]) > 3 for t in taken):
                    break
            taken.append(c)
            m = ball(y.shape, c, 2.0 if kind != "iron" else 3.5)
            swi[m] -= {"cmb": 3.0, "iron": 1.5, "calc": 3.0}[kind]
            qsm[m] += {"cmb": 3.0, "iron": 1.5, "calc": -3.0}[kind]
            if kind != "calc":
                y[m] = 1 if kind == "cmb" else 2
    x = np.stack([swi, qsm], 1) * brain[:, None]
    return {"x": x.astype(np.float32), "y": y, "brain": brain, "voxel_size": (2.0, 1.0, 1.0)}


CFG = dict(iterations=150, batch_size=8, lr=0.005, patch_size=32, depth=3, base_width=8, val_every=50,
           checkpoint_every=25, log_every=25, mine_every=25, mine_slices=4, warmup=5)


def test_context_crop_and_lesion_index():
    x = np.arange(4 * 1 * 2 * 2, dtype=np.float32).reshape(4, 1, 2, 2) + 1
    c = context_slices(x, [0, 3], 1)
    assert c.shape == (2, 3, 2, 2)
    assert (c[0, 0] == 0).all() and (c[0, 1] == x[0, 0]).all() and (c[0, 2] == x[1, 0]).all()
    assert (c[1, 2] == 0).all() and (c[1, 0] == x[2, 0]).all()
    a = np.arange(16).reshape(4, 4)
    p = crop(a, (0, 0), 4)                      # top-left quarter in the bottom-right corner
    assert (p[2:, 2:] == a[:2, :2]).all() and (p[:2] == 0).all()
    y = np.zeros((3, 8, 8), np.uint8)
    y[0, 1, 1] = y[1, 2, 2] = 1                 # diagonal neighbours: one 26-connected CMB
    y[2, 6:8, 6:8] = 2
    les = find_lesions([y])
    assert sorted((l.cls, len(l.voxels)) for l in les) == [(1, 2), (2, 4)]


def test_sampler_oversamples_lesions_balanced_between_classes():
    vols = [volume(1, n_cmb=6, n_iron=1)]
    s = PatchSampler(vols, SamplerConfig(patch_size=16, context=1, fg_fraction=0.5, hard_fraction=0.25))
    rng = np.random.default_rng(0)
    hits = {1: 0, 2: 0}
    for _ in range(50):
        for v, sl, r, c in s.centres(rng, 8, hard_on=False)[:4]:
            lab = vols[v]["y"][sl, max(r - 4, 0):r + 5, max(c - 4, 0):c + 5]
            for k in hits:
                hits[k] += bool((lab == k).any())
    # 6 CMBs and one iron deposit, yet about as many patches on each class
    assert min(hits.values()) > 0.35 * sum(hits.values())
    x, y, w = s.batch(np.random.default_rng(3), 8)
    assert x.shape == (8, 6, 16, 16) and y.shape == w.shape == (8, 16, 16)
    x2, y2, w2 = s.batch(np.random.default_rng(3), 8)
    assert np.array_equal(x, x2) and np.array_equal(y, y2) and np.array_equal(w, w2)
    assert np.isin(w[y == 0], (0, 1)).all() and (w[y > 0] > 0).all()   # 0: beyond the volume
    s.add_hard(0, np.array([[1, 10, 10], [2, 20, 20]]), capacity=1)
    assert s.hard == [(0, 2, 20, 20)]
    assert all(c == (0, 2, 20, 20) for c in s.centres(rng, 8, hard_on=True)[4:6])


def test_intensity_augmentation_varies_each_modality_alike_on_its_context_slices():
    """A one-voxel spike in both modalities of a 3-slice, 2-modality patch: a blur lowers it by
    the factor a discrete Gaussian of σ in BLUR_SIGMA gives (1/(2πσ²) ≤ peak ≤ that of σ 0.5),
    equally on the three context slices of a modality; a brightness factor scales a modality
    within BRIGHTNESS; probabilities 0 leave the patch untouched."""
    xb = np.zeros((6, 15, 15), np.float32)
    xb[:, 7, 7] = 1.0                                        # channels: (slice, modality) pairs
    assert np.array_equal(intensity_augment(xb, 2, np.random.default_rng(0), 0.0, 0.0), xb)
    for seed in range(5):
        out = intensity_augment(xb, 2, np.random.default_rng(seed), 1.0, 0.0)
        assert xb[:, 7, 7].tolist() == [1.0] * 6            # the input is not changed in place
        for m in range(2):
            peaks = out[m::2, 7, 7]
            assert np.ptp(peaks) == 0
            assert 1 / (2 * np.pi * BLUR_SIGMA[1] ** 2) <= peaks[0] <= 0.65
            assert out[m::2].sum((1, 2)) == pytest.approx([1.0] * 3, abs=1e-5)   # blur keeps the mass
        scaled = intensity_augment(xb + 1, 2, np.random.default_rng(seed), 0.0, 1.0)
        for m in range(2):
            f = scaled[m::2] / (xb[m::2] + 1)
            assert np.ptp(f) < 1e-6 and BRIGHTNESS[0] <= f.flat[0] <= BRIGHTNESS[1]


def test_lesion_weights_give_every_lesion_the_same_total_weight():
    y = np.zeros((3, 10, 10), np.uint8)
    y[0, 8, 1] = 1                      # 1 voxel
    y[1, 2:4, 2:4] = 1                  # 4 voxels
    y[2, 5:8, 5:8] = 2                  # 9 voxels
    vols = [{"y": y}]
    w = lesion_weights(vols, find_lesions([y]))[0]
    assert w[0, 8, 1] == 4 and w[1, 2, 2] == 1 and w[2, 6, 6] == pytest.approx(4 / 9)
    assert w[0, 8, 1] * 1 == w[1, 2:4, 2:4].sum() == pytest.approx(w[2, 5:8, 5:8].sum())
    assert (w[y == 0] == 1).all()


def test_false_positive_centres_skip_labelled_lesions():
    p = np.zeros((3, 20, 20))
    y = np.zeros((3, 20, 20), np.uint8)
    p[1, 3:6, 3:6] = 0.9            # fired, no label: a hard negative
    p[1, 12:15, 12:15] = 0.9        # fired on a lesion
    y[1, 13, 13] = 1
    c = false_positive_centres(p, y)
    assert c.tolist() == [[1, 4, 4]]


def test_loss_and_schedule():
    t = torch.zeros(2, 8, 8, dtype=torch.long)
    t[:, 2:4, 2:4] = 1
    good = torch.full((2, 3, 8, 8), -8.0)
    good[:, 0] = 8
    good[:, 0, 2:4, 2:4], good[:, 1, 2:4, 2:4] = -8, 8
    bad = good.flip(1)
    assert dice_ce_loss(good, t) < 0.05 < 1.0 < dice_ce_loss(bad, t)
    cfg = LearnerConfig(iterations=100, lr=0.01, warmup=10)
    assert lr_at(cfg, 0) == pytest.approx(0.001) and lr_at(cfg, 9) == pytest.approx(0.01 * 0.91 ** 0.9)
    assert lr_at(cfg, 99) < 1e-3 and lr_at(cfg, 50) < lr_at(cfg, 20)


def test_lesions_from_probs_thresholds_sizes_and_cmb_bound():
    probs = np.zeros((3, 4, 40, 40), np.float32)
    probs[0] = 1
    probs[1, 1, 2:4, 2:4], probs[0, 1, 2:4, 2:4] = 0.8, 0.2      # 4-voxel CMB
    probs[1, 1, 10, 10], probs[0, 1, 10, 10] = 0.8, 0.2          # 1-voxel CMB
    probs[1, :, 15:37, 15:37], probs[0, :, 15:37, 15:37] = 0.9, 0.1   # huge "CMB": 15.5 mm > 12
    probs[2, 2, 5:8, 5:8], probs[0, 2, 5:8, 5:8] = 0.55, 0.45    # weak iron
    op = {1: {"threshold": 0.5, "min_size": 2}, 2: {"threshold": 0.5, "min_size": 1}}
    lab = pp.lesions_from_probs(probs, "multiclass", op, voxel_size=(1, 1, 1))
    assert (lab == 1).sum() == 4 and (lab[1, 2:4, 2:4] == 1).all()
    assert (lab == 2).sum() == 9
    op[2]["threshold"] = 0.6
    assert not (pp.lesions_from_probs(probs, "multiclass", op, voxel_size=(1, 1, 1)) == 2).any()
    kept = pp.lesions_from_probs(probs, "multiclass", op, voxel_size=(1, 1, 1), max_cmb_diameter_mm=None)
    assert (kept == 1).sum() == 4 + 4 * 22 * 22
    assert pp.MAX_CMB_DIAMETER_MM == 12.0


def test_iron_lesions_outside_the_iron_region_become_microbleeds():
    """An iron lesion with no voxel in the iron region is a microbleed (multi-class; its
    sizes and the CMB bound then apply) or no lesion (iron only); one that touches the region
    with a single voxel stays iron; without a region nothing changes. Selection decodes the
    same way: a microbleed the model called iron outside the region counts as found."""
    probs = np.zeros((3, 2, 20, 20), np.float32)
    probs[0] = 1
    probs[2, 0, 2:4, 2:4], probs[0, 0, 2:4, 2:4] = 0.9, 0.1      # iron, outside the region
    probs[2, 0, 10:13, 10:13], probs[0, 0, 10:13, 10:13] = 0.9, 0.1   # iron, one voxel inside
    probs[2, 1, 16, 16], probs[0, 1, 16, 16] = 0.9, 0.1          # one-voxel iron, outside
    region = np.zeros((2, 20, 20), bool)
    region[0, 12:, 12:] = True                                   # holds only voxel (12, 12)
    op = {1: {"threshold": 0.5, "min_size": 2}, 2: {"threshold": 0.5, "min_size": 1}}
    lab = pp.lesions_from_probs(probs, "multiclass", op, voxel_size=(1, 1, 1), iron_region=region)
    assert (lab[0, 2:4, 2:4] == 1).all() and (lab[0, 10:13, 10:13] == 2).all()
    assert lab[1, 16, 16] == 0                                   # now a CMB below min_size 2
    assert (lab == 1).sum() == 4 and (lab == 2).sum() == 9
    plain = pp.lesions_from_probs(probs, "multiclass", op, voxel_size=(1, 1, 1))
    assert (plain == 2).sum() == 4 + 9 + 1 and not (plain == 1).any()
    iron_only = pp.lesions_from_probs(probs[[2]], "iron", pp.default_operating_point("iron"),
                                      voxel_size=(1, 1, 1), iron_region=region)
    assert (iron_only == 2).sum() == 9 and not iron_only[0, 2:4, 2:4].any()
    ref = np.zeros((2, 20, 20), np.uint8)
    ref[0, 2:4, 2:4] = 1                                         # the model's "iron" was a CMB
    ref[0, 10:13, 10:13] = 2
    sel = {}
    for regions in (None, [region]):
        op_, _ = pp.select_operating_point([probs], [ref], "multiclass", {"cmb": 1, "iron": 1},
                                           thresholds=(0.5,), min_sizes=(1,), iron_regions=regions)
        sel[regions is None] = {k: (v["tp"], v["fp"], v["fn"]) for k, v in op_.items()}
    assert sel[True] == {1: (0, 0, 1), 2: (1, 2, 0)}
    assert sel[False] == {1: (1, 1, 0), 2: (1, 0, 0)}            # the one-voxel one: a CMB FP


def test_a_lesion_extends_from_its_confident_voxel_down_to_half_the_threshold():
    """Hysteresis (postprocess step 1): one voxel above the threshold makes a lesion of the
    connected voxels above half of it, so a minimum size does not drop a lesion the model saw
    with one confident voxel; a region that never reaches the threshold is no lesion; the
    extent stops where the other class wins."""
    probs = np.zeros((3, 3, 20, 20), np.float32)
    probs[0] = 1
    iron = (slice(None), slice(2, 5), slice(2, 5))
    probs[2][iron], probs[0][iron] = 0.45, 0.55                  # the deposit's rim: 0.45
    probs[2, 1, 3, 3], probs[0, 1, 3, 3] = 1.0, 0.0              # its confident centre
    probs[2, 1, 12:14, 12:14], probs[0, 1, 12:14, 12:14] = 0.5, 0.5   # never above 0.6
    probs[2, 1, 3, 5], probs[0, 1, 3, 5] = 0.45, 0.55            # touching the rim …
    probs[1, 1, 3, 6], probs[0, 1, 3, 6] = 0.45, 0.55            # … and a CMB-won voxel next
    op = {1: {"threshold": 0.6, "min_size": 1}, 2: {"threshold": 0.6, "min_size": 2}}
    lab = pp.lesions_from_probs(probs, "multiclass", op, voxel_size=(1, 1, 1))
    assert (lab == 2).sum() == 27 + 1 and (lab[iron] == 2).all() and lab[1, 3, 5] == 2
    assert not lab[1, 12:14, 12:14].any() and lab[1, 3, 6] == 0
    assert pp.EXTENT_FRACTION == 0.5
    probs[2][iron] = 0.25                                        # below half the threshold
    probs[2, 1, 3, 3] = 1.0
    lab = pp.lesions_from_probs(probs, "multiclass", op, voxel_size=(1, 1, 1))
    assert not (lab == 2).any()                                  # one voxel < min_size 2


def test_qsm_rule_drops_diamagnetic_and_vein_cmbs_only():
    lab = np.zeros((20, 30, 30), np.uint8)
    chi = np.zeros((20, 30, 30))
    lab[4:6, 3:5, 3:5] = 1
    chi[4:6, 3:5, 3:5] = 0.5          # paramagnetic and round: a microbleed
    lab[4:6, 12:14, 12:14] = 1
    chi[4:6, 12:14, 12:14] = -0.3     # diamagnetic: a calcification
    chi[2:18, 24:26, 24:26] = 0.3     # a vein running through the slices...
    lab[9:11, 24:26, 24:26] = 1       # ...whose cross-section the model took for a microbleed
    lab[1:3, 15:18, 2:5] = 2
    chi[1:3, 15:18, 2:5] = -0.1       # iron is left alone
    out = pp.qsm_rule(lab, chi, (1.0, 1.0, 1.0))
    assert (out[4:6, 3:5, 3:5] == 1).all() and not out[4:6, 12:14, 12:14].any()
    assert not out[9:11, 24:26, 24:26].any()
    assert (out == 2).sum() == (lab == 2).sum()


@pytest.mark.parametrize("voxel_size", [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0)])
def test_elongation_of_a_tube_is_its_length_over_its_width(voxel_size):
    """A uniform tube of n voxels (along axis 0) by d × d has principal variances
    s0²(n² − 1)/12 and s1²(d² − 1)/12 for voxel sizes s: elongation is their square-root ratio."""
    chi = np.zeros((40, 20, 20))
    n, d = 9, 3
    chi[10:10 + n, 8:8 + d, 8:8 + d] = 0.4
    comp = np.zeros(chi.shape, bool)
    comp[13:15, 8:10, 8:10] = True
    e = pp.elongation(chi, comp, np.zeros_like(comp), voxel_size)
    assert e == pytest.approx(voxel_size[0] * np.sqrt((n * n - 1) / (d * d - 1)), rel=1e-9)
    ball = np.zeros(chi.shape)
    g = np.indices(chi.shape) - np.array([20, 10, 10])[:, None, None, None]
    ball[(g ** 2).sum(0) <= 9] = 0.4
    assert pp.elongation(ball, (g ** 2).sum(0) <= 1, np.zeros_like(comp), (1.0, 1.0, 1.0)) == pytest.approx(1.0)


def test_operating_point_selection_maximises_f1():
    ref = np.zeros((6, 30, 30), np.uint8)
    ref[2, 5, 5] = ref[3, 20, 20] = 1
    probs = np.zeros((1, 6, 30, 30), np.float32)
    probs[0, 2, 5, 5] = 0.65
    probs[0, 3, 20, 20] = 0.95
    probs[0, 4, 10:12, 10:12] = 0.55          # a 4-voxel false positive below 0.6
    op, rows = pp.select_operating_point([probs], [ref], "cmb", {"cmb": 3.0}, thresholds=(0.5, 0.6, 0.7),
                                         min_sizes=(1, 2))
    assert op[1]["threshold"] == 0.6 and op[1]["min_size"] == 1 and op[1]["f1"] == 1.0
    assert len(rows) == 6 and {r["f1"] for r in rows if r["threshold"] == 0.5 and r["min_size"] == 1} == {0.8}
    # a CMB threshold cap skips the thresholds above it (the lowest is always tried); other
    # classes keep the whole grid
    capped = lambda mode, t: pp.select_operating_point([probs], [ref * (1 if mode == "cmb" else 2)], mode,
                                                       {mode: 3.0}, thresholds=(0.5, 0.6, 0.7), min_sizes=(1, 2),
                                                       max_cmb_threshold=t)[0]
    assert capped("cmb", 0.5)[1]["threshold"] == 0.5 and capped("cmb", 0.5)[1]["f1"] == 0.8
    assert capped("cmb", 0.3)[1]["threshold"] == 0.5 and capped("iron", 0.5)[2]["threshold"] == 0.6
    # ties: the middle threshold, the smallest minimum size (three 3-voxel lesions, nothing else)
    ref[:] = 0
    probs[:] = 0
    for c in (5, 15, 25):
        ref[3, c, 4:7] = 1
        probs[0, 3, c, 4:7] = 0.95
    op, _ = pp.select_operating_point([probs], [ref], "cmb", {"cmb": 3.0}, thresholds=(0.5, 0.6, 0.7),
                                      min_sizes=(1, 2, 3))
    assert (op[1]["threshold"], op[1]["min_size"], op[1]["f1"]) == (0.6, 1, 1.0)
    # two one-voxel false positives make min size 2 the best, unless the training labels hold a
    # one-voxel lesion: then no size above 1 is tried (and the one-voxel lesion is kept)
    ref[3, 5, 4:6] = 0                                   # one lesion of 1 voxel, found at 0.95
    probs[0, 3, 5, 4:6] = 0
    probs[0, 5, 20, 20] = probs[0, 0, 10, 20] = 0.95
    sel = lambda caps: pp.select_operating_point([probs], [ref], "cmb", {"cmb": 3.0}, thresholds=(0.5,),
                                                 min_sizes=(1, 2, 3), size_caps=caps)[0][1]
    assert (sel(None)["min_size"], sel(None)["fn"], sel(None)["fp"]) == (2, 1, 0)
    assert (sel({1: 1})["min_size"], sel({1: 1})["fn"], sel({1: 1})["fp"]) == (1, 0, 2)
    y = np.zeros((4, 9, 9), np.uint8)
    y[0, 1:3, 1] = 1                                     # CMBs of 2 and 4 voxels, iron of 6
    y[2, 4:6, 4:6] = 1
    y[1:3, 6:9, 7] = 2
    assert min_size_caps(find_lesions([y]), "multiclass") == {1: 2, 2: 6}
    assert min_size_caps(find_lesions([y]), "union") == {1: 2}


def _f1(model, cfg, vol):
    probs = volume_probs(model.model, vol, cfg, "cpu")
    lab = pp.lesions_from_probs(probs, "multiclass", model.operating_point, vol["voxel_size"], None, vol["brain"])
    m = participant_metrics(lab, vol["y"], classes=("cmb", "iron"))
    return dict(zip(m["class"], m["F1"])), lab


def test_learns_lesion_wise_f1_within_a_fixed_budget(tmp_path):
    cfg = LearnerConfig.from_dict(CFG)
    result = train_patches([volume(1), volume(2)], [volume(3)], "multiclass", cfg, seed=0, out_dir=tmp_path,
                           progress=False)
    f1, lab = _f1(result, cfg, volume(4))          # a volume the learner never saw
    assert min(f1.values()) >= 0.8, f1
    sel = json.loads((tmp_path / "selection.json").read_text())
    assert sel["best_iteration"] == result.best_iteration and set(sel["operating_point"]) == {"1", "2"}
    assert [p["iteration"] for p in sel["validation_points"]] == [50, 100, 150]
    ck = torch.load(tmp_path / "best.pt", weights_only=True)
    assert ck["info"]["learner"] == "patch" and ck["info"]["context"] == 1
    assert ck["info"]["operating_point"] == result.operating_point
    log = (tmp_path / "log.tsv").read_text().splitlines()
    assert log[0].split("\t") == ["iteration", "loss", "lr", "val_f1", "seconds"] and len(log) == 7
    assert (tmp_path / "learning_curve.png").stat().st_size > 1000


def _weights(path):
    return torch.load(path, weights_only=True)


def test_deterministic_resumable_and_never_resumes_other_data(tmp_path):
    cfg = LearnerConfig.from_dict({**CFG, "iterations": 60, "val_every": 30})
    tv, vv = [volume(1), volume(2)], [volume(3)]
    train_patches(tv, vv, "multiclass", cfg, seed=3, out_dir=tmp_path / "a", progress=False)
    train_patches(tv, vv, "multiclass", cfg, seed=3, out_dir=tmp_path / "b", progress=False)
    r = train_patches(tv, vv, "multiclass", cfg, seed=3, out_dir=tmp_path / "c", progress=False, stop_after=35)
    assert not r.completed and _weights(tmp_path / "c" / "last.pt")["state"]["iteration"] == 35
    train_patches(tv, vv, "multiclass", cfg, seed=3, out_dir=tmp_path / "c", progress=False)
    a, b, c = (_weights(tmp_path / d / "best.pt") for d in "abc")
    for other in (b, c):
        assert all(torch.equal(a["state_dict"][k], other["state_dict"][k]) for k in a["state_dict"])
        assert other["info"]["operating_point"] == a["info"]["operating_point"]
    la, lc = (_weights(tmp_path / d / "last.pt") for d in "ac")
    assert all(torch.equal(la["model"][k], lc["model"][k]) for k in la["model"])
    assert (tmp_path / "a" / "log.tsv").read_text().split("\t")[:-1] != []
    # other data (one changed voxel of a training volume): the checkpoint is not resumed
    tv2 = [dict(tv[0], x=tv[0]["x"].copy()), tv[1]]
    tv2[0]["x"][4, 0, 20, 20] += 1.0
    r2 = train_patches(tv2, vv, "multiclass", cfg, seed=3, out_dir=tmp_path / "a", progress=False, stop_after=5)
    assert _weights(tmp_path / "a" / "last.pt")["state"]["iteration"] == 5 and not r2.completed


def test_selection_reads_only_the_validation_volumes(tmp_path):
    """The learner's only inputs are training and validation volumes; changing anything else
    (a test participant) cannot change what it selects, and validation does change it."""
    cfg = LearnerConfig.from_dict({**CFG, "iterations": 50, "val_every": 25})
    tv = [volume(1), volume(2)]
    a = train_patches(tv, [volume(3)], "multiclass", cfg, seed=0, progress=False)
    b = train_patches(tv, [volume(3)], "multiclass", cfg, seed=0, progress=False)
    c = train_patches(tv, [volume(5, n_cmb=1, n_iron=1, n_calc=4)], "multiclass", cfg, seed=0, progress=False)
    assert a.operating_point == b.operating_point and a.best_iteration == b.best_iteration
    assert (a.operating_point, a.best_iteration) != (c.operating_point, c.best_iteration) or \
        a.operating_point[1]["f1"] != c.operating_point[1]["f1"]


def test_schema_defaults_are_the_learner_defaults():
    """learn.patch in the workflow schema and LearnerConfig agree key by key and value by value."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    schema = yaml.safe_load((root / "workflow/schemas/learn.schema.yaml").read_text())
    props = schema["properties"]["learn"]["properties"]["patch"]["properties"]
    assert {k: v["default"] for k, v in props.items()} == LearnerConfig().as_dict()
    assert all(v.get("description") for v in props.values())


def test_a_patch_the_network_cannot_halve_is_refused():
    """depth 4 halves a patch three times: 48 works, 36 is refused by name before training."""
    assert LearnerConfig.from_dict({"patch_size": 48, "depth": 4}).patch_size == 48
    with pytest.raises(ValueError, match=r"patch_size \(a multiple of 8 at depth 4\)"):
        LearnerConfig.from_dict({"patch_size": 36, "depth": 4})

"""Census regions (MARS-style) from the packaged atlas: hand-built cases, the region volume's
boundary distance, points just outside the brain, and the phantom's lesion placement."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from deepmir.atlas import head as A
from deepmir.atlas import regions


@pytest.fixture(scope="module")
def hm():
    return A.head_model()


def test_classify_hand_built_cases():
    t = np.array([A.CAUDATE, A.THALAMUS, A.WM, A.WM, A.GM, A.BRAINSTEM, A.BRAINSTEM, A.CEREBELLUM_WM])
    lobe = np.array([0, 0, 2, 2, 3, 0, 0, 0])
    cd = np.array([9.0, 9.0, 2.9, 3.1, 0.0, 9.0, 9.0, 9.0])
    x = np.array([-10.0, 12.0, -30.0, 30.0, 40.0, 1.0, -5.0, 20.0])
    got = [regions.name_of(c) for c in regions.classify(t, lobe, cd, x)]
    assert got == [("deep", "basal_ganglia", "L"), ("deep", "thalamus", "R"),
                   ("lobar", "parietal", "L"), ("deep", "deep_white_matter", "R"),
                   ("lobar", "temporal", "R"), ("infratentorial", "brainstem", "M"),
                   ("infratentorial", "brainstem", "L"), ("infratentorial", "cerebellum", "R")]


def test_known_mni_points(hm):
    got = regions.region_of(hm, [(-12, 12, 10), (12, 12, 10), (-25, 0, 0), (0, -30, -40),
                                 (np.nan, 0, 0)])
    assert got == [("deep", "basal_ganglia", "L"), ("deep", "basal_ganglia", "R"),
                   ("deep", "basal_ganglia", "L"), ("infratentorial", "brainstem", "M"),
                   regions.UNKNOWN]


def test_points_just_outside_the_brain_keep_the_cortex_region(hm):
    """A cortical point moved 2 mm out of the template's brain (what a 2 mm registration
    error does to a lesion at the surface) keeps its lobe; it used to become deep WM."""
    outside = (hm.depth == 0) & (hm.labels != A.AIR)
    dist, idx = ndi.distance_transform_edt(hm.depth == 0, return_indices=True)
    shell = np.argwhere(outside & (dist > 1.5) & (dist <= 2.5))
    pick = shell[np.random.default_rng(0).choice(len(shell), 300, replace=False)]
    near = idx[(slice(None),) + tuple(pick.T)].T          # nearest brain voxel of each
    aff = hm.affine
    out_names = regions.region_of(hm, pick @ aff[:3, :3].T + aff[:3, 3])
    in_names = regions.region_of(hm, near @ aff[:3, :3].T + aff[:3, 3])
    assert out_names == in_names
    assert sum(g == "lobar" for g, _, _ in out_names) > 100    # the case is exercised


def test_boundary_distance_bounds_where_the_region_changes(hm):
    codes, bd = regions.region_volume(hm)
    rng = np.random.default_rng(1)
    dirs = rng.normal(size=(64, 3))
    dirs /= np.linalg.norm(dirs, axis=1)[:, None]
    brain = hm.depth > 0
    # at least 3 mm from a border: every point within 2 mm has the same region
    deep_in = np.argwhere(brain & (bd >= 3.0))
    for v in deep_in[rng.choice(len(deep_in), 200, replace=False)]:
        pts = v + 2.0 * dirs
        assert np.all(regions.lookup(hm, pts @ hm.affine[:3, :3].T + hm.affine[:3, 3], codes)
                      == codes[tuple(v)])
    # on a border: a neighbour has another region
    border = np.argwhere(brain & (bd == 0))
    assert len(border) > 1000
    for v in border[rng.choice(len(border), 200, replace=False)]:
        nb = np.clip(v + np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1],
                                   [0, 0, -1]]), 0, np.array(codes.shape) - 1)
        assert np.any(codes[tuple(nb.T)] != codes[tuple(v)])


def test_head_model_cache_keeps_the_region_volume(hm, tmp_path, monkeypatch):
    """The cache file (`deepmir atlas`) carries the region volume, so a census or synth
    process reads it instead of building it; a file written before it existed still loads
    and gives the same regions."""
    import dataclasses
    codes, bd = regions.region_volume(hm)
    pts = np.random.default_rng(2).uniform(-60, 60, (500, 3))
    want = regions.region_of(hm, pts)
    bare = dict(region_codes=None, region_boundary_mm=None)
    # build (the session's model without its region volume, not rebuilt from the wheels)
    monkeypatch.setattr(A, "build_head_model", lambda: dataclasses.replace(hm, **bare))
    monkeypatch.setattr(A, "_MODEL", [])
    from deepmir.cli import main
    assert main(["atlas", "--out", str(tmp_path / "atlas.npz")]) == 0
    with np.load(tmp_path / "atlas.npz") as z:
        assert np.array_equal(z["region_codes"], codes)
        assert np.array_equal(z["region_boundary_mm"], bd)
    # read back: present without computing
    monkeypatch.setattr(A, "_MODEL", [])
    read = A.head_model(tmp_path / "atlas.npz")
    assert read.region_codes is not None and read is not hm
    assert regions.region_of(read, pts) == want
    # an older file without it
    np.savez(tmp_path / "old.npz", **{k: v for k, v in dataclasses.asdict(hm).items()
                                      if k not in bare})
    monkeypatch.setattr(A, "_MODEL", [])
    old = A.head_model(tmp_path / "old.npz")
    assert old.region_codes is None
    assert regions.region_of(old, pts) == want


def test_phantom_lesions_sit_inside_one_region(tiny_cfg, hm):
    """Every labelled lesion's centre is placed so that the region is the same within half a
    GRE voxel diagonal (the resolution the census reads) in every direction."""
    from deepmir.synth.cohort import participant_rng
    from deepmir.synth.phantom import LABEL_OF_CLASS, draw_participant
    r = np.linalg.norm(tiny_cfg["gre"]["voxel_size"]) / 2 - 0.05
    dirs = np.random.default_rng(2).normal(size=(64, 3))
    dirs /= np.linalg.norm(dirs, axis=1)[:, None]
    n = 0
    for i in range(3):
        p = draw_participant(participant_rng(tiny_cfg["seed"], i), tiny_cfg)
        for les in p.lesions:
            if not LABEL_OF_CLASS[les.cls]:
                continue
            c = p.to_mni(np.asarray(les.centre, np.float32)[None])[0]
            names = regions.region_of(hm, np.vstack([c, c + r * dirs]))
            assert len(set(names)) == 1, (les.cls, c, set(names))
            n += 1
    assert n >= 9


def test_phantom_lesions_do_not_touch(tiny_sim):
    """A GRE voxel diagonal separates lesions, so every labelled lesion is its own connected
    component of the label map (two touching lesions would be counted as one)."""
    ids = tiny_sim["truth"]["lesions"]
    table = tiny_sim["truth"]["table"]
    labelled = set(table.lesion_id[table.label > 0])
    n = 0
    for lid in np.unique(ids[ids > 0]):
        grown = ndi.binary_dilation(ids == lid, structure=np.ones((3, 3, 3), bool))
        others = set(np.unique(ids[grown])) - {0, lid}
        if lid in labelled:
            assert not (others & labelled), (lid, others)
            n += 1
    assert n >= 3     # TINY has a CMB, an iron deposit and a calcification at least


def test_iron_region_is_the_basal_ganglia_and_a_margin(hm):
    """Points of the basal ganglia are in at margin 0; the thalamus, deep white matter and
    cortex are out at the default 3 mm; the region grows with the margin, by the distance the
    atlas itself gives (a point 1 mm outside the putamen's edge: out at 0.5, in at 1.5)."""
    bg = [(-12, 12, 10), (12, 12, 10), (-25, 0, 0)]
    far = [(10, -18, 8), (-28, -30, 30), (40, 20, 40), (0, -60, -30)]
    assert regions.iron_region(hm, bg, 0.0).all()
    assert not regions.iron_region(hm, far, 3.0).any()
    assert not regions.iron_region(hm, [(np.nan, 0, 0)], 100.0).any()
    d = regions.basal_ganglia_distance_mm(hm)
    ijk = np.argwhere((d > 0.9) & (d < 1.1))[0]
    p = hm.affine[:3, :3] @ ijk + hm.affine[:3, 3]
    assert regions.region_of(hm, [p])[0][1] != "basal_ganglia"
    assert not regions.iron_region(hm, [p], 0.5)[0] and regions.iron_region(hm, [p], 1.5)[0]

"""The synthetic cohort against its own specification: signal model, phase sign, truth
consistency, lesion classes, determinism."""
import numpy as np
import pytest

from deepmir import GAMMA_BAR_HZ_PER_T
from deepmir.atlas import head as A
from deepmir.synth.cohort import gre_signal, simulate
from deepmir.synth.config import settings


def test_gre_signal_decay_and_phase_sign():
    te = np.array([0.005, 0.01, 0.02, 0.03])
    r2s = np.float32(25.0)
    omega = 2 * np.pi * GAMMA_BAR_HZ_PER_T * 3.0 * 1e-6
    for sign in (1, -1):
        s = np.array([gre_signal(np.float32(1.0), r2s, np.float32(0.05), t, sign * omega) for t in te])
        assert np.allclose(np.abs(s), np.exp(-25.0 * te), rtol=1e-5)
        # paramagnetic (positive field) → phase grows with TE in the PhaseSign direction
        dphi = np.angle(s[1] * np.conj(s[0]))
        assert dphi * sign > 0
        assert dphi == pytest.approx(sign * omega * 0.05 * 0.005, rel=1e-4)


def test_magnitude_decays_at_the_configured_r2star(tiny_sim):
    t = tiny_sim["truth"]
    te = tiny_sim["echo_times"]
    mag = np.stack(tiny_sim["mag"], -1)
    # deep white matter: homogeneous tissue, far from air (no intra-voxel dephasing)
    wm = (t["tissue"] == A.WM) & (t["lesions"] == 0)
    from scipy import ndimage as ndi
    wm = ndi.binary_erosion(wm, iterations=1)
    assert wm.sum() > 200
    est = np.log(mag[wm][:, 0] / mag[wm][:, -1]) / (te[-1] - te[0])
    assert np.median(est) == pytest.approx(np.median(t["r2s"][wm]), rel=0.12)


def test_phase_follows_the_total_field_with_the_documented_sign(tiny_sim, tiny_cfg):
    t = tiny_sim["truth"]
    te = tiny_sim["echo_times"]
    omega = 2 * np.pi * GAMMA_BAR_HZ_PER_T * tiny_cfg["gre"]["field_strength"] * 1e-6
    sign = tiny_cfg["gre"]["phase_sign"]
    z1 = tiny_sim["mag"][0] * np.exp(1j * tiny_sim["phase"][0])
    z2 = tiny_sim["mag"][1] * np.exp(1j * tiny_sim["phase"][1])
    dphi = np.angle(z2 * np.conj(z1))
    expected = sign * omega * t["total_field"] * (te[1] - te[0])
    sel = t["brain"] & (np.abs(expected) < 2.5)
    err = np.angle(np.exp(1j * (dphi[sel] - expected[sel])))
    assert np.mean(np.abs(err) < 0.3) > 0.9


def test_truth_is_consistent(tiny_sim):
    t = tiny_sim["truth"]
    table = t["table"]
    assert set(table.cls) >= {"cmb", "iron", "calcification"}
    for row in table.itertuples():
        where = t["lesions"] == row.lesion_id
        if row.label:  # annotated classes are present in the dseg with their label
            assert where.any()
            assert np.all(t["dseg"][where] == row.label)
        if row.cls == "cmb":
            assert row.delta_chi_ppm > 0 and t["chi"][where].mean() > 0.2
        if row.cls == "calcification":
            assert row.delta_chi_ppm < 0
            if where.any():
                assert t["chi"][where].mean() < 0
        if row.cls == "iron":
            assert row.region == "basal_ganglia"
    # mimics are never labelled
    mimic_ids = table.lesion_id[table.label == 0].to_numpy()
    assert not np.any(t["dseg"][np.isin(t["lesions"], mimic_ids)])
    # the brain is surrounded by a head: skull and scalp exist, air outside, a sinus
    tissue = t["tissue"]
    assert {A.SKULL, A.SCALP, A.AIR}.issubset(np.unique(tissue))
    # χ map equals the tissue table where there is no lesion
    plain = (t["lesions"] == 0) & (tissue == A.CAUDATE)
    assert plain.any()


def test_same_seed_same_participant(tiny_cfg, tiny_sim):
    again = simulate(tiny_cfg, tiny_cfg["seed"], 0)
    assert np.array_equal(again["mag"][0], tiny_sim["mag"][0])
    assert np.array_equal(again["truth"]["dseg"], tiny_sim["truth"]["dseg"])
    other = simulate(tiny_cfg, tiny_cfg["seed"], 1)
    assert not np.array_equal(other["truth"]["dseg"], tiny_sim["truth"]["dseg"])


def test_lesion_counts_follow_the_configured_bins():
    from deepmir.synth.phantom import _count
    rng = np.random.default_rng(0)
    bins = settings({"scale": "paper"})["lesions"]["cmb_count_bins"]        # the study's bins
    counts = np.array([_count(rng, bins) for _ in range(4000)])
    w = np.array([b[2] for b in bins], float)
    w /= w.sum()
    assert np.mean(counts == 0) == pytest.approx(w[0], abs=0.03)
    assert np.mean((counts >= 1) & (counts <= 2)) == pytest.approx(w[1], abs=0.03)
    assert np.mean(counts == 120) == pytest.approx(w[3], abs=0.02)
    demo = np.array([_count(rng, settings()["lesions"]["cmb_count_bins"]) for _ in range(400)])
    assert demo.min() == 5 and demo.max() == 10                               # the demo: 5 to 10 each


def test_anat_truth_transform_maps_the_brain(tiny_sim):
    """The true T1w→MEGRE transform carries the T1w brain mask onto the MEGRE brain mask."""
    from deepmir.anat import resample_to
    t1 = tiny_sim["anat"]["T1w"]
    moved = resample_to(t1["brain"].astype(np.float32), t1["affine"], t1["xfm_to_gre"],
                        tiny_sim["truth"]["brain"].shape, tiny_sim["gre_affine"]) > 0.5
    ref = tiny_sim["truth"]["brain"]
    dice = 2 * (moved & ref).sum() / (moved.sum() + ref.sum())
    assert dice > 0.9
    # and without the transform (the head moved between series) it is worse
    unmoved = resample_to(t1["brain"].astype(np.float32), t1["affine"], None, ref.shape,
                          tiny_sim["gre_affine"]) > 0.5
    assert 2 * (unmoved & ref).sum() / (unmoved.sum() + ref.sum()) < dice


def test_anat_bias_spans_the_configured_strength_over_the_head(tiny_sim, tiny_cfg):
    """The T1w/T2w bias field spans 1 ± bias_strength over the head (not over the grid's
    corners) on both contrasts, and the brain sees a clear part of it."""
    strength = tiny_cfg["bias_strength"]
    assert strength == 0.5  # one level for both contrasts (BrainWeb's 40 % non-uniformity)
    strength = {"T1w": strength, "T2w": strength}
    for c in ("T1w", "T2w"):
        a = tiny_sim["anat"][c]
        head = a["tissue"] > 0
        lb = np.log(a["bias"][head])
        assert np.abs(lb - lb.mean()).max() == pytest.approx(np.log1p(strength[c]), rel=1e-3)
        # inside the brain at least a third of that span, p1–p99
        lo, hi = np.percentile(np.log(a["bias"][a["brain"]]), [1, 99])
        assert hi - lo > 2 * np.log1p(strength[c]) / 3, (c, lo, hi)


def test_written_cohort_passes_validation_and_reads_back(tiny_bids, tiny_sim, capsys, tmp_path):
    from deepmir.cli import main
    assert main(["validate", str(tiny_bids)]) == 0
    assert "1 participant(s), 1 annotated, 0 with errors" in capsys.readouterr().out
    out = tmp_path / "inputs"
    assert main(["inputs", "--bids-dir", str(tiny_bids), "--pid", "sub-001", "--mag", str(out / "m.nii.gz"),
                 "--phase", str(out / "p.nii.gz"), "--json", str(out / "i.json")]) == 0
    from deepmir import niio
    phase, aff = niio.load(out / "p.nii.gz")
    assert np.allclose(phase[..., 2], tiny_sim["phase"][2], atol=1e-6)
    assert np.allclose(aff, tiny_sim["gre_affine"], atol=1e-5)
    info = niio.read_json(out / "i.json")
    assert info["EchoTime"] == pytest.approx(list(tiny_sim["echo_times"]))
    assert info["PhaseSign"] == 1 and info["PhaseSign_source"] == "JSON"
    table = __import__("pandas").read_csv(tiny_bids / "derivatives/truth/sub-001/anat/sub-001_lesions.tsv", sep="\t")
    assert len(table) == len(tiny_sim["truth"]["table"])
    xfm = np.loadtxt(tiny_bids / "derivatives/truth/sub-001/anat/sub-001_from-T2w_to-MEGRE_xfm.txt")
    assert np.allclose(xfm, tiny_sim["anat"]["T2w"]["xfm_to_gre"], atol=1e-6)


def test_cli_writes_a_participant_beyond_n_participants(tiny_cfg, tmp_path, capsys):
    """The workflow leaves n_participants out of each participant's job (so growing the cohort
    re-runs nothing): `--participant sub-002` must give the cohort's second participant even
    when the job's settings say n_participants 1; a malformed id is refused in one line."""
    import json

    from conftest import TINY
    from deepmir import niio
    from deepmir.cli import main
    cfg = json.dumps({k: v for k, v in TINY.items() if k != "n_participants"} | {"n_participants": 1})
    assert main(["synth", str(tmp_path), "--config-json", cfg, "--participant", "sub-002"]) == 0
    mag, _ = niio.load(tmp_path / "sub-002/anat/sub-002_echo-1_part-mag_MEGRE.nii.gz")
    assert np.allclose(mag, simulate(tiny_cfg, tiny_cfg["seed"], 1)["mag"][0], atol=1e-4)
    assert main(["synth", str(tmp_path / "x"), "--config-json", cfg, "--participant", "sub-x2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sub-x2" in err[0]
    assert not (tmp_path / "x").exists()


def test_lesions_that_do_not_fit_the_grid_are_refused_in_one_line(tmp_path, capsys):
    """40 iron deposits cannot sit a voxel diagonal apart in the basal ganglia on a 3 mm grid:
    one line naming the participant and the settings to change, exit 2, nothing written."""
    import json

    from conftest import TINY
    from deepmir.cli import main
    crowded = json.dumps({**TINY, "lesions": {**TINY["lesions"], "iron_count_bins": [[40, 40, 1]]}})
    assert main(["synth", str(tmp_path / "x"), "--config-json", crowded, "--participant", "sub-001"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("deepmir") and "sub-001: synth: no room" in err[0], err
    assert "synth.lesions" in err[0] and "synth.gre.voxel_size" in err[0]
    assert not (tmp_path / "x" / "sub-001").exists()


def test_code_digest_follows_the_phantom_sources(tmp_path):
    """The synth rules' ``code`` parameter: equal for a copy of the sources, different once a
    phantom module changes (so a workflow re-generates a cohort made by older code)."""
    import shutil
    from pathlib import Path

    from deepmir.synth.config import code_digest
    src = Path(code_digest.__code__.co_filename).resolve().parents[1]
    copy = tmp_path / "deepmir"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert code_digest(copy) == code_digest()
    f = copy / "synth" / "phantom.py"
    f.write_text(f.read_text() + "\n# changed\n")
    assert code_digest(copy) != code_digest()
    (copy / "learn" / "train.py").write_text("# not a phantom module\n")   # unrelated: no change
    f.write_text(f.read_text().replace("\n# changed\n", ""))
    assert code_digest(copy) == code_digest()
    # the atlas file's digest: the region rules count, the lesion placement does not
    from deepmir.synth.config import ATLAS_CODE_FILES
    atlas = code_digest(copy, ATLAS_CODE_FILES)
    f.write_text(f.read_text() + "\n# changed\n")
    assert code_digest(copy, ATLAS_CODE_FILES) == atlas
    regions = copy / "atlas" / "regions.py"
    regions.write_text(regions.read_text() + "\n# changed\n")
    assert code_digest(copy, ATLAS_CODE_FILES) != atlas
    # a pattern that matches no file (a module moved away) is an error, not a silent skip
    regions.rename(copy / "atlas" / "places.py")
    with pytest.raises(FileNotFoundError, match="atlas/regions.py"):
        code_digest(copy, ATLAS_CODE_FILES)


# --------------------------------------------------------------------------- tissue realism
def test_anisotropy_field_of_aligned_fibres_is_a_scalar_dipole_field():
    """χ_a (n nᵀ − I/3) with every fibre along B0 acts as a scalar χ of 2χ_a/3, across B0 as
    −χ_a/3 (susceptibility tensor imaging, Liu 2010)."""
    from deepmir.dipole import dipole_field
    from deepmir.synth.tissue import anisotropy_field
    n = 32
    g = np.indices((n, n, n)) - n / 2
    blob = ((g ** 2).sum(0) < 36).astype(np.float32) * 0.02
    for b0 in ((0, 0, 1), (0.6, 0, 0.8)):
        b = np.asarray(b0, float)
        along = np.broadcast_to(b[:, None, None, None], (3, n, n, n)).astype(np.float32)
        perp = np.cross(b, [0, 1, 0]) / np.linalg.norm(np.cross(b, [0, 1, 0]))
        across = np.broadcast_to(perp[:, None, None, None], (3, n, n, n)).astype(np.float32)
        for n_dir, scale in ((along, 2 / 3), (across, -1 / 3)):
            f = anisotropy_field(blob, n_dir, (1, 1, 1), b0, pad_factor=2.0)
            ref = dipole_field(blob * scale, (1, 1, 1), b0, pad_factor=2.0)
            assert np.abs(f - ref).max() < 0.02 * np.abs(ref).max()


def test_microstructure_offset_is_mean_free_over_orientations():
    from deepmir.synth.tissue import microstructure_offset
    rng = np.random.default_rng(0)
    v = rng.normal(size=(3, 20000, 1, 1))
    v /= np.linalg.norm(v, axis=0, keepdims=True)
    off = microstructure_offset(0.005, np.ones((20000, 1, 1), np.float32), v.astype(np.float32),
                                (0, 0, 1))
    assert abs(off.mean()) < 1e-4 and off.max() == pytest.approx(0.005 / 3, rel=0.01)


def test_vessel_partial_volume_holds_the_tube_volume():
    """A straight tube of radius r and length L holds π r² L of blood (±10 %), spread over
    partial-volume voxels; excluded voxels stay free."""
    from deepmir.synth.vessels import Vessel, vessel_fraction
    path = np.array([[-10.0, 0.3, 0.2], [10.0, 0.3, 0.2]])
    shape = (40, 16, 16)
    aff = np.eye(4)
    aff[:3, :3] = np.diag([0.75, 0.75, 0.75])
    aff[:3, 3] = -np.array(shape) / 2 * 0.75
    for r in (0.2, 0.3, 0.6, 1.2):
        v = Vessel(path=path, radius=np.array([r, r]), chi=0.45)
        frac, chi = vessel_fraction([v], shape, aff, (0.75, 0.75, 0.75))
        inside = frac.reshape(shape)[10:30].sum() * 0.75 ** 3       # x in ±7.5 mm of ±10
        length = 20 * 0.75
        assert inside == pytest.approx(np.pi * r * r * length, rel=0.1)
        assert set(np.unique(chi[frac > 0])) == {np.float32(0.45)}
    excl = np.zeros(frac.size, bool)
    excl[frac > 0.5] = True
    frac2, _ = vessel_fraction([v], shape, aff, (0.75, 0.75, 0.75), exclude=excl)
    assert not frac2[excl].any() and frac2.sum() > 0


def test_tissue_realism_leaves_lesions_and_labels_alone(tiny_cfg, tiny_sim):
    """Texture, veins, anisotropy and the coil profile come from their own random streams:
    without them the participant has the same lesions, labels and lesion table; with them
    the GRE differs (and the truth χ has texture inside tissue)."""
    import copy
    cfg = copy.deepcopy(tiny_cfg)
    cfg["tissue"] = {"texture": False, "veins": False, "anisotropy_ppm": 0.0,
                     "microstructure_ppm": 0.0, "coil_contrast": 0.0}
    plain = simulate(cfg, cfg["seed"], 0)
    for key in ("lesions", "dseg", "tissue", "brain"):
        assert np.array_equal(plain["truth"][key], tiny_sim["truth"][key]), key
    assert plain["truth"]["table"].equals(tiny_sim["truth"]["table"])
    assert not np.allclose(plain["mag"][0], tiny_sim["mag"][0])
    t = tiny_sim["truth"]
    from scipy import ndimage as ndi
    wm = ndi.binary_erosion((t["tissue"] == A.WM) & (t["lesions"] == 0) & t["brain"])
    assert wm.sum() > 100
    plain_sd, tex_sd = np.std(plain["truth"]["chi"][wm]), np.std(t["chi"][wm])
    assert tex_sd > plain_sd + 0.002, (plain_sd, tex_sd)
    # the field beyond scalar χ: the local field is not the dipole field of χ alone
    assert not np.allclose(plain["truth"]["local_field"], t["local_field"], atol=1e-3)


def test_microbleed_diameters_stay_in_the_configured_range():
    """Every CMB's ellipsoid has a diameter in ``cmb_diameter_range_mm`` up to its ±15 % axis
    jitter: the demo's lower bound (2.6 mm, scaled with its median) leaves no one-voxel speck
    that the 2 mm bound of the base settings draws on the same seeds."""
    from deepmir.synth.phantom import draw_participant

    def radii(cfg):
        return np.array([les.radii for i in range(3)
                         for les in draw_participant(np.random.default_rng(i), cfg).lesions
                         if les.cls == "cmb"])

    cfg = settings()
    lo, hi = cfg["lesions"]["cmb_diameter_range_mm"]
    assert (lo, hi) == (2.6, 10.0)
    r = radii(cfg)
    assert len(r) >= 15
    assert r.min() >= lo / 2 * 0.85 and r.max() <= hi / 2 * 1.15
    assert np.mean(np.isclose(np.prod(r, axis=1) ** (1 / 3) * 2, lo, rtol=0.16)) > 0.1   # clipped ones
    cfg["lesions"]["cmb_diameter_range_mm"] = [2.0, 10.0]
    assert radii(cfg).min() < lo / 2 * 0.85
    for bad in ([10, 2], [0, 10], [3], "2-10", [2, True]):
        with pytest.raises(ValueError, match="cmb_diameter_range_mm"):
            settings({"lesions": {"cmb_diameter_range_mm": bad}})


def test_deep_grey_lesions_stand_out_of_the_nucleus_texture():
    """Labels and mimics in the deep nuclei are visible in their own truth: an iron deposit is
    brighter against its ring than 4 σ of the pallidum's texture (0.10 ppm), a calcification
    darker than 2 σ (−0.05). With the old increments (0.10–0.25 and −0.10 to −0.50 ppm) a
    deposit of demo seed 3 kept 0.05 ppm (fainter than unlabelled texture spots the model then
    found) and calcifications of report seed 1 kept −0.02, within 1 σ, so their sign could
    not be recovered (docs/method.md §7, docs/qsm.md §6)."""
    from deepmir.atlas import head as A
    from deepmir.learn.postprocess import delta_chi
    from deepmir.synth.cohort import simulate
    from deepmir.synth.tissue import TEXTURE_PPM

    sigma = TEXTURE_PPM[A.PALLIDUM]
    cfg = settings()
    seen = {"iron": [], "calcification": []}
    # demo seed 3's sub-001 and sub-006; report seed 1's participants 5 and 9 (indices 4, 8)
    for seed, i in ((3, 0), (3, 5), (1, 4), (1, 8)):
        t = simulate(cfg, seed, i)["truth"]
        labelled = t["lesions"] > 0
        for row in t["table"].itertuples():
            where = t["lesions"] == row.lesion_id
            if row.cls in seen and where.any():
                seen[row.cls].append(delta_chi(t["chi"], where, labelled & ~where))
    assert len(seen["iron"]) >= 5 and len(seen["calcification"]) >= 4
    assert min(seen["iron"]) >= 4 * sigma, sorted(seen["iron"])
    assert max(seen["calcification"]) <= -2 * sigma, sorted(seen["calcification"])

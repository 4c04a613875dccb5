"""`deepmir qsm`, `deepmir qsm-run` and `deepmir swi` on tiny NIfTI files."""
from __future__ import annotations

import json

import numpy as np
import pytest
from test_qsm_phantoms import ball, gre, rad_per_s_per_ppm

from deepmir import niio
from deepmir.cli import main
from deepmir.dipole import dipole_field

N = 32
AFF = np.diag([1.0, 1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    d = tmp_path_factory.mktemp("qsmcli")
    brain = ball(N, 13)
    chi = np.zeros((N, N, N), np.float32)
    cmb = ball(N, 3, centre=(19, 16, 16))
    chi[cmb] = 0.5
    field = dipole_field(chi, (1, 1, 1), (0, 0, 1), pad_factor=2) * brain
    niio.save(d / "field_ppm.nii.gz", field, AFF)
    niio.save(d / "field_hz.nii.gz", field * 42.577478 * 3, AFF)
    niio.save(d / "field_rad.nii.gz", field * rad_per_s_per_ppm(3) * 0.02, AFF)
    niio.save(d / "mask.nii.gz", brain.astype(np.uint8), AFF)
    te = [0.005, 0.010, 0.015]
    mag, ph = gre(field, np.where(brain, 1.0, 0.05), 25.0, te, phase_sign=-1, sigma=0.003)
    niio.save(d / "mag.nii.gz", mag, AFF)
    niio.save(d / "phase.nii.gz", ph, AFF)
    (d / "MEGRE.json").write_text(json.dumps({"EchoTime": te, "MagneticFieldStrength": 3.0,
                                              "B0_dir": [0, 0, 1], "PhaseSign": -1}))
    return d, brain, cmb


def test_qsm_external_field_units_agree(phantom, capsys):
    d, brain, cmb = phantom
    outs = {}
    for unit in ("ppm", "hz", "rad"):
        o = d / f"chi_{unit}.nii.gz"
        rc = main(["qsm", "--field", str(d / f"field_{unit}.nii.gz"), "--field-unit", unit,
                   "--mask", str(d / "mask.nii.gz"), "--te", "0.02", "--method", "tkd",
                   "--output", str(o), "--device", "cpu"])
        assert rc == 0
        outs[unit] = niio.load(o)[0]
    np.testing.assert_allclose(outs["hz"], outs["ppm"], atol=2e-4)
    np.testing.assert_allclose(outs["rad"], outs["ppm"], atol=2e-4)
    assert outs["ppm"][cmb].mean() > 0.2


def test_qsm_external_field_medi_default(phantom):
    d, brain, cmb = phantom
    o = d / "chi_medi.nii.gz"
    rc = main(["qsm", "--field", str(d / "field_ppm.nii.gz"), "--field-unit", "ppm",
               "--mask", str(d / "mask.nii.gz"), "--magnitude", str(d / "mag.nii.gz"),
               "--output", str(o), "--device", "cpu"])
    assert rc == 0
    chi, aff = niio.load(o)
    assert np.allclose(aff, AFF) and chi[cmb].mean() > 0.25 and np.all(chi[~brain] == 0)


@pytest.mark.parametrize("case", ["missing", "shape", "empty", "nan", "te_ms"])
def test_qsm_bad_input_one_line_error_nothing_written(phantom, tmp_path, capsys, case):
    d, brain, _ = phantom
    field, mask, extra = d / "field_ppm.nii.gz", d / "mask.nii.gz", []
    if case == "missing":
        field = tmp_path / "nope.nii.gz"
    elif case == "shape":
        niio.save(tmp_path / "m.nii.gz", np.ones((N, N, N - 1), np.uint8), AFF)
        mask = tmp_path / "m.nii.gz"
    elif case == "empty":
        niio.save(tmp_path / "m.nii.gz", np.zeros((N, N, N), np.uint8), AFF)
        mask = tmp_path / "m.nii.gz"
    elif case == "nan":
        f = niio.load(field)[0]
        f[16, 16, 16] = np.nan
        niio.save(tmp_path / "f.nii.gz", f, AFF)
        field = tmp_path / "f.nii.gz"
    elif case == "te_ms":
        extra = ["--te", "25"]
    out = tmp_path / "chi.nii.gz"
    rc = main(["qsm", "--field", str(field), "--field-unit", "ppm", "--mask", str(mask),
               "--output", str(out)] + extra)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and err.startswith("deepmir qsm: error:")
    assert not out.exists()


def test_qsm_bad_unit_rejected(phantom, capsys):
    d, _, _ = phantom
    with pytest.raises(SystemExit) as e:
        main(["qsm", "--field", str(d / "field_ppm.nii.gz"), "--field-unit", "gauss",
              "--mask", str(d / "mask.nii.gz"), "--output", str(d / "x.nii.gz")])
    assert e.value.code == 2


def test_qsm_run_and_swi_commands(phantom, tmp_path):
    d, brain, cmb = phantom
    o = {k: tmp_path / f"{k}.nii.gz" for k in ("chi", "r2s", "field", "swi", "minip", "cfl2")}
    rc = main(["qsm-run", "--mag", str(d / "mag.nii.gz"), "--phase", str(d / "phase.nii.gz"),
               "--json", str(d / "MEGRE.json"), "--mask", str(d / "mask.nii.gz"),
               "--chi", str(o["chi"]), "--r2s", str(o["r2s"]), "--field", str(o["field"]),
               "--chi-cfl2", str(o["cfl2"]),
               "--qc", str(tmp_path / "qc.png"),
               "--config-json", '{"inversion": "tkd", "csf": false, "device": "cpu"}'])
    assert rc == 0 and (tmp_path / "qc.png").stat().st_size > 1000
    side = json.loads((tmp_path / "chi.json").read_text())     # the χ map's sidecar
    assert side["inversion"] == "tkd" and side["settings"]["csf"] is False
    assert side["settings"]["lambda"] == "auto" and side["unit"] == "ppm"
    # no wall or CPU times: a rerun (or a resume after a kill) writes the same bytes
    again = tmp_path / "again"
    again.mkdir()
    assert main(["qsm-run", "--mag", str(d / "mag.nii.gz"), "--phase", str(d / "phase.nii.gz"),
                 "--json", str(d / "MEGRE.json"), "--mask", str(d / "mask.nii.gz"),
                 "--chi", str(again / "chi.nii.gz"), "--r2s", str(again / "r2s.nii.gz"),
                 "--field", str(again / "field.nii.gz"),
                 "--config-json", '{"inversion": "tkd", "csf": false, "device": "cpu"}']) == 0
    assert (again / "chi.json").read_bytes() == (tmp_path / "chi.json").read_bytes()
    assert not [k for k in side if "second" in k or "timing" in k]
    assert niio.load(o["cfl2"])[0][cmb].mean() > 0.1
    chi = niio.load(o["chi"])[0]
    assert chi[cmb].mean() - np.median(chi[brain]) > 0.2    # PhaseSign −1 handled
    r2s = niio.load(o["r2s"])[0]
    assert np.median(r2s[brain]) == pytest.approx(25.0, rel=0.1)
    rc = main(["swi", "--mag", str(d / "mag.nii.gz"), "--phase", str(d / "phase.nii.gz"),
               "--json", str(d / "MEGRE.json"), "--output", str(o["swi"]),
               "--minip", str(o["minip"]), "--qc", str(tmp_path / "swi.png")])
    assert rc == 0
    s = niio.load(o["swi"])[0]
    m = niio.load(o["minip"])[0]
    mag = niio.load(d / "mag.nii.gz")[0][..., 0]
    assert np.all(s <= mag + 1e-6) and np.all(m <= s + 1e-6)


def test_qsm_run_bad_json(phantom, tmp_path, capsys):
    d, _, _ = phantom
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"EchoTime": [5, 10, 15], "MagneticFieldStrength": 3}))
    rc = main(["qsm-run", "--mag", str(d / "mag.nii.gz"), "--phase", str(d / "phase.nii.gz"),
               "--json", str(bad), "--mask", str(d / "mask.nii.gz"),
               "--chi", str(tmp_path / "c.nii.gz"), "--r2s", str(tmp_path / "r.nii.gz"),
               "--field", str(tmp_path / "f.nii.gz")])
    err = capsys.readouterr().err
    assert rc == 2 and "seconds" in err and not (tmp_path / "c.nii.gz").exists()


def test_qsm_field_sign_flips_result(phantom, tmp_path):
    d, brain, cmb = phantom
    o = tmp_path / "neg.nii.gz"
    rc = main(["qsm", "--field", str(d / "field_ppm.nii.gz"), "--field-unit", "ppm",
               "--field-sign", "-1", "--mask", str(d / "mask.nii.gz"), "--method", "tkd",
               "--output", str(o)])
    assert rc == 0 and niio.load(o)[0][cmb].mean() < -0.2


def test_external_field_command_gives_the_workflows_chi(phantom, tmp_path, capsys):
    """One inversion, two front ends: `deepmir qsm --field` on the workflow's own local field
    and mask (with its noise map, magnitude and CSF mask, and its echo spacing) writes the
    χ of the workflow's chain (`reconstruct`, which `deepmir qsm-run` runs), at the
    defaults: λ chosen by the same rule, recorded in the sidecar."""
    from deepmir.qsm.pipeline import reconstruct

    d, brain, cmb = phantom
    mag = niio.load(d / "mag.nii.gz")[0]
    ph = niio.load(d / "phase.nii.gz")[0]
    te = json.loads((d / "MEGRE.json").read_text())["EchoTime"]
    res = reconstruct(mag, ph, te, brain, (1, 1, 1), (0, 0, 1), 3.0, -1, device="cpu",
                      log=None)
    assert res["info"]["lambda_rule"] == "lcurve"
    files = {}
    for name, arr in (("local", res["local_field"]), ("noise", res["noise_std"]),
                      ("mask", res["local_mask"].astype(np.uint8)),
                      ("csf", res["csf_mask"].astype(np.uint8))):
        files[name] = tmp_path / f"{name}.nii.gz"
        niio.save(files[name], arr, AFF)
    out = tmp_path / "chi.nii.gz"
    args = ["qsm", "--field", str(files["local"]), "--field-unit", "ppm",
            "--mask", str(files["mask"]), "--magnitude", str(d / "mag.nii.gz"),
            "--noise-std", str(files["noise"]), "--te", repr(res["delta_te"]), "--b0", "3",
            "--output", str(out), "--device", "cpu"]
    if res["csf_mask"].any():
        args += ["--csf-mask", str(files["csf"])]
    assert main(args) == 0
    chi = niio.load(out)[0]
    np.testing.assert_allclose(chi, res["chi"], atol=1e-6)
    side = json.loads((tmp_path / "chi.json").read_text())
    assert side["lambda"] == pytest.approx(res["info"]["lambda"])
    assert side["lambda_rule"] == "lcurve" and side["weights"] == "noise map"
    assert "MEDI λ =" in capsys.readouterr().err


def test_qsm_external_noise_map_and_lambda_errors(phantom, tmp_path, capsys):
    d, brain, _ = phantom
    bad = tmp_path / "noise.nii.gz"
    niio.save(bad, np.zeros((N, N, N), np.float32), AFF)
    out = tmp_path / "chi.nii.gz"
    rc = main(["qsm", "--field", str(d / "field_ppm.nii.gz"), "--field-unit", "ppm",
               "--mask", str(d / "mask.nii.gz"), "--noise-std", str(bad), "--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "noise.nii.gz" in err and not out.exists()
    assert not (tmp_path / "chi.json").exists()
    rc = main(["qsm", "--field", str(d / "field_ppm.nii.gz"), "--field-unit", "ppm",
               "--mask", str(d / "mask.nii.gz"), "--lambda", "-3", "--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "--lambda" in err and not out.exists()


def test_workflow_schema_defaults_match_pipeline_defaults():
    """The qsm schema's defaults are the pipeline's DEFAULTS (mask_erode_mm included)."""
    from pathlib import Path

    import yaml

    from deepmir.qsm.defaults import DEFAULTS

    schema = yaml.safe_load((Path(__file__).resolve().parents[2] / "workflow" / "schemas"
                             / "qsm.schema.yaml").read_text())
    props = schema["properties"]["qsm"]["properties"]
    for key, value in DEFAULTS.items():
        assert key in props, key
        assert props[key]["default"] == value, key

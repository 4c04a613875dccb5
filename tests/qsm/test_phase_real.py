"""Phase handling on the small real acquisitions in ../shared/data/real (skipped when absent):
vendor integers converted, unwrapping differs from the input by multiples of 2π, unwrapped
phase linear in TE, field map of a Siemens dual-echo acquisition, SWI contrast."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from deepmir import niio
from deepmir.phase import phase_to_radians
from deepmir.qsm.fit import fit_multi_echo
from deepmir.qsm.unwrap import unwrap_laplacian, unwrap_region_growing
from deepmir.swi.weighting import swi, vessel_contrast

torch.set_num_threads(1)
REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"
TWO_PI = 2 * np.pi
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real not present")
ROMEO_TE = np.array([0.004, 0.008, 0.012])  # the source project's tests use 4/8/12 ms


def _int_dev(u, w, sel):
    k = (u - w) / TWO_PI
    return float(np.abs(k - np.round(k))[sel].max())


def test_siemens_integer_levels_convert_exactly():
    unsigned = np.array([0, 2048, 4095, 1024], np.float32)
    r, how = phase_to_radians(unsigned)
    np.testing.assert_allclose(r, [-np.pi, 0, np.pi * 2047 / 2048, -np.pi / 2], atol=1e-6)
    assert "unsigned" in how
    signed = np.array([-4096, 0, 4094, 2048], np.float32)
    r, how = phase_to_radians(signed)
    np.testing.assert_allclose(r, [-np.pi, 0, np.pi * 4094 / 4096, np.pi / 2], atol=1e-6)
    assert "signed" in how


@needs_real
@pytest.mark.parametrize("name", ["romeo_small", "clearswi_small"])
def test_multi_echo_unwrapping_real(name):
    mag, _ = niio.load(REAL / name / "Mag.nii")
    raw, _ = niio.load(REAL / name / "Phase.nii")
    rad, how = phase_to_radians(raw)
    assert "rescaled" in how and rad.min() >= -np.pi and rad.max() <= np.pi
    mask = mag[..., 0] > 0.15 * np.percentile(mag[..., 0], 99)
    u = unwrap_region_growing(rad, mag, mask, te=ROMEO_TE)
    m4 = np.broadcast_to(mask[..., None], u.shape)
    assert _int_dev(u, rad, m4) < 1e-4                       # multiples of 2π
    assert np.any(np.abs(u - rad)[m4] > 1)                   # and it did unwrap something
    a = np.stack([np.ones(3), ROMEO_TE], 1)
    coef = np.linalg.lstsq(a, u[mask].T, rcond=None)[0]
    resid = u[mask] - (a @ coef).T
    assert np.sqrt((resid ** 2).mean()) < 0.1                 # linear in TE (rad)
    assert (np.abs(resid).max(1) > 1.0).mean() < 0.005
    # the multi-echo fit agrees with the unwrapped slope (where no spatial unwrapping needed)
    fit = fit_multi_echo(mag, rad, ROMEO_TE, mask=mask)
    slope = coef[1] * (ROMEO_TE[1] - ROMEO_TE[0])
    d = np.angle(np.exp(1j * (fit["field"][mask] * fit["delta_te"] - slope)))
    assert np.median(np.abs(d)) < 0.05
    # Laplacian unwrapping of echo 1 agrees with region growing up to a constant where SNR is high
    lap = unwrap_laplacian(rad[..., 0], (0.469, 0.469, 1.0), mag[..., 0], mask)
    e = (lap - u[..., 0])[mask]
    assert np.mean(np.abs(e - np.median(e)) < 1.0) > 0.8


@needs_real
def test_single_echo_low_snr_unwrapping_and_nan():
    ph, _ = niio.load(REAL / "fourier_unwrap_chen" / "phase.nii")
    mag, _ = niio.load(REAL / "fourier_unwrap_chen" / "magnitude.nii")
    mask = mag > 0.1 * np.percentile(mag, 99)
    u = unwrap_region_growing(ph, mag, mask)
    assert _int_dev(u, ph, mask) < 1e-4
    raw, _ = niio.load(REAL / "romeo_small" / "phase_with_nan.nii")
    rad, how = phase_to_radians(raw, assume="radians")
    u = unwrap_region_growing(rad[..., 0])
    fin = np.isfinite(rad[..., 0])
    assert np.all(np.isnan(u[~fin])) and _int_dev(u, rad[..., 0], fin) < 1e-4


def _te(path):
    return json.loads(Path(str(path).replace(".nii.gz", ".json").replace(".nii", ".json")).read_text())["EchoTime"]


@needs_real
def test_siemens_dual_echo_field_map_shimtb():
    d = REAL / "shimtb_fieldmap"
    p1, _ = niio.load(d / "sub-fieldmap_phase1.nii.gz")
    p2, _ = niio.load(d / "sub-fieldmap_phase2.nii.gz")
    m1, aff = niio.load(d / "sub-fieldmap_magnitude1.nii.gz")
    r1, how1 = phase_to_radians(p1)
    r2, _ = phase_to_radians(p2)
    assert "unsigned" in how1 and r1.min() >= -np.pi and r1.max() < np.pi
    dte = _te(d / "sub-fieldmap_phase2.nii.gz") - _te(d / "sub-fieldmap_phase1.nii.gz")
    assert dte == pytest.approx(0.003)
    dphi = np.angle(np.exp(1j * (r2 - r1))).astype(np.float32)
    mask = ndi.binary_erosion(m1 > 0.2 * np.percentile(m1, 99), iterations=1)
    u = unwrap_region_growing(dphi, m1, mask)
    assert _int_dev(u, dphi, mask) < 1e-4
    hz = u / (TWO_PI * dte)
    hz -= np.median(hz[mask])
    # a shimmed phantom at 3 T: tens of Hz, smooth (neighbour steps well below the alias 1/ΔTE)
    assert np.percentile(np.abs(hz[mask]), 95) < 150
    step = np.abs(np.diff(hz, axis=0))[mask[1:] & mask[:-1]]
    assert np.median(step) < 5


@needs_real
def test_siemens_phase_difference_dcm_qa():
    d = REAL / "dcm_qa_fmap_siemens"
    raw, _ = niio.load(d / "Si_3_gre_field_magph_e2_ph.nii")
    mag, _ = niio.load(d / "Si_2_gre_field_magph_e1.nii")
    meta = json.loads((d / "Si_3_gre_field_magph_e2_ph.json").read_text())
    rad, how = phase_to_radians(raw)
    assert "signed" in how and rad.min() >= -np.pi and rad.max() <= np.pi
    dte = meta["EchoTime2"] - meta["EchoTime1"]
    mask = ndi.binary_erosion(mag > 0.2 * np.percentile(mag, 99), iterations=1)
    u = unwrap_region_growing(rad, mag, mask)
    assert _int_dev(u, rad, mask) < 1e-4
    hz = u / (TWO_PI * dte)
    hz -= np.median(hz[mask])
    assert np.percentile(np.abs(hz[mask]), 95) < 200


@needs_real
def test_swi_raises_vein_contrast_romeo(capsys):
    mag, _ = niio.load(REAL / "romeo_small" / "Mag.nii")
    raw, _ = niio.load(REAL / "romeo_small" / "Phase.nii")
    rad, _ = phase_to_radians(raw)
    s = swi(mag[..., 0], rad[..., 0], (0, 0, 1), 1, (64, 64), 4)
    last = mag[..., -1]  # veins: darkest at the longest echo (chosen without the SWI)
    vessel = last < np.percentile(last, 2)
    surround = ndi.binary_dilation(vessel, iterations=3) & ~ndi.binary_dilation(vessel, iterations=1)
    c_mag = vessel_contrast(mag[..., 0], vessel, surround)
    c_swi = vessel_contrast(s["swi"], vessel, surround)
    with capsys.disabled():
        print(f"\nromeo_small vein contrast: magnitude {c_mag:.3f}, SWI {c_swi:.3f}")
    assert c_swi > c_mag
    assert 0 <= s["mask"].min() and s["mask"].max() <= 1

"""SWI on a synthetic vein and microbleed (analytic / FFT fields)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from deepmir.dipole import dipole_field
from deepmir.swi.weighting import highpass_phase, minip, phase_mask, slice_axis, swi, vessel_contrast
from qsm.test_qsm_phantoms import ball, gre  # tests/ is on the path (pyproject)


def _scene(phase_sign):
    n = 64
    chi = np.zeros((n, n, n), np.float32)
    g = np.indices((n, n, n))
    vein = ((g[0] - 20) ** 2 + (g[1] - 40) ** 2 <= 4) & (g[2] > 8) & (g[2] < 56)  # ∥ B0
    cmb = ball(n, 2.5, centre=(44, 24, 32))
    chi[vein] = 0.45
    chi[cmb] = 0.8
    field = dipole_field(chi, (1, 1, 1), (0, 0, 1), pad_factor=2)
    # slow background phase the homodyne filter must remove
    bg = 0.02 * (g[0] - 32) / 32.0
    r2s = np.where(vein, 40.0, 20.0) + np.where(cmb, 30.0, 0.0)
    mag, ph = gre(field + bg, 1.0, r2s, [0.02], phase_sign=phase_sign, phi0=0.3)
    return mag[..., 0], ph[..., 0], vein, cmb


@pytest.mark.parametrize("phase_sign", [1, -1])
def test_swi_darkens_vein_and_cmb_more_than_magnitude(phase_sign):
    mag, ph, vein, cmb = _scene(phase_sign)
    res = swi(mag, ph, (0, 0, 1), phase_sign, (64, 64), 4)
    for roi in (vein, cmb):
        ring = ndi.binary_dilation(roi, iterations=4) & ~ndi.binary_dilation(roi, iterations=2)
        c_mag = vessel_contrast(mag, roi, ring)
        c_swi = vessel_contrast(res["swi"], roi, ring)
        assert c_swi > c_mag + 0.05
    # the wrong sign convention would not darken the vein (its inner phase is positive)
    wrong = swi(mag, ph, (0, 0, 1), -phase_sign, (64, 64), 4)
    ring = ndi.binary_dilation(vein, iterations=4) & ~ndi.binary_dilation(vein, iterations=2)
    assert vessel_contrast(wrong["swi"], vein, ring) < vessel_contrast(res["swi"], vein, ring)


def test_homodyne_removes_slow_phase_and_mask_range():
    n = 64
    g = np.indices((n, n, 8)).astype(np.float32)
    ph = np.angle(np.exp(1j * (3.0 * g[0] / n + 2.0 * np.sin(g[1] / n * 2))))
    hp = highpass_phase(np.ones_like(ph), ph, (0, 0, 1), (64, 64))
    assert np.abs(hp[8:-8, 8:-8]).max() < 0.1
    m = phase_mask(np.array([-3.0, 0.0, 1.0, np.pi]), 1, 4)
    np.testing.assert_allclose(m, [1.0, 1.0, ((np.pi - 1) / np.pi) ** 4, 0.0], atol=1e-6)


def test_minip_and_slice_axis():
    assert slice_axis((0.1, 0.98, 0.1)) == 1
    x = np.random.default_rng(0).uniform(size=(6, 6, 10)).astype(np.float32)
    mp = minip(x, (0, 0, 1), 3)
    assert mp.shape == x.shape and np.all(mp <= x)
    assert mp[2, 3, 5] == pytest.approx(x[2, 3, 4:7].min())


def test_auto_device_means_the_same_for_swi_qsm_and_learning(monkeypatch):
    """One device picker, one meaning of ``auto``: CUDA when available (``deepmir swi --device
    auto`` used to run on the CPU while ``deepmir qsm`` used the GPU); None (a numerics function
    not told where) is the CPU, a torch.device passes as it is; no other module picks a device."""
    import re
    from pathlib import Path

    import torch

    import deepmir
    from deepmir.device import pick_device

    assert pick_device(None) == torch.device("cpu")
    assert pick_device(torch.device("cpu")) == torch.device("cpu")
    for avail in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda a=avail: a)
        want = torch.device("cuda" if avail else "cpu")
        assert pick_device("auto") == pick_device("") == want
    pickers = [p.name for p in Path(deepmir.__file__).parent.rglob("*.py")
               if re.search(r"cuda\.is_available\(\) else", p.read_text())]
    assert pickers == ["device.py"], pickers
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    mag = np.ones((8, 8, 4), np.float32)
    out = swi(mag, np.zeros_like(mag), device="auto")    # the CLI passes "auto" through
    np.testing.assert_allclose(out["swi"], mag, atol=1e-6)

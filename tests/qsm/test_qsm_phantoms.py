"""Small hand-built phantoms shared by the QSM / SWI tests (analytic sphere fields)."""
from __future__ import annotations

import numpy as np

from deepmir import GAMMA_BAR_HZ_PER_T


def grid(n, voxel_size=(1.0, 1.0, 1.0), centre=None):
    """Coordinates in mm (3, n, n, n) relative to ``centre`` (voxel units, default n/2)."""
    c = np.full(3, n / 2.0) if centre is None else np.asarray(centre, float)
    idx = np.indices((n, n, n)).astype(np.float64)
    return np.stack([(idx[i] - c[i]) * voxel_size[i] for i in range(3)])


def ball(n, radius_mm, centre=None, voxel_size=(1.0, 1.0, 1.0)):
    g = grid(n, voxel_size, centre)
    return np.sqrt((g ** 2).sum(0)) <= radius_mm


def sphere_field(n, radius_mm, dchi, centre=None, voxel_size=(1.0, 1.0, 1.0), b0=(0, 0, 1)):
    """Analytic relative field (unit of ``dchi``) of a uniform sphere, Lorentz-corrected:
    0 inside, dchi·(a/r)³·(3cos²θ − 1)/3 outside (θ to B0)."""
    g = grid(n, voxel_size, centre)
    r = np.sqrt((g ** 2).sum(0))
    b = np.asarray(b0, float) / np.linalg.norm(b0)
    cos = np.tensordot(b, g, axes=1) / np.where(r > 0, r, 1)
    out = dchi * (radius_mm / np.where(r > 0, r, 1)) ** 3 * (3 * cos ** 2 - 1) / 3
    return np.where(r <= radius_mm, 0.0, out).astype(np.float32)


def rad_per_s_per_ppm(b0_tesla=3.0):
    return 2 * np.pi * GAMMA_BAR_HZ_PER_T * b0_tesla * 1e-6


def gre(field_ppm, m0, r2s, te, phase_sign=1, phi0=0.0, b0_tesla=3.0, sigma=0.0, seed=0):
    """Multi-echo magnitude and wrapped phase (X, Y, Z, N) of a field map in ppm."""
    rng = np.random.default_rng(seed)
    w = rad_per_s_per_ppm(b0_tesla)
    sig = []
    for t in te:
        s = m0 * np.exp(-r2s * t) * np.exp(1j * (phase_sign * w * field_ppm * t + phi0))
        if sigma:
            s = s + sigma * (rng.normal(size=s.shape) + 1j * rng.normal(size=s.shape)) / np.sqrt(2)
        sig.append(s)
    s = np.stack(sig, -1)
    return np.abs(s).astype(np.float32), np.angle(s).astype(np.float32)


def test_analytic_sphere_field_matches_fft_dipole_field():
    """The FFT forward model (deepmir.dipole, D = 1/3 − k_z²/k²) reproduces the analytic
    field of a sphere outside it, i.e. both use the same (Lorentz-corrected) convention."""
    from deepmir.dipole import dipole_field

    n, a = 48, 6.0
    chi = ball(n, a).astype(np.float32) * 0.2
    f_fft = dipole_field(chi, (1.0, 1.0, 1.0), (0, 0, 1), pad_factor=2.0)
    f_ana = sphere_field(n, a, 0.2)
    r = np.sqrt((grid(n) ** 2).sum(0))
    shell = (r > a + 2) & (r < 16)
    err = np.linalg.norm((f_fft - f_ana)[shell]) / np.linalg.norm(f_ana[shell])
    assert err < 0.05
    # along B0 the field outside is positive for a paramagnetic sphere: 2/3·Δχ·(a/r)³
    assert f_ana[24, 24, 24 + 9] > 0 and f_fft[24, 24, 24 + 9] > 0

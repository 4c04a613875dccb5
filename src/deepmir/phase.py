"""Conversion of stored phase images to radians.

Scanners and converters store phase in several ways:

- radians already: |values| ≤ π (1 % slack for rounding) *and* spanning at least half
  the circle (max − min ≥ π), as a wrapped phase image does;
- Siemens integers: unsigned 12 bit 0 … 4095 (``(v − 2048)·π/2048``) or the signed form
  −4096 … 4094/4095 that dcm2niix writes after applying slope 2 / intercept −4096
  (``v·π/4096``); both map the 4096 levels onto [−π, π);
- a phase scaled down (e.g. the ROMEO / CLEARSWI test data, 4096 levels within ±0.003674 —
  inside ±π but spanning far less than π): the finite minimum … maximum are rescaled
  linearly onto −π … π.

Anything else (a float phase of range 0 … 20000, radians with an outlier beyond π) is not
guessed at: :func:`detect_unit` refuses it and ``assume="rescale"`` (or ``"radians"``, which
clips) must be given. A genuine radian image spanning less than π (e.g. a small smooth crop)
would be taken for a scaled one: pass ``assume="radians"`` when the unit is known.

NaNs stay NaN (callers decide whether to refuse them); ±inf are treated as NaN.
"""
from __future__ import annotations

import numpy as np

RADIAN_SLACK = 1.01  # values within ±π·1.01 count as radians


def _is_integer_valued(v: np.ndarray) -> bool:
    return bool(np.all(np.abs(v - np.round(v)) <= 1e-3))


def detect_unit(data) -> str:
    """``"radians"``, ``"siemens"`` or ``"rescale"`` (see the module doc); ValueError, with the
    value range, when the phase fits none of them."""
    a = np.asarray(data, dtype=np.float64)
    v = a[np.isfinite(a)]
    if not v.size:
        raise ValueError("phase has no finite values")
    vmin, vmax = float(v.min()), float(v.max())
    if max(abs(vmin), abs(vmax)) <= np.pi * RADIAN_SLACK:
        return "radians" if vmax - vmin >= np.pi else "rescale"
    if _is_integer_valued(v) and vmin >= -4096 and vmax <= 4095:
        return "siemens"
    raise ValueError(f"phase values {vmin:.6g}..{vmax:.6g} are neither radians (within ±π) nor "
                     "Siemens integers (0..4095 or -4096..4095)")


def phase_to_radians(data, assume: str = "auto"):
    """Return ``(radians, how)``: the phase as float32 radians in [−π, π] and a short
    description of what was done.

    ``assume``: ``"auto"`` (:func:`detect_unit`; ValueError when it cannot tell),
    ``"radians"``, ``"siemens"`` or ``"rescale"`` to force one interpretation. NaN (and ±inf,
    which become NaN) are kept where they are; an array without any finite value is returned
    unchanged as NaN with ``how == "no finite values"``.
    """
    a = np.asarray(data, dtype=np.float64)
    out = np.full(a.shape, np.nan, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return out.astype(np.float32), "no finite values"
    v = a[finite]
    vmin, vmax = float(v.min()), float(v.max())
    if assume not in ("auto", "radians", "siemens", "rescale"):
        raise ValueError(f"unknown phase interpretation {assume!r}")

    kind = detect_unit(v) if assume == "auto" else assume

    if kind == "radians":
        r = np.clip(v, -np.pi, np.pi)
        how = f"radians (range {vmin:.4g}..{vmax:.4g}); clipped to ±π"
    elif kind == "siemens":
        if vmin >= 0:
            r = (v - 2048.0) * (np.pi / 2048.0)
            how = f"Siemens unsigned 12-bit integers (range {vmin:.0f}..{vmax:.0f}): (v-2048)*pi/2048"
        else:
            r = v * (np.pi / 4096.0)
            how = f"Siemens signed integers (range {vmin:.0f}..{vmax:.0f}): v*pi/4096"
    else:
        if vmax > vmin:
            r = (v - vmin) / (vmax - vmin) * (2.0 * np.pi) - np.pi
        else:
            r = np.zeros_like(v)
        how = f"rescaled linearly from {vmin:.6g}..{vmax:.6g} to -pi..pi"
    out[finite] = r
    n_nan = int((~finite).sum())
    if n_nan:
        how += f"; {n_nan} non-finite voxels kept as NaN"
    return out.astype(np.float32), how


def wrap(phase):
    """Wrap radians into (−π, π] (numpy)."""
    p = np.asarray(phase)
    return np.angle(np.exp(1j * p)).astype(p.dtype if p.dtype.kind == "f" else np.float64)

"""Grid geometry from NIfTI affines (no torch, so that light commands start fast)."""
from __future__ import annotations

import numpy as np


def b0_direction(affine: np.ndarray) -> np.ndarray:
    """Unit vector of the scanner z axis (B0) in the array's axis frame.

    Column j of the affine's 3×3 part is the world displacement of one step along array
    axis j; its z component divided by the voxel size is the cosine between axis j and B0.
    Valid for oblique, LPS- or RAS-ordered arrays.
    """
    m = np.asarray(affine, dtype=float)[:3, :3]
    vs = np.linalg.norm(m, axis=0)
    b = m[2, :] / vs
    return b / np.linalg.norm(b)


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)


def axial_axis(affine) -> int:
    """The array axis closest to the scanner z axis (world RAS/LPS third coordinate)."""
    a = np.asarray(affine, dtype=float)[:3, :3]
    cols = a / np.linalg.norm(a, axis=0)
    return int(np.argmax(np.abs(cols[2])))

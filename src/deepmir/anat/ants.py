"""The one bridge to ANTs (antspyx, imported lazily): images and affine transforms between
numpy/RAS and ANTs/LPS, and a fixed random seed for ANTs' metric sampling. The conventions
are those of :mod:`deepmir.anat` (its docstring)."""
from __future__ import annotations

import contextlib
import os

import numpy as np

from deepmir import niio
from deepmir.errors import InputError

_F = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse)


def set_threads(n) -> None:
    """ITK/ANTs thread count: set before antspyx is first used (it reads the environment)."""
    if n:
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(n))
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")


def _ants():
    import ants  # imported lazily: slow import, and only the numerics need it
    return ants


@contextlib.contextmanager
def _ants_seed(seed):
    """Run ANTs calls with ``--random-seed seed`` (antspyx reads ``ants.config``)."""
    ants = _ants()
    old = ants.config._random_seed
    ants.config._random_seed = None if seed is None else int(seed)
    try:
        yield
    finally:
        ants.config._random_seed = old


def _check_3d(a, name):
    a = np.asarray(a)
    if a.ndim != 3:
        raise ValueError(f"{name}: expected a 3D array, got shape {a.shape}")
    return a


def to_ants(array, affine):
    """ANTsImage (float32, LPS physical space) of a 3D array with a RAS NIfTI affine.

    The affine must be a rotation/reflection times voxel sizes (no shear), which is what
    NIfTI qforms and scanner sforms are; a sheared affine raises ``ValueError``.
    """
    ants = _ants()
    array = _check_3d(array, "image")
    lps = _F @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise ValueError("affine has a zero-length voxel axis")
    direction = lps[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError("affine has shear (its 3×3 part is not rotation × voxel sizes)")
    return ants.from_numpy(np.ascontiguousarray(array, dtype=np.float32),
                           origin=tuple(float(x) for x in lps[:3, 3]),
                           spacing=tuple(float(x) for x in spacing),
                           direction=direction)


def from_ants(img):
    """(array, RAS affine) of a 3D ANTsImage."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(img.direction, dtype=float) @ np.diag(img.spacing)
    lps[:3, 3] = img.origin
    return img.numpy(), _F @ lps


def _ants_to_ras(tx) -> np.ndarray:
    """4×4 RAS matrix of an ANTs/ITK affine transform (same direction as the ITK one).

    ITK: ``p' = A (p − c) + t + c`` in LPS with parameters = (A row-major, t) and fixed
    parameters = c.
    """
    par = np.asarray(tx.parameters, dtype=float)
    c = np.asarray(tx.fixed_parameters, dtype=float)
    a = par[:9].reshape(3, 3)
    t = par[9:12]
    lps = np.eye(4)
    lps[:3, :3] = a
    lps[:3, 3] = t + c - a @ c
    return _F @ lps @ _F


def _ras_to_ants(T_ras, path):
    """Write the RAS matrix ``T_ras`` (same direction as the wanted ITK transform) as an ITK
    AffineTransform file and return the path."""
    ants = _ants()
    lps = _F @ np.asarray(T_ras, dtype=float) @ _F
    tx = ants.create_ants_transform(transform_type="AffineTransform", precision="double",
                                    dimension=3, matrix=lps[:3, :3],
                                    translation=lps[:3, 3], center=(0.0, 0.0, 0.0))
    ants.write_transform(tx, str(path))
    return str(path)


# inputs as ANTs needs them
def load_for_ants(path, ndim: int, what: str):
    """An anatomical input as ANTs needs it: finite, some positive intensity, no shear."""
    data, affine = niio.load_image(path, what, ndim=(ndim,))
    if not np.all(np.isfinite(data)):
        raise InputError(path, f"{what}: contains NaN or infinite values")
    if not np.any(data > 0):
        raise InputError(path, f"{what}: no positive intensity")
    vs = np.linalg.norm(affine[:3, :3], axis=0)
    d = affine[:3, :3] / vs
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
        raise InputError(path, f"{what}: the affine has shear, which ANTs cannot represent")
    return data, affine


def load_gre(mag_path, info_path):
    """(4D magnitude, affine, index of the shortest echo) from the inputs-stage files."""
    mag, affine = load_for_ants(mag_path, 4, "4D MEGRE magnitude")
    order = list(range(mag.shape[3]))
    if info_path:
        try:
            info = niio.read_json(info_path)
        except (OSError, ValueError) as err:
            raise InputError(info_path, f"MEGRE.json: unreadable ({err})")
        te = info.get("EchoTime")
        if not isinstance(te, list) or len(te) != mag.shape[3]:
            raise InputError(info_path, f"EchoTime must list {mag.shape[3]} echo times (one per "
                                        f"volume of {mag_path})")
        order = list(np.argsort(np.asarray(te, dtype=float), kind="stable"))
    return mag[..., order], affine

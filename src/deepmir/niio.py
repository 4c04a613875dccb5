"""NIfTI / JSON / text / PNG input and output: the only place that touches files.

Every writer goes through :func:`atomic`: the data goes to a temporary name beside the output
(the same extension, so nibabel adds none) and is renamed onto it only when complete; a write
that fails (read-only folder, disk full) removes the temporary file and raises one
:class:`OutputError` line naming the output. Inside :func:`together`, the renames wait until
every output of the block is written, so a failure leaves none of them.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

from deepmir.errors import InputError, OutputError

NIFTI_EXTENSIONS = (".nii", ".nii.gz")
_serial = itertools.count()           # two writes of one path in a process get two names
_pending: list | None = None        # (temporary, final) renames of the open together() block


# ----------------------------------------------------------------------------- reading
def regular_file(path, what: str = "file") -> Path:
    """``path`` when it is a regular file (links followed); else a one-line InputError (a FIFO
    would block a reader, a broken or looping link would look like a missing file)."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except OSError as err:
        if p.is_symlink():
            raise InputError(p, f"{what} is a broken or looping symbolic link") from None
        raise InputError(p, f"{what} not found" if not p.exists() else
                         f"cannot read {what} ({err.strerror})") from None
    if not stat.S_ISREG(mode):
        raise InputError(p, f"{what} is not a regular file (a folder, FIFO or device)")
    return p


def read_text(path, what: str = "file") -> str:
    """A regular UTF-8 text file's content (a byte-order mark is dropped)."""
    p = regular_file(path, what)
    try:
        return p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(p, f"{what} is not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise InputError(p, f"cannot read {what} ({err.strerror})") from None


def read_json(path, what: str = "JSON file"):
    try:
        return json.loads(read_text(path, what))
    except ValueError as err:
        raise InputError(path, f"{what} is not valid JSON ({err})") from None


def load(path, dtype=np.float32):
    """(array, affine) of a NIfTI file, scaled by the header's slope/intercept."""
    img = nib.load(str(path))
    return np.asarray(img.dataobj, dtype=dtype), img.affine.copy()


def load_image(path, what: str = "image", ndim=(3,), dtype=np.float32):
    """(array, affine) of a NIfTI input, or a one-line InputError naming the file: missing or
    not a regular file, not readable as NIfTI, a non-finite or singular affine, or not
    ``ndim``-dimensional (a trailing axis of length 1 is dropped to reach 3D)."""
    p = regular_file(path, what)
    try:
        data, aff = load(p, dtype=dtype)
    except Exception as err:  # nibabel raises many kinds
        first = str(err).splitlines()[0] if str(err) else ""
        raise InputError(path, f"cannot read {what} as NIfTI ({type(err).__name__}: {first})") from None
    if not np.all(np.isfinite(aff)):
        raise InputError(path, f"{what} has a non-finite affine")
    if abs(np.linalg.det(aff[:3, :3])) < 1e-9:
        raise InputError(path, f"{what} has a singular affine (zero voxel size or no orientation)")
    if data.ndim == 4 and 3 in ndim and 4 not in ndim and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in ndim:
        raise InputError(path, f"{what} must be {' or '.join(f'{n}D' for n in ndim)}, "
                               f"got shape {tuple(data.shape)}")
    return data, aff


def check_nifti_name(path, option: str) -> None:
    """A one-line InputError, before any work, when an output that must be NIfTI is not named
    so (None: the output is not asked for)."""
    if path and not str(path).endswith(NIFTI_EXTENSIONS):
        raise InputError(path, f"{option} must end in .nii or .nii.gz")


def check_grid(path, shape, affine, ref_shape, ref_affine, what: str = "image", atol: float = 1e-3):
    """A one-line InputError when an input is not on a reference grid (the first three axes
    and the affine within ``atol`` mm)."""
    if tuple(shape[:3]) != tuple(ref_shape[:3]):
        raise InputError(path, f"{what} shape {tuple(shape[:3])} differs from {tuple(ref_shape[:3])}")
    if not np.allclose(affine, ref_affine, atol=atol):
        raise InputError(path, f"{what} is not on the same grid (affines differ by up to "
                               f"{np.abs(np.asarray(affine) - ref_affine).max():.4g} mm)")


def read_matrix(path) -> np.ndarray:
    """A 4×4 RAS-mm transform from a text file, or a one-line InputError."""
    path = regular_file(path, "transform")
    try:
        m = np.loadtxt(path, ndmin=2)
    except ValueError as err:
        raise InputError(path, f"transform: not a numeric 4×4 text matrix ({err})")
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise InputError(path, f"transform: expected a finite 4×4 matrix, got shape {m.shape}")
    if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-6):
        raise InputError(path, "transform: the last row must be 0 0 0 1")
    return m


def write_matrix(path, m) -> Path:
    """A 4×4 RAS-mm matrix as text (the synthetic truth's format), atomically."""
    return write_text(path, "\n".join(" ".join(f"{v:.9g}" for v in row) for row in np.asarray(m)) + "\n")


def sidecar_path(nifti) -> Path:
    """The JSON sidecar of a NIfTI path (BIDS: the same name with .json)."""
    p = Path(nifti)
    name = p.name
    for ext in NIFTI_EXTENSIONS[::-1]:          # .nii.gz before .nii
        if name.endswith(ext):
            return p.with_name(name[: -len(ext)] + ".json")
    return p.with_name(name + ".json")


# ----------------------------------------------------------------------------- writing
@contextmanager
def atomic(path):
    """Yield a temporary path beside ``path`` to write; renamed onto ``path`` when the block
    succeeds (at the end of an enclosing :func:`together`), removed when it fails."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{next(_serial)}-{path.name}")
    kept = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        yield tmp
        if _pending is None:
            os.replace(tmp, path)
        else:
            _pending.append((tmp, path))
        kept = True
    except OSError as err:
        raise OutputError(path, f"cannot write ({err.strerror or err})") from None
    finally:
        if not kept:
            _remove(tmp)


@contextmanager
def together():
    """Outputs written inside the block appear together at its end, or none of them."""
    global _pending
    if _pending is not None:
        yield
        return
    _pending = []
    try:
        yield
        for tmp, path in _pending:
            try:
                os.replace(tmp, path)
            except OSError as err:
                raise OutputError(path, f"cannot write ({err.strerror or err})") from None
    finally:
        for tmp, _ in _pending:
            _remove(tmp)
        _pending = None


def _remove_stale(path: Path):
    """Temporary files of this output left by a writer that was killed (kill -9): one job
    writes an output, so any other process's temporary file of it is stale."""
    stale = re.compile(rf"\.tmp-(?!{os.getpid()}-)\d+-\d+-{re.escape(path.name)}")
    for p in path.parent.iterdir():
        if stale.fullmatch(p.name):
            _remove(p)


def _remove(p: Path):
    try:
        p.unlink()
    except OSError:
        pass


def save(path, data, affine, dtype=None):
    """Write a NIfTI (``.nii`` or ``.nii.gz``) atomically, creating the folder."""
    path = Path(path)
    if not path.name.endswith(NIFTI_EXTENSIONS):
        raise OutputError(path, "a NIfTI output must end in .nii or .nii.gz")
    arr = np.asarray(data)
    if dtype is not None:
        arr = arr.astype(dtype)
    elif arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=float))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    with atomic(path) as tmp:
        nib.save(img, str(tmp))
    return path


def save_all(images, sidecars=()) -> None:
    """Every (path, array, affine) NIfTI and (path, dict) JSON sidecar (a path None: not
    asked for), together: all of them appear, or none."""
    with together():
        for path, arr, aff in images:
            if path:
                save(path, arr, aff)
        for path, obj in sidecars:
            if path:
                write_json(path, obj)


def write_text(path, text: str | bytes):
    """Write text (UTF-8) or bytes atomically, creating the folder."""
    with atomic(path) as tmp:
        tmp.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return Path(path)


def copy(source, path):
    """Copy a file's bytes atomically, creating the folder (a published copy of a working file)."""
    with atomic(path) as tmp:
        shutil.copyfile(source, tmp)
    return Path(path)


def write_json(path, obj):
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def write_tsv(path, df, float_format="%.6g"):
    """A pandas DataFrame as a tab-separated table with a header row."""
    return write_text(path, df.to_csv(sep="\t", index=False, float_format=float_format))


def write_png(path, fig, **savefig):
    """A matplotlib figure as PNG (``savefig`` keywords: dpi, bbox_inches, facecolor …)."""
    with atomic(path) as tmp:
        fig.savefig(tmp, format="png", **savefig)
    return Path(path)


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")

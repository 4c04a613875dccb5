"""NIfTI / JSON / text / PNG input and output: the only place that touches files.

Every writer goes through :func:`atomic`: the data goes to a temporary name beside the output
(the same extension, so nibabel adds none) and is renamed onto it only when complete; a write
that fails (read-only folder, disk full) removes the temporary file and raises one
:class:`OutputError` line naming the output. Inside :func:`together`, the renames wait until
every output of the block is written, so a failure leaves none of them.
"""
from __future__ import annotations

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
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
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
    stale = re.compile(rf"\.tmp-(?!{os.getpid()}-)\d+-{re.escape(path.name)}")
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

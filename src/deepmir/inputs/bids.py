"""The input layer: find participants (and sessions) in a BIDS dataset, check them against the
data contract (``docs`` of the project: shared/docs/data-contract.md), and load the
multi-echo GRE series as arrays with phase in radians.

Every refusal is an :class:`InputError` naming the file and the problem. Checks come in two
levels so that a cohort of thousands can be listed quickly:

- :func:`check_headers` reads only NIfTI headers and JSON sidecars (missing files and fields,
  echo gaps, 4D files, shape/affine mismatches, unreadable headers);
- :func:`load_checked` reads the voxels (truncated files, NaN/Inf-only or all-zero volumes,
  annotation labels other than 0/1/2).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from deepmir import niio
from deepmir.errors import InputError
from deepmir.geometry import b0_direction, voxel_sizes
from deepmir.phase import detect_unit, phase_to_radians

LABELS = (0, 1, 2)          # annotation dseg: background, microbleed, iron deposit
AFFINE_TOL_MM = 1e-3
QFORM_TOL_MM = 0.1          # sform and qform may differ by rounding, not by a placement
MIN_ECHO_TIME_S = 1e-4      # shorter: EchoTime is not in seconds
MAX_DEFLATE_RATIO = 1100    # gzip's deflate cannot compress more than ~1032:1
LABEL_RE = re.compile(r"[A-Za-z0-9]+")
NAME_RE = re.compile(r"^((?:[a-z]+-[A-Za-z0-9]+_)+)([A-Za-z0-9]+)\.nii(\.gz)?$")
GRE_SUFFIXES = ("MEGRE", "T2starw")       # multi-echo GRE, with echo- and part- entities
# the entities that tell two series of one contrast apart (and that bids_filters may name)
SERIES_ENTITIES = ("acq", "ce", "rec", "run")


@dataclass
class Record:
    """Where one participant's (or subject-session's) files are."""
    sub: str
    ses: str | None
    anat_dir: Path
    mag: list = field(default_factory=list)
    phase: list = field(default_factory=list)
    t1w: Path | None = None
    t2w: Path | None = None
    annotation: Path | None = None

    @property
    def pid(self) -> str:
        return self.sub if self.ses is None else f"{self.sub}_{self.ses}"

    def sidecar(self, nifti: Path) -> Path:
        return nifti.with_name(re.sub(r"\.nii(\.gz)?$", ".json", nifti.name))


def parse_name(name: str):
    """``(entities, suffix)`` of a BIDS NIfTI file name (entities in file order, values as
    strings), or None when the name is not of the form ``key-value_…_suffix.nii[.gz]``."""
    m = NAME_RE.match(name)
    if not m:
        return None
    pairs = [kv.split("-", 1) for kv in m.group(1).rstrip("_").split("_")]
    return dict(pairs), m.group(2)


def _series_label(entities: dict, suffix: str) -> str:
    return "_".join([f"{k}-{entities[k]}" for k in SERIES_ENTITIES if k in entities] + [suffix])


def _choose_series(found: dict, wanted: dict, folder: Path, what: str, option: str):
    """``(key, files)`` of the one series of ``found`` ({(suffix, series entities): files})
    that matches every entity in ``wanted`` (``suffix`` included); (None, None) when there is
    none; several: refused in one line listing them and naming the option that chooses."""
    def same(a, b):        # run 1 selects run-01 too
        a, b = str(a), None if b is None else str(b)
        return a == b or (b is not None and a.isdigit() and b.isdigit() and int(a) == int(b))
    keep = {k: v for k, v in found.items()
            if all(same(wanted[e], k[0] if e == "suffix" else dict(k[1]).get(e)) for e in wanted)}
    if len(keep) > 1:
        names = ", ".join(sorted(_series_label(dict(k[1]), k[0]) for k in keep))
        raise InputError(folder, f"several {what} series ({names}): choose one with {option} "
                                 "(BIDS entities acq, ce, rec, run or suffix)")
    return next(iter(keep.items())) if keep else (None, None)


def _nifti(folder: Path, stem: str) -> Path | None:
    """``stem.nii.gz`` or ``stem.nii`` in folder (refuse both at once, and a broken link)."""
    found = [p for p in (folder / f"{stem}.nii.gz", folder / f"{stem}.nii") if p.exists() or p.is_symlink()]
    if len(found) > 1:
        raise InputError(found[1], f"both {found[0].name} and {found[1].name} exist; keep one")
    return niio.regular_file(found[0], "image") if found else None


def _folders(parent: Path, prefix: str, what: str) -> list[Path]:
    """The ``prefix``-named entries of parent (sub-* or ses-*), each a folder with a BIDS label
    of letters and digits only."""
    found = []
    for p in sorted(parent.iterdir()):
        if not p.name.startswith(prefix):
            continue
        if not p.is_dir():
            raise InputError(p, f"{what} entry is not a folder" + (" (broken or looping symbolic link)"
                                                                   if p.is_symlink() and not p.exists() else ""))
        if not LABEL_RE.fullmatch(p.name[len(prefix):]):
            raise InputError(p, f"{what} label {p.name[len(prefix):]!r} must be letters and digits only")
        found.append(p)
    return found


def discover(bids_dir, annotations: str = "annotations", only: str | None = None,
             filters: dict | None = None) -> list[Record]:
    """All participants (subject or subject-session) with their files, sorted by id; with
    ``only`` (a participant id), just that one (other participants are not looked at).
    ``filters``: ``{"gre" | "T1w" | "T2w": {entity: value}}`` choosing among several series of
    one contrast (config ``bids_filters``)."""
    root = Path(bids_dir)
    if not root.is_dir():
        raise InputError(root, "BIDS directory does not exist")
    description = root / "dataset_description.json"
    if not (description.exists() or description.is_symlink()):
        raise InputError(description, "missing: not a BIDS dataset root")
    if not isinstance(niio.read_json(description, "dataset_description.json"), dict):
        raise InputError(description, "dataset_description.json is not a JSON object")
    subs = _folders(root, "sub-", "subject")
    seen: dict[str, Path] = {}
    for sdir in subs:
        key = sdir.name.lower()
        if key in seen:
            raise InputError(sdir, f"duplicate subject: same label as {seen[key].name} "
                                   "(labels differing only in case)")
        seen[key] = sdir
    _check_participants_tsv(root, [s.name for s in subs], compare=only is None)
    if only is not None:
        subs = [s for s in subs if s.name == only.split("_")[0]]
        if not subs:
            raise InputError(root / only.split("_")[0], "no such participant in the dataset")
    records = []
    for sdir in subs:
        sessions = _folders(sdir, "ses-", "session")
        if sessions and ((sdir / "anat").exists() or (sdir / "anat").is_symlink()):
            raise InputError(sdir / "anat", f"anat folder beside session folders ({sessions[0].name}, …): "
                                            "move it into a session")
        units = [(s.name, s / "anat") for s in sessions] or [(None, sdir / "anat")]
        for ses, anat in units:
            rec = Record(sub=sdir.name, ses=ses, anat_dir=anat)
            if only is not None and rec.pid != only:
                continue
            _find_files(rec, root, annotations, filters or {})
            records.append(rec)
    if not records:
        raise InputError(root, "no sub-* folders: the dataset has no participants")
    return records


def _check_participants_tsv(root: Path, subs: list[str], compare: bool = True):
    """participants.tsv (optional): UTF-8, participant_id first, no duplicates, and with
    ``compare`` exactly the subject folders."""
    tsv = root / "participants.tsv"
    if not (tsv.exists() or tsv.is_symlink()):
        return
    lines = [ln.split("\t") for ln in niio.read_text(tsv, "participants.tsv").splitlines() if ln.strip()]
    if not lines or lines[0][0].strip() != "participant_id":
        raise InputError(tsv, "first column must be 'participant_id'")
    ids = [ln[0].strip() for ln in lines[1:]]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(tsv, f"duplicate participant_id {', '.join(dup)}")
    if compare:
        for which, names in (("listed but has no folder", sorted(set(ids) - set(subs))),
                             ("has a folder but is not listed", sorted(set(subs) - set(ids)))):
            if names:
                raise InputError(tsv, f"{', '.join(names[:5])}{' …' if len(names) > 5 else ''} {which}")


def _find_files(rec: Record, root: Path, annotations: str, filters: dict):
    """The participant's files, by BIDS entities: the multi-echo GRE (``MEGRE`` or
    ``T2starw`` with ``echo-`` and ``part-mag|phase``), T1w and T2w, each one series (several,
    told apart by acq/ce/rec/run, need ``filters``), and the annotation dseg."""
    prefix = rec.pid
    if not rec.anat_dir.is_dir():
        raise InputError(rec.anat_dir, "missing anat folder")
    want = {"sub": rec.sub[4:], **({"ses": rec.ses[4:]} if rec.ses else {})}
    gre: dict = {}
    anat: dict[str, dict] = {"T1w": {}, "T2w": {}}
    for p in sorted(rec.anat_dir.iterdir()):
        if p.name.startswith(prefix + "_") and p.is_symlink() and not p.exists():
            raise InputError(p, "broken or looping symbolic link")
        parsed = parse_name(p.name)
        if parsed is None:
            continue
        ent, suffix = parsed
        if {k: ent.get(k) for k in want} != want:
            continue
        key = (suffix, tuple((k, ent[k]) for k in SERIES_ENTITIES if k in ent))
        if suffix in GRE_SUFFIXES and "echo" in ent and ent.get("part") in ("mag", "phase"):
            if not ent["echo"].isdigit():
                raise InputError(p, f"echo label {ent['echo']!r} is not a number")
            echoes = gre.setdefault(key, {"mag": {}, "phase": {}})[ent["part"]]
            n = int(ent["echo"])
            if n in echoes:
                raise InputError(p, f"echo {n} ({ent['part']}) given twice")
            echoes[n] = p
        elif suffix in anat and not set(ent) - {"sub", "ses", *SERIES_ENTITIES}:
            if key in anat[suffix]:
                raise InputError(p, f"both {anat[suffix][key].name} and {p.name} exist; keep one")
            anat[suffix][key] = niio.regular_file(p, "image")
    key, echoes = _choose_series(gre, filters.get("gre", {}), rec.anat_dir, "multi-echo GRE",
                                 "bids_filters.gre")
    if not echoes or not echoes["mag"]:
        raise InputError(rec.anat_dir / f"{prefix}_echo-1_part-mag_MEGRE.nii.gz",
                         "missing: no magnitude echoes (MEGRE, or T2starw with part-mag) for "
                         "this participant" + (" that bids_filters.gre selects" if gre else ""))
    n_echo = max(max(echoes["mag"]), max(echoes["phase"], default=0))
    series = "".join(f"_{k}-{v}" for k, v in key[1])
    for n in range(1, n_echo + 1):
        for part in ("mag", "phase"):
            if n not in echoes[part]:
                other = echoes["mag" if part == "phase" else "phase"].get(n)
                what = "echo numbering gap" if other is None else f"{part} missing for echo {n}"
                raise InputError(rec.anat_dir / f"{prefix}{series}_echo-{n}_part-{part}_{key[0]}.nii.gz",
                                 f"missing ({what}; echoes must be numbered 1..{n_echo})")
    rec.mag = [echoes["mag"][n] for n in range(1, n_echo + 1)]
    rec.phase = [echoes["phase"][n] for n in range(1, n_echo + 1)]
    rec.t1w, rec.t2w = (_choose_series(anat[s], filters.get(s, {}), rec.anat_dir, s,
                                       f"bids_filters.{s}")[1] for s in ("T1w", "T2w"))
    ann_dir = root / "derivatives" / annotations / rec.sub
    if rec.ses:
        ann_dir = ann_dir / rec.ses
    rec.annotation = _nifti(ann_dir / "anat", f"{prefix}_space-MEGRE_dseg")


# header-level checks ---------------------------------------------------------------------

def image_header(path: Path):
    """(nibabel image, 3D shape) of a NIfTI file after the header-level checks (readable, 3D,
    real voxels, size, orientation); one-line InputError otherwise."""
    niio.regular_file(path, "image")
    size = path.stat().st_size
    if size == 0:
        raise InputError(path, "empty file")
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises several types for broken files
        raise InputError(path, f"unreadable NIfTI ({type(err).__name__}: {str(err).splitlines()[0]})")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(path, f"expected a 3D image, found {len(img.shape)}D with shape {img.shape}")
    dtype = img.get_data_dtype()
    if dtype.kind not in "biuf":
        raise InputError(path, f"voxel type {dtype} is not real numbers (complex or RGB data?)")
    hdr = img.header
    need = int(np.prod(img.shape, dtype=np.float64)) * dtype.itemsize
    room = size - int(hdr.get("vox_offset", 0)) if path.name.endswith(".nii") else size * MAX_DEFLATE_RATIO
    if need > room:
        raise InputError(path, f"the header's {'x'.join(map(str, img.shape))} {dtype} voxels "
                               f"({need / 1e6:.4g} MB) do not fit in the file ({size} bytes)")
    if "sform_code" in hdr and hdr["sform_code"] == 0 and hdr["qform_code"] == 0:
        raise InputError(path, "no orientation: the sform and qform codes are both 0")
    if not np.all(np.isfinite(img.affine)) or abs(np.linalg.det(img.affine[:3, :3])) < 1e-9:
        raise InputError(path, "the affine (sform/qform) is missing or singular")
    if "sform_code" in hdr and hdr["sform_code"] > 0 and hdr["qform_code"] > 0:
        corners = np.array([[i, j, k, 1] for i in (0, shape[0]) for j in (0, shape[1]) for k in (0, shape[2])]).T
        apart = np.abs(hdr.get_sform() @ corners - hdr.get_qform() @ corners).max()
        if not apart <= QFORM_TOL_MM:
            raise InputError(path, f"the sform and qform disagree (by up to {apart:.3g} mm): which "
                                   "orientation is right? Fix the header or zero one of the codes")
    return img, shape


def _json(path: Path) -> dict:
    if not (path.exists() or path.is_symlink()):
        raise InputError(path, "missing JSON sidecar")
    meta = niio.read_json(path, "JSON sidecar")
    if not isinstance(meta, dict):
        raise InputError(path, "JSON sidecar is not an object")
    return meta


def _number(meta, key, path, lo, hi, unit):
    if key not in meta:
        raise InputError(path, f"missing field {key}")
    v = meta[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        raise InputError(path, f"{key} must be a number, found {v!r}")
    if not lo < v < hi:
        raise InputError(path, f"{key} = {v} is outside the plausible range {lo}..{hi} {unit}")
    return float(v)


def check_headers(rec: Record, min_echoes: int = 1) -> dict:
    """Header/JSON checks; returns the series description used by later stages."""
    if len(rec.mag) < min_echoes:
        raise InputError(rec.mag[0], f"{len(rec.mag)} echo(es) found, at least {min_echoes} needed")
    ref_img, ref_shape = image_header(rec.mag[0])
    te, b0, sign, b0_dirs = [], [], [], []   # (value, sidecar) pairs, but te: (echo, value, sidecar)
    for path in rec.mag + rec.phase:
        img, shape = image_header(path)
        if shape != ref_shape:
            raise InputError(path, f"shape {shape} differs from {rec.mag[0].name} {ref_shape}")
        if not np.allclose(img.affine, ref_img.affine, atol=AFFINE_TOL_MM):
            raise InputError(path, f"affine differs from {rec.mag[0].name}")
    for n, (mpath, ppath) in enumerate(zip(rec.mag, rec.phase), start=1):
        for path in (mpath, ppath):
            meta = _json(rec.sidecar(path))
            jpath = rec.sidecar(path)
            t = _number(meta, "EchoTime", jpath, MIN_ECHO_TIME_S, 1.0, "s (EchoTime is in seconds)")
            te.append((n, t, jpath))
            b0.append((_number(meta, "MagneticFieldStrength", jpath, 0, 20, "T"), jpath))
            if "PhaseSign" in meta:
                v = meta["PhaseSign"]
                if isinstance(v, bool) or v not in (1, -1):
                    raise InputError(jpath, f"PhaseSign must be 1 or -1, found {v!r}")
                sign.append((int(v), jpath))
            if "B0_dir" in meta:
                v = meta["B0_dir"]
                ok = (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) and
                                                                  not isinstance(x, bool) for x in v))
                v = np.asarray(v, float) if ok else None
                if v is None or not np.isfinite(v).all() or np.linalg.norm(v) == 0:
                    raise InputError(jpath, f"B0_dir must be 3 numbers, found {meta['B0_dir']!r}")
                b0_dirs.append((v / np.linalg.norm(v), jpath))
    for values, key, differ in ((b0, "MagneticFieldStrength", lambda a, b: abs(a - b) > 1e-3),
                                (sign, "PhaseSign", lambda a, b: a != b),
                                (b0_dirs, "B0_dir", lambda a, b: np.abs(a - b).max() > 1e-3)):
        for v, jpath in values[1:]:
            if differ(v, values[0][0]):
                raise InputError(jpath, f"{key} {_show(v)} differs from {_show(values[0][0])} in "
                                        f"{values[0][1].name}: the series must agree")
    echo_times = []
    for n in range(1, len(rec.mag) + 1):
        ts = [t for k, t, _ in te if k == n]
        if max(ts) - min(ts) > 1e-6:
            bad = [p for k, _, p in te if k == n][1]
            raise InputError(bad, f"EchoTime {ts[1]} differs from magnitude echo {n} ({ts[0]})")
        echo_times.append(ts[0])
    for k in range(1, len(echo_times)):
        if echo_times[k] <= echo_times[k - 1]:
            bad = [p for n, _, p in te if n == k + 1][0]
            raise InputError(bad, f"EchoTime {echo_times[k]} s is not after echo {k} "
                                  f"({echo_times[k - 1]} s): echoes must be in order")
    if rec.annotation is not None:
        img, shape = image_header(rec.annotation)
        if shape != ref_shape or not np.allclose(img.affine, ref_img.affine, atol=AFFINE_TOL_MM):
            raise InputError(rec.annotation, f"annotation grid {shape} does not match the MEGRE "
                                             f"grid {ref_shape} of {rec.mag[0].name}")
    for path in (rec.t1w, rec.t2w):
        if path is not None:
            image_header(path)
    affine = ref_img.affine
    b0_dir = b0_dirs[0][0] if b0_dirs else b0_direction(affine)
    return {
        "EchoTime": echo_times,
        "MagneticFieldStrength": b0[0][0],
        "B0_dir": [float(x) for x in b0_dir],
        "B0_dir_source": "JSON B0_dir" if b0_dirs else "affine",
        "PhaseSign": sign[0][0] if sign else None,
        "VoxelSize": [float(x) for x in voxel_sizes(affine)],
        "Shape": list(ref_shape),
    }


def _show(v) -> str:
    return f"[{', '.join(f'{x:.4g}' for x in v)}]" if isinstance(v, np.ndarray) else f"{v:g}"


# data-level checks -----------------------------------------------------------------------

def _data(path: Path, shape) -> np.ndarray:
    try:
        a = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    except Exception as err:
        raise InputError(path, f"unreadable or truncated NIfTI data ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else 'no detail'})")
    return a.reshape(shape)


def _finite_volume(a: np.ndarray, path: Path, kind: str):
    finite = np.isfinite(a)
    if not finite.any():
        raise InputError(path, f"{kind} volume has no finite values (all NaN/Inf)")
    if not np.any(a[finite] != 0):
        raise InputError(path, f"{kind} volume is all zero")


def load_series(rec: Record, info: dict | None = None, phase_unit: str = "auto"):
    """Checked magnitude and phase (radians) as 4D float32 arrays (echoes last), the affine,
    and the series description (``info`` of :func:`check_headers` plus ``PhaseConversion``)."""
    info = dict(info or check_headers(rec))
    shape = tuple(info["Shape"])
    mags, phases = [], []
    for path in rec.mag:
        a = _data(path, shape)
        _finite_volume(a, path, "magnitude")
        if np.nanmin(a) < 0:
            raise InputError(path, "magnitude has negative values (is this a phase image?)")
        mags.append(np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0))
    for path in rec.phase:
        a = _data(path, shape)
        if not np.isfinite(a).any():
            raise InputError(path, "phase volume has no finite values (all NaN/Inf)")
        if np.nanmax(a) == np.nanmin(a):
            raise InputError(path, f"phase volume is constant ({np.nanmax(a):g})")
        phases.append(a)
    if phase_unit == "auto":
        # one unit for the whole series: an echo detected otherwise (an outlier voxel, a
        # mixed-up file) is refused rather than converted differently from the others
        units = []
        for path, a in zip(rec.phase, phases):
            try:
                units.append(detect_unit(a))
            except ValueError as err:
                raise InputError(path, f"{err}; set phase_unit (radians, siemens or rescale) if you know it")
        common = Counter(units).most_common(1)[0][0]
        for path, unit in zip(rec.phase, units):
            if unit != common:
                raise InputError(path, f"phase looks like {unit} but the other echoes like {common}: "
                                       "the echoes must share one unit (set phase_unit to force one)")
        phase_unit = common
    converted = [phase_to_radians(a, assume=phase_unit) for a in phases]
    rad = np.nan_to_num(np.stack([r for r, _ in converted], axis=-1), nan=0.0)
    info["PhaseConversion"] = [f"echo {n}: {how}" for n, (_, how) in enumerate(converted, 1)]
    affine = nib.load(str(rec.mag[0])).affine
    return np.stack(mags, axis=-1), rad, affine, info


def load_annotation(rec: Record, shape) -> np.ndarray | None:
    if rec.annotation is None:
        return None
    a = _data(rec.annotation, tuple(shape))
    if not np.isfinite(a).all():
        raise InputError(rec.annotation, "annotation has NaN/Inf values")
    values = np.unique(a)
    bad = [v for v in values if v not in LABELS]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:5])
        raise InputError(rec.annotation, f"labels must be 0 (background), 1 (microbleed) or "
                                         f"2 (iron deposit); found {shown}")
    return a.astype(np.uint8)


def load_checked(rec: Record, min_echoes: int = 1, phase_unit: str = "auto", info=None):
    """Every check, header and voxel level; returns what :func:`load_series` returns."""
    info = info or check_headers(rec, min_echoes)
    mag, rad, affine, info = load_series(rec, info, phase_unit)
    load_annotation(rec, info["Shape"])
    for path, kind in ((rec.t1w, "T1w"), (rec.t2w, "T2w")):
        if path is not None:
            _finite_volume(_data(path, image_header(path)[1]), path, kind)
    return mag, rad, affine, info


def find(bids_dir, pid: str, annotations: str = "annotations", filters: dict | None = None) -> Record:
    """The record of one participant, looking at no other."""
    records = discover(bids_dir, annotations, only=pid, filters=filters)
    if not records:
        raise InputError(Path(bids_dir) / pid.replace("_", "/"), "no such participant/session")
    return records[0]

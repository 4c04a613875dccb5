"""Malformed inputs beyond tests/test_inputs.py: layouts and labels, file-system surprises,
participants.tsv against the folders, sidecars that disagree, phase units, header geometry and
`deepmir qsm` options. Each case is refused with exit 2, exactly one stderr line naming the file
(or option), and an empty output folder; the ones a header shows are refused by
`snakemake -n` as well, in one line, before anything is written."""
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import make_minimal_bids
from deepmir.cli import main

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
A = "sub-01/anat/sub-01"
AFF = np.diag([1.0, 1.0, 1.5, 1.0])


# ------------------------------------------------------------------ mutations of a valid dataset
def _nii(path, data, aff=AFF, qform=None):
    img = nib.Nifti1Image(np.asarray(data), aff)
    if qform is not None:
        img.set_qform(qform, code=1)
    nib.save(img, path)


def _singular(path, data, sform):
    """A NIfTI whose sform is the given (singular) matrix; nibabel's image constructor refuses
    to build one, so the header is written directly."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(data.dtype)
    hdr.set_sform(sform, code=1)
    nib.save(nib.Nifti1Image(data, None, header=hdr), path)


def _json(path, **kw):
    d = json.loads(Path(path).read_text())
    d.update(kw)
    Path(path).write_text(json.dumps(d))


def _both(r, n, **kw):
    for part in ("mag", "phase"):
        _json(r / f"{A}_echo-{n}_part-{part}_MEGRE.json", **kw)


def _shape(r):
    return nib.load(r / f"{A}_echo-1_part-mag_MEGRE.nii.gz").shape


def _phase(r, n):
    return np.asarray(nib.load(r / f"{A}_echo-{n}_part-phase_MEGRE.nii.gz").dataobj)


def _replace(path, make):
    """Remove path (file or folder) and put make(path) in its place."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    make(path)


def _fifo(path):
    _replace(path, os.mkfifo)


def _loop(path):
    _replace(path, lambda p: p.symlink_to(p.name))


def _broken(path):
    _replace(path, lambda p: p.symlink_to("nowhere.nii.gz"))


def _rename_subject(r, new):
    """sub-01 (folder, files and annotation) renamed to `new`, participants.tsv too."""
    (r / "sub-01").rename(r / new)
    for f in (r / new / "anat").iterdir():
        f.rename(f.with_name(f.name.replace("sub-01", new)))
    shutil.rmtree(r / "derivatives")
    (r / "participants.tsv").write_text(f"participant_id\n{new}\n")


def _into_session(r, ses, keep_anat=False):
    """sub-01's files moved into sub-01/<ses>/anat (the plain anat/ kept beside it on request)."""
    src = r / "sub-01" / "anat"
    dst = r / "sub-01" / ses / "anat"
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (shutil.copy if keep_anat else shutil.move)(str(f), dst / f.name.replace("sub-01_", f"sub-01_{ses}_"))
    if not keep_anat:
        src.rmdir()
    shutil.rmtree(r / "derivatives")


def _huge_gz(path):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((32000, 32000, 32000))
    hdr.set_data_dtype(np.float32)
    hdr.set_sform(AFF, code=1)
    hdr.set_qform(AFF, code=1)
    path.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4))


def _truncated_nii(r):
    gz = r / f"{A}_echo-2_part-mag_MEGRE.nii.gz"
    raw = gzip.decompress(gz.read_bytes())
    gz.unlink()
    gz.with_suffix("").write_bytes(raw[: 352 + 100])       # header + 100 bytes of data


def _no_orientation(path):
    img = nib.load(path)
    img = nib.Nifti1Image(np.asarray(img.dataobj), None)
    img.set_sform(None, code=0)
    img.set_qform(None, code=0)
    nib.save(img, path)


def _outlier(r):
    a = _phase(r, 1).copy()
    a[0, 0, 0] = 4.0                 # one voxel beyond π: radians no longer fit echo 1
    _nii(r / f"{A}_echo-1_part-phase_MEGRE.nii.gz", a.astype(np.float32))


def _siemens_echo1(r):
    ints = np.clip(np.round(_phase(r, 1) * 2048 / np.pi + 2048), 0, 4095)
    _nii(r / f"{A}_echo-1_part-phase_MEGRE.nii.gz", ints.astype(np.int16))


def _scaled(r, n, lo, hi):
    rng = np.random.default_rng(n)
    _nii(r / f"{A}_echo-{n}_part-phase_MEGRE.nii.gz", rng.uniform(lo, hi, _shape(r)).astype(np.float32))


def _ann(r):
    return r / "derivatives/annotations/sub-01/anat/sub-01_space-MEGRE_dseg.nii.gz"


FLIP = np.diag([-1.0, 1.0, 1.5, 1.0])
MAG1 = f"{A}_echo-1_part-mag_MEGRE"
PH1 = f"{A}_echo-1_part-phase_MEGRE"

# (name, mutation(root), the text the message must hold (the file), refused at parse time)
CASES = [
    # labels and layout
    ("subject label with a space", lambda r: _rename_subject(r, "sub-0 1"), "sub-0 1", True),
    ("subject label with é", lambda r: _rename_subject(r, "sub-é1"), "sub-é1", True),
    ("subject label '..'", lambda r: _rename_subject(r, "sub-.."), "sub-..", True),
    ("subject label with ';'", lambda r: _rename_subject(r, "sub-0;1"), "sub-0;1", True),
    ("empty subject label", lambda r: _rename_subject(r, "sub-"), "sub-", True),
    ("same participant in two layouts", lambda r: (shutil.copytree(r / "sub-01", r / "sub-01_ses-1"),
                                                   _into_session(r, "ses-1")), "sub-01_ses-1", True),
    ("session label with '_'", lambda r: _into_session(r, "ses-1_2"), "ses-1_2", True),
    ("session label with a space", lambda r: _into_session(r, "ses-1 2"), "ses-1 2", True),
    ("anat/ beside ses-*/", lambda r: _into_session(r, "ses-1", keep_anat=True), "sub-01/anat", True),
    ("sub-* is a file", lambda r: (r / "sub-03").write_text("x"), "sub-03", True),
    ("no anat folder", lambda r: shutil.rmtree(r / "sub-01/anat"), "sub-01/anat", True),
    # file-system surprises
    ("looping symlink subject", lambda r: _loop(r / "sub-02"), "sub-02", True),
    ("looping symlink echo", lambda r: _loop(r / f"{MAG1}.nii.gz"), "sub-01_echo-1_part-mag_MEGRE.nii.gz", True),
    ("broken symlink echo", lambda r: _broken(r / f"{A}_echo-2_part-phase_MEGRE.nii.gz"),
     "sub-01_echo-2_part-phase_MEGRE.nii.gz", True),
    ("broken symlink T2w", lambda r: _broken(r / f"{A}_T2w.nii.gz"), "sub-01_T2w.nii.gz", True),
    ("looping symlink T2w", lambda r: _loop(r / f"{A}_T2w.nii.gz"), "sub-01_T2w.nii.gz", True),
    ("broken symlink annotation", lambda r: _broken(_ann(r)), "sub-01_space-MEGRE_dseg.nii.gz", True),
    ("looping symlink sidecar", lambda r: _loop(r / f"{PH1}.json"), "sub-01_echo-1_part-phase_MEGRE.json", True),
    ("FIFO sidecar", lambda r: _fifo(r / f"{A}_echo-2_part-mag_MEGRE.json"), "sub-01_echo-2_part-mag_MEGRE.json", True),
    ("FIFO echo", lambda r: _fifo(r / f"{PH1}.nii.gz"), "sub-01_echo-1_part-phase_MEGRE.nii.gz", True),
    ("FIFO T2w", lambda r: _fifo(r / f"{A}_T2w.nii.gz"), "sub-01_T2w.nii.gz", True),
    ("FIFO participants.tsv", lambda r: _fifo(r / "participants.tsv"), "participants.tsv", True),
    ("FIFO dataset_description.json", lambda r: _fifo(r / "dataset_description.json"),
     "dataset_description.json", True),
    ("sidecar is a folder", lambda r: _replace(r / f"{MAG1}.json", Path.mkdir), "sub-01_echo-1_part-mag_MEGRE.json", True),
    # participants.tsv and dataset_description.json
    ("non-UTF-8 participants.tsv", lambda r: (r / "participants.tsv").write_bytes(b"participant_id\nsub-01\xe9\n"),
     "participants.tsv", True),
    ("participants.tsv lists a missing folder", lambda r: (r / "participants.tsv").write_text(
        "participant_id\nsub-01\nsub-09\n"), "participants.tsv", True),
    ("folder not in participants.tsv", lambda r: (r / "participants.tsv").write_text("participant_id\nsub-02\n"),
     "participants.tsv", True),
    ("participants.tsv without participant_id", lambda r: (r / "participants.tsv").write_text("id\tage\nsub-01\t3\n"),
     "participants.tsv", True),
    ("empty participants.tsv", lambda r: (r / "participants.tsv").write_text(""), "participants.tsv", True),
    ("dataset_description.json not JSON", lambda r: (r / "dataset_description.json").write_text("Name: x"),
     "dataset_description.json", True),
    ("dataset_description.json a list", lambda r: (r / "dataset_description.json").write_text("[]"),
     "dataset_description.json", True),
    # sidecars
    ("non-UTF-8 sidecar", lambda r: (r / f"{MAG1}.json").write_bytes(b'{"EchoTime": 0.005, "x": "\xff"}'),
     "sub-01_echo-1_part-mag_MEGRE.json", True),
    ("sidecar is a list", lambda r: (r / f"{MAG1}.json").write_text("[0.005, 3]"), "sub-01_echo-1_part-mag_MEGRE.json", True),
    ("field strength: phase JSON disagrees", lambda r: _json(r / f"{PH1}.json", MagneticFieldStrength=1.5),
     "sub-01_echo-1_part-phase_MEGRE.json", True),
    ("field strength: echo 3 disagrees", lambda r: _both(r, 3, MagneticFieldStrength=7),
     "sub-01_echo-3_part-mag_MEGRE.json", True),
    ("B0_dir: phase JSON disagrees", lambda r: (_both(r, 1, B0_dir=[0, 0, 1]), _json(r / f"{PH1}.json", B0_dir=[0, 1, 0])),
     "sub-01_echo-1_part-phase_MEGRE.json", True),
    ("PhaseSign: echoes disagree", lambda r: (_json(r / f"{PH1}.json", PhaseSign=1),
                                              _json(r / f"{A}_echo-2_part-phase_MEGRE.json", PhaseSign=-1)),
     "sub-01_echo-2_part-phase_MEGRE.json", True),
    ("PhaseSign true", lambda r: _json(r / f"{PH1}.json", PhaseSign=True), "sub-01_echo-1_part-phase_MEGRE.json", True),
    ("PhaseSign 2", lambda r: _json(r / f"{PH1}.json", PhaseSign=2), "sub-01_echo-1_part-phase_MEGRE.json", True),
    ("PhaseSign '1'", lambda r: _json(r / f"{PH1}.json", PhaseSign="1"), "sub-01_echo-1_part-phase_MEGRE.json", True),
    ("B0_dir of two numbers", lambda r: _json(r / f"{PH1}.json", B0_dir=[0, 1]), "sub-01_echo-1_part-phase_MEGRE.json", True),
    ("B0_dir of zeros", lambda r: _json(r / f"{PH1}.json", B0_dir=[0, 0, 0]), "sub-01_echo-1_part-phase_MEGRE.json", True),
    ("B0_dir with a string", lambda r: _json(r / f"{PH1}.json", B0_dir=[0, "a", 1]), "sub-01_echo-1_part-phase_MEGRE.json", True),
    ("EchoTime in microseconds", lambda r: _both(r, 1, EchoTime=5e-6), "sub-01_echo-1_part-mag_MEGRE.json", True),
    ("EchoTime negative", lambda r: _both(r, 1, EchoTime=-0.005), "sub-01_echo-1_part-mag_MEGRE.json", True),
    ("EchoTime as text", lambda r: _both(r, 2, EchoTime="0.01"), "sub-01_echo-2_part-mag_MEGRE.json", True),
    ("EchoTime NaN", lambda r: (r / f"{MAG1}.json").write_text('{"EchoTime": NaN, "MagneticFieldStrength": 3}'),
     "sub-01_echo-1_part-mag_MEGRE.json", True),
    ("EchoTime: mag and phase differ", lambda r: _json(r / f"{A}_echo-2_part-phase_MEGRE.json", EchoTime=0.011),
     "sub-01_echo-2_part-phase_MEGRE.json", True),
    ("field strength 0", lambda r: _both(r, 1, MagneticFieldStrength=0), "sub-01_echo-1_part-mag_MEGRE.json", True),
    ("field strength 300 T", lambda r: _both(r, 1, MagneticFieldStrength=300), "sub-01_echo-1_part-mag_MEGRE.json", True),
    ("one echo, two needed", lambda r: [(r / f"{A}_echo-{n}_part-{p}_MEGRE{e}").unlink() for n in (2, 3)
                                        for p in ("mag", "phase") for e in (".nii.gz", ".json")],
     "sub-01_echo-1_part-mag_MEGRE.nii.gz", True),
    ("an echo as .nii and .nii.gz", lambda r: shutil.copy(r / f"{MAG1}.nii.gz", r / f"{MAG1}.nii"),
     "sub-01_echo-1_part-mag_MEGRE.nii", True),
    # header geometry
    ("no orientation (sform and qform codes 0)", lambda r: _no_orientation(r / f"{MAG1}.nii.gz"),
     "sub-01_echo-1_part-mag_MEGRE.nii.gz", True),
    ("sform and qform disagree", lambda r: _nii(r / f"{A}_T2w.nii.gz", np.ones((10, 11, 9), np.float32), np.eye(4), FLIP),
     "sub-01_T2w.nii.gz", True),
    ("complex magnitude", lambda r: _nii(r / f"{MAG1}.nii.gz", (np.ones(_shape(r)) * (1 + 1j)).astype(np.complex64)),
     "sub-01_echo-1_part-mag_MEGRE.nii.gz", True),
    ("complex phase", lambda r: _nii(r / f"{PH1}.nii.gz", (np.ones(_shape(r)) * 1j).astype(np.complex64)),
     "sub-01_echo-1_part-phase_MEGRE.nii.gz", True),
    ("header of 32000³ voxels in a tiny .nii.gz", lambda r: _huge_gz(r / f"{A}_echo-3_part-phase_MEGRE.nii.gz"),
     "sub-01_echo-3_part-phase_MEGRE.nii.gz", True),
    ("uncompressed NIfTI shorter than its header says", _truncated_nii, "sub-01_echo-2_part-mag_MEGRE.nii", True),
    ("singular affine", lambda r: _singular(r / f"{A}_T2w.nii.gz", np.ones((10, 11, 9), np.float32), np.diag([1, 0, 1, 1.0])),
     "sub-01_T2w.nii.gz", True),
    ("T1w 4D", lambda r: _nii(r / f"{A}_T1w.nii.gz", np.ones((5, 5, 5, 2), np.float32)), "sub-01_T1w.nii.gz", True),
    ("annotation without orientation", lambda r: _no_orientation(_ann(r)), "sub-01_space-MEGRE_dseg.nii.gz", True),
    ("annotation on another grid", lambda r: _nii(_ann(r), np.zeros(_shape(r), np.uint8), FLIP),
     "sub-01_space-MEGRE_dseg.nii.gz", True),
    # voxel level (the participant's inputs job)
    ("phase: one outlier voxel beyond π", _outlier, "sub-01_echo-1_part-phase_MEGRE.nii.gz", False),
    ("phase: echoes in different units", _siemens_echo1, "sub-01_echo-1_part-phase_MEGRE.nii.gz", False),
    ("phase: float 0..20000", lambda r: [_scaled(r, n, 0, 20000) for n in (1, 2, 3)],
     "sub-01_echo-1_part-phase_MEGRE.nii.gz", False),
    ("phase: integers beyond Siemens'", lambda r: [_nii(r / f"{A}_echo-{n}_part-phase_MEGRE.nii.gz",
                                                        np.full(_shape(r), 9000, np.int16) + np.arange(_shape(r)[2], dtype=np.int16))
                                                   for n in (1, 2, 3)], "sub-01_echo-1_part-phase_MEGRE.nii.gz", False),
    ("phase all NaN", lambda r: _nii(r / f"{A}_echo-2_part-phase_MEGRE.nii.gz", np.full(_shape(r), np.nan, np.float32)),
     "sub-01_echo-2_part-phase_MEGRE.nii.gz", False),
    ("magnitude only Inf", lambda r: _nii(r / f"{MAG1}.nii.gz", np.full(_shape(r), np.inf, np.float32)),
     "sub-01_echo-1_part-mag_MEGRE.nii.gz", False),
    ("negative magnitude", lambda r: _nii(r / f"{MAG1}.nii.gz", -np.ones(_shape(r), np.float32)),
     "sub-01_echo-1_part-mag_MEGRE.nii.gz", False),
    ("annotation with NaN", lambda r: _nii(_ann(r), np.full(_shape(r), np.nan, np.float32)),
     "sub-01_space-MEGRE_dseg.nii.gz", False),
    ("annotation label 1.5", lambda r: _nii(_ann(r), np.full(_shape(r), 1.5, np.float32)),
     "sub-01_space-MEGRE_dseg.nii.gz", False),
    ("T2w all zero", lambda r: _nii(r / f"{A}_T2w.nii.gz", np.zeros((10, 11, 9), np.float32), np.eye(4)),
     "sub-01_T2w.nii.gz", False),
]


# participants.tsv against the folders: the whole dataset's check (validate, the workflow's start)
DATASET_LEVEL = {"participants.tsv lists a missing folder", "folder not in participants.tsv"}


class _Hang(Exception):
    pass


def _alarm(*_):
    raise _Hang("blocked (a FIFO read?)")


def _cli(argv, capsys):
    """exit code and stderr lines of `deepmir argv`, failing instead of hanging."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(30)
    try:
        code = main(argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return code, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def _dataset(tmp_path, mutate):
    root = make_minimal_bids(tmp_path / "bids", subjects=("sub-01", "sub-02"))
    mutate(root)
    return root


@pytest.mark.parametrize("name,mutate,named,parse", CASES, ids=[c[0] for c in CASES])
def test_refused_with_one_line_and_nothing_written(tmp_path, capsys, name, mutate, named, parse):
    root = _dataset(tmp_path, mutate)
    pid = next((p.name for p in sorted(root.glob("sub-01*")) if p.is_dir()), "sub-01")
    out = tmp_path / ("job" if name in DATASET_LEVEL else "out")
    out.mkdir()
    code, err = _cli(["inputs", "--bids-dir", str(root), "--pid", pid, "--min-echoes", "2",
                      "--mag", str(out / "m.nii.gz"), "--phase", str(out / "p.nii.gz"), "--json", str(out / "i.json")],
                     capsys)
    if name in DATASET_LEVEL:
        assert code == 0, err            # one participant's job does not compare the whole list …
        out = tmp_path / "out"
        out.mkdir()
        code, err = _cli(["validate", str(root)], capsys)       # … the dataset check does
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("deepmir ") and named in err[0], err
    assert list(out.iterdir()) == []


PARSE = [c for c in CASES if c[3]]


@pytest.mark.parametrize("name,mutate,named,parse", PARSE, ids=[c[0] for c in PARSE])
def test_refused_when_the_workflow_starts(tmp_path, name, mutate, named, parse):
    root = _dataset(tmp_path, mutate)
    (tmp_path / "config.yaml").write_text(json.dumps({"bids_dir": str(root), "output_dir": str(tmp_path / "out")}))
    res = subprocess.run([str(SNAKEMAKE), "-s", str(ROOT / "workflow" / "Snakefile"), "--directory", str(tmp_path), "-n",
                          "--configfile", str(tmp_path / "config.yaml")],
                         capture_output=True, text=True, timeout=120)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode != 0 and len(lines) == 1, res.stderr[-2000:]
    assert lines[0].startswith("deepmir: error: ") and named in lines[0], lines
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ deepmir qsm options
@pytest.fixture(scope="module")
def field(tmp_path_factory):
    d = tmp_path_factory.mktemp("qsmopts")
    aff = np.eye(4)
    m = np.zeros((16, 16, 16), np.uint8)
    m[4:12, 4:12, 4:12] = 1
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(0, 0.01, m.shape).astype(np.float32), aff),
             d / "field.nii.gz")
    nib.save(nib.Nifti1Image(m, aff), d / "mask.nii.gz")
    _singular(d / "zero_affine.nii.gz", np.ones(m.shape, np.float32), np.zeros((4, 4)))
    os.mkfifo(d / "fifo.nii.gz")
    return d


QSM_CASES = [
    ("--tkd-threshold 0", ["--method", "tkd", "--tkd-threshold", "0"], "--tkd-threshold"),
    ("--tkd-threshold -0.1", ["--method", "tkd", "--tkd-threshold", "-0.1"], "--tkd-threshold"),
    ("--tkd-threshold nan", ["--method", "tkd", "--tkd-threshold", "nan"], "--tkd-threshold"),
    ("--lambda -1000", ["--lambda", "-1000"], "--lambda"),
    ("--lambda 0", ["--lambda", "0"], "--lambda"),
    ("--b0 inf", ["--b0", "inf"], "--b0"),
    ("--b0 -3", ["--b0", "-3"], "--b0"),
    ("--te 0", ["--te", "0"], "--te"),
    ("--te 20 (ms)", ["--te", "20"], "--te"),
    ("--smv-radius -1", ["--smv-radius", "-1"], "--smv-radius"),
    ("field with a zero affine", ["--field", "{d}/zero_affine.nii.gz"], "zero_affine.nii.gz"),
    ("field is a FIFO", ["--field", "{d}/fifo.nii.gz"], "fifo.nii.gz"),
    ("field missing", ["--field", "{d}/nope.nii.gz"], "nope.nii.gz"),
    ("--output without a NIfTI extension", ["--output", "{out}/chi"], "chi"),
    ("--output .nii.gz.tmp", ["--output", "{out}/chi.nii.gz.tmp"], "chi.nii.gz.tmp"),
]


@pytest.mark.parametrize("name,extra,named", QSM_CASES, ids=[c[0] for c in QSM_CASES])
def test_qsm_options_refused(field, tmp_path, capsys, name, extra, named):
    out = tmp_path / "out"
    out.mkdir()
    argv = {"--field": str(field / "field.nii.gz"), "--field-unit": "ppm", "--mask": str(field / "mask.nii.gz"),
            "--output": str(out / "chi.nii.gz"), "--device": "cpu"}
    flags = []
    for i in range(0, len(extra), 2):
        v = extra[i + 1].format(d=field, out=out)
        if extra[i] in argv:
            argv[extra[i]] = v
        else:
            flags += [extra[i], v]
    code, err = _cli(["qsm", *[x for kv in argv.items() for x in kv], *flags], capsys)
    assert code == 2 and len(err) == 1 and named in err[0], err
    assert list(out.iterdir()) == []                         # no χ, no stray .tmp-*


# the workflow's commands check their options before reading anything
RUN_CASES = [
    ("qsm-run --chi without extension", ["qsm-run", "--chi", "{out}/chi.img"], "chi.img"),
    ("qsm-run lambda -1", ["qsm-run", "--config-json", '{{"lambda": -1}}'], "qsm.lambda"),
    ("qsm-run mask_erode_mm -2", ["qsm-run", "--config-json", '{{"mask_erode_mm": -2}}'], "qsm.mask_erode_mm"),
    ("qsm-run unknown key", ["qsm-run", "--config-json", '{{"lamda": 1}}'], "lamda"),
    ("swi window 1", ["swi", "--config-json", '{{"window": 1}}'], "swi.window"),
    ("swi --minip without extension", ["swi", "--minip", "{out}/minip"], "minip"),
]


@pytest.mark.parametrize("name,extra,named", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_qsm_run_and_swi_options_refused(tmp_path, capsys, name, extra, named):
    out = tmp_path / "out"
    out.mkdir()
    files = {k: str(tmp_path / f"{k}.nii.gz") for k in ("mag", "phase", "mask")}
    argv = {"qsm-run": {"--chi": f"{out}/chi.nii.gz", "--r2s": f"{out}/r2s.nii.gz", "--field": f"{out}/f.nii.gz"},
            "swi": {"--output": f"{out}/swi.nii.gz", "--minip": f"{out}/minip.nii.gz"}}[extra[0]]
    argv.update({f"--{k}": v for k, v in files.items()}, **{"--json": str(tmp_path / "MEGRE.json")})
    argv[extra[1]] = extra[2].format(out=out)
    code, err = _cli([extra[0], *[x for kv in argv.items() for x in kv]], capsys)
    assert code == 2 and len(err) == 1 and named in err[0], err
    assert list(out.iterdir()) == []


def test_the_suite_has_at_least_60_cases():
    from test_inputs import MALFORMED
    assert len(MALFORMED) + len(CASES) + len(QSM_CASES) + len(RUN_CASES) >= 60

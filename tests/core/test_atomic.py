"""Every output goes through one atomic writer (deepmir.niio): a temporary name with the real
extension, renamed when complete; a job that cannot write (read-only folder, disk full) fails
with one line and leaves no file, partial or temporary, behind."""
import os
import re
import resource
import shutil
import signal
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import make_minimal_bids
from deepmir import niio
from deepmir.errors import OutputError

AFF = np.eye(4)


def test_the_temporary_name_keeps_the_extension(tmp_path, monkeypatch):
    names = []
    real = nib.save
    monkeypatch.setattr(nib, "save", lambda img, f: (names.append(os.path.basename(f)), real(img, f)))
    niio.save(tmp_path / "a.nii.gz", np.ones((2, 2, 2)), AFF)
    niio.save(tmp_path / "b.nii", np.ones((2, 2, 2)), AFF)
    assert names[0].startswith(".tmp-") and names[0].endswith("-a.nii.gz") and names[1].endswith("-b.nii")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "b.nii"]


@pytest.mark.parametrize("name", ["chi", "chi.nii.gz.tmp", "chi.npz", "chi.gz"])
def test_a_nifti_output_needs_a_nifti_extension(tmp_path, name):
    with pytest.raises(OutputError, match="must end in .nii or .nii.gz"):
        niio.save(tmp_path / name, np.ones((2, 2, 2)), AFF)
    assert list(tmp_path.iterdir()) == []


WRITERS = {
    "nifti": lambda p: niio.save(p / "x.nii.gz", np.random.default_rng(0).normal(size=(20, 20, 20)), AFF),
    "json": lambda p: niio.write_json(p / "x.json", {"a": list(range(1000))}),
    "tsv": lambda p: niio.write_tsv(p / "x.tsv", pd.DataFrame({"a": np.arange(5000.0)})),
    "text": lambda p: niio.write_text(p / "x.md", "x" * 10000),
    "png": lambda p: niio.write_png(p / "x.png", _figure()),
}


def _figure():
    from matplotlib.figure import Figure
    fig = Figure()
    fig.add_subplot().plot([0, 1])
    return fig


def _on_a_full_disk(write):
    """Runs write() in a forked child whose writes past 4 kB fail (EFBIG) as on a full disk; the
    limit stays in the child, so this process's own output (a CI log past 4 kB) is untouched.
    Returns (exception type name, message) or None when nothing was raised."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        result = ""
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
            write()
        except BaseException as exc:  # reported to the parent, whatever it is
            result = f"{type(exc).__name__}\t{exc}"
        os.write(write_end, result.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        result = f.read().decode()
    os.waitpid(pid, 0)
    return tuple(result.split("\t", 1)) if result else None


@pytest.mark.parametrize("kind", WRITERS)
def test_a_write_that_fails_half_way_leaves_nothing(tmp_path, kind):
    """The first 4 kB are written, then the disk is full: the partial file is removed."""
    raised = _on_a_full_disk(lambda: WRITERS[kind](tmp_path))
    assert raised is not None and raised[0] == "OutputError", raised
    assert re.search(r"x\.[\w.]+: cannot write \(File too large\)", raised[1]), raised
    assert "\n" not in raised[1]
    assert list(tmp_path.iterdir()) == []


def test_outputs_written_together_appear_together(tmp_path):
    with pytest.raises(RuntimeError):
        with niio.together():
            niio.write_text(tmp_path / "a.txt", "a")
            niio.save(tmp_path / "b.nii.gz", np.ones((2, 2, 2)), AFF)
            raise RuntimeError("a later step fails")
    assert list(tmp_path.iterdir()) == []
    with niio.together():
        niio.write_text(tmp_path / "a.txt", "a")
        assert list(tmp_path.iterdir())[0].name.startswith(".tmp-")        # not yet in place
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_killed_writer_s_temporary_file_goes_with_the_next_write(tmp_path):
    (tmp_path / ".tmp-999999-3-a.nii.gz").write_bytes(b"half")           # a writer killed with -9
    (tmp_path / ".tmp-999999-3-b-a.nii.gz").write_bytes(b"other")        # another output's
    niio.save(tmp_path / "a.nii.gz", np.ones((2, 2, 2)), AFF)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-999999-3-b-a.nii.gz", "a.nii.gz"]


def test_a_folder_that_cannot_be_made(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="cannot write"):
        niio.write_json(tmp_path / "file" / "sub" / "x.json", {})


# ------------------------------------------------------------------ through the command line
def _inputs(bids, out):
    return [sys.executable, "-m", "deepmir.cli", "inputs", "--bids-dir", str(bids), "--pid", "sub-01",
            "--mag", str(out / "m.nii.gz"), "--phase", str(out / "p.nii.gz"), "--json", str(out / "i.json")]


def _read_only(folder, cmd):
    """cmd run with folder read-only: chmod for a normal user; root ignores modes, so a
    read-only bind mount in a private mount namespace (skipped where that is not allowed)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return subprocess.run(cmd, capture_output=True, text=True)
    if not shutil.which("unshare"):
        pytest.skip("root without unshare: no read-only folder to test with")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip("unshare -m not permitted here")
    script = 'mount --bind -o ro "$1" "$1" && shift && exec "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(folder), *cmd],
                          capture_output=True, text=True)


def test_a_read_only_output_folder_fails_in_one_line(tmp_path):
    bids = make_minimal_bids(tmp_path / "bids")
    out = tmp_path / "out"
    out.mkdir()
    res = _read_only(out, _inputs(bids, out))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "m.nii.gz: cannot write (Read-only file system)" in lines[0] or "Permission denied" in lines[0], lines
    out.chmod(0o755)
    assert list(out.iterdir()) == []


def test_a_full_disk_fails_in_one_line(tmp_path):
    """A file-size limit makes every write past 4 kB fail as a full disk would."""
    bids = make_minimal_bids(tmp_path / "bids")
    out = tmp_path / "out"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    res = subprocess.run(_inputs(bids, out), capture_output=True, text=True, preexec_fn=limit)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "m.nii.gz: cannot write (File too large)" in lines[0], lines
    assert list(out.iterdir()) == []


def test_two_writes_of_one_path_in_one_block_get_two_temporary_names(tmp_path):
    """Inside together(), writing the same output twice used to reuse one temporary name (the
    second write overwrote the first's file before its rename); the last write wins now."""
    out = tmp_path / "a.txt"
    with niio.together():
        niio.write_text(out, "first")
        names = [p.name for p in tmp_path.iterdir()]
        niio.write_text(out, "second")
        assert len({p.name for p in tmp_path.iterdir()}) == 2 and len(names) == 1
    assert out.read_text() == "second" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]

"""bench/outputs_digest.py: the checksum list that proves a refactor changed no result."""
import gzip
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np

from deepmir import niio

spec = importlib.util.spec_from_file_location(
    "outputs_digest", Path(__file__).resolve().parents[2] / "bench" / "outputs_digest.py")
od = importlib.util.module_from_spec(spec)
spec.loader.exec_module(od)


def _tree(root):
    niio.save(root / "qsm" / "chi.nii.gz", np.arange(8.0).reshape(2, 2, 2), np.eye(4))
    niio.write_text(root / "t.tsv", "a\tb\n1\t2\n")
    niio.write_json(root / "i.json", {"a": 1, "b": [1, 2]})
    np.savez(root / "s.npz", x=np.ones(3, np.float32))
    niio.write_text(root / "report" / "benchmarks.tsv", "s\n1.0\n")
    niio.write_text(root / "logs" / "job.log", "took 3 s\n")
    niio.write_text(root / ".bidsignore", "logs/\n")              # an output, hidden or not
    return root


def test_same_content_same_list_whatever_the_encoding(tmp_path):
    a = _tree(tmp_path / "a")
    before = od.record(a)
    assert set(before) == {"qsm/chi.nii.gz", "t.tsv", "i.json", "s.npz", ".bidsignore"}  # no timings
    b = shutil.copytree(a, tmp_path / "b")
    nii = b / "qsm" / "chi.nii.gz"                 # another gzip stream of the same image
    raw = gzip.decompress(nii.read_bytes())
    nii.write_bytes(gzip.compress(raw, compresslevel=1, mtime=12345))
    assert nii.read_bytes() != (a / "qsm" / "chi.nii.gz").read_bytes()
    (b / "i.json").write_text(json.dumps({"b": [1, 2], "a": 1}, indent=4))
    niio.write_text(b / "report" / "benchmarks.tsv", "s\n9.0\n")
    assert od.check(b, before) == []


def test_a_changed_voxel_or_file_is_reported(tmp_path, capsys):
    a = _tree(tmp_path / "a")
    listed = tmp_path / "before.tsv"
    assert od.main(["record", str(a)]) == 0
    listed.write_text(capsys.readouterr().out)
    assert od.main(["check", str(a), str(listed)]) == 0
    x = np.arange(8.0).reshape(2, 2, 2)
    x[1, 1, 1] += 1e-3                             # one voxel, one float32 step or more
    niio.save(a / "qsm" / "chi.nii.gz", x, np.eye(4))
    (a / "t.tsv").unlink()
    niio.write_text(a / "new.tsv", "z\n")
    assert od.main(["check", str(a), str(listed)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == ["missing: t.tsv", "extra: new.tsv", "changed: qsm/chi.nii.gz"]


def test_checkpoints_by_content_and_training_logs_without_wall_times(tmp_path):
    """A checkpoint counts by what it holds (not the zip stream, whose record names came from
    the temporary file's name), and a training log's `seconds` do not count."""
    import torch

    from deepmir.learn.train import _save

    a, b = tmp_path / "a", tmp_path / "b"
    for root, prefix, secs in ((a, "x", 1.5), (b, "y", 9.0)):
        ck = {"model": {"w": torch.arange(4.0)}, "history": [{"iteration": 1, "seconds": secs}]}
        root.mkdir()
        torch.save(ck, root / f"{prefix}.pt")
        (root / f"{prefix}.pt").rename(root / "best.pt")
        niio.write_text(root / "log.tsv", f"iteration\tloss\tseconds\n1\t0.5\t{secs}\n")
    assert od.check(b, od.record(a)) == []
    torch.save({"model": {"w": torch.arange(4.0) + 1}, "history": []}, b / "best.pt")
    niio.write_text(b / "log.tsv", "iteration\tloss\tseconds\n1\t0.6\t9.0\n")
    assert od.check(b, od.record(a)) == ["changed: best.pt", "changed: log.tsv"]
    _save({"w": torch.ones(2)}, tmp_path / "c.pt")          # the pipeline's writer: same bytes twice
    first = (tmp_path / "c.pt").read_bytes()
    _save({"w": torch.ones(2)}, tmp_path / "c.pt")
    assert (tmp_path / "c.pt").read_bytes() == first

"""bench/chaos.py's comparison of a resumed run with the uninterrupted one (the runs themselves
take minutes: `bench/chaos.py --n 2`)."""
import importlib.util
from pathlib import Path

import numpy as np

from deepmir import niio

spec = importlib.util.spec_from_file_location("chaos", Path(__file__).resolve().parents[2] / "bench" / "chaos.py")
chaos = importlib.util.module_from_spec(spec)
spec.loader.exec_module(chaos)


def _tree(root):
    niio.save(root / "qsm" / "chi.nii.gz", np.arange(8.0).reshape(2, 2, 2), np.eye(4))
    niio.write_text(root / "t.tsv", "a\tb\n1\t2\n")
    niio.write_json(root / "i.json", {"a": 1})
    niio.write_text(root / "report" / "benchmarks.tsv", "s\n1.0\n")
    return root


def test_compare_finds_every_kind_of_difference(tmp_path):
    ref, run = _tree(tmp_path / "ref"), _tree(tmp_path / "run")
    niio.write_text(run / "report" / "benchmarks.tsv", "s\n2.0\n")          # timings: not compared
    niio.write_text(run / "logs" / "qsm" / "sub-1.log", "qsm: 3.1 s\n")     # logs neither
    niio.write_text(run / "benchmarks" / "qsm" / "sub-1.tsv", "s\n3.1\n")
    assert chaos.compare(ref, run) == ([], 3)
    niio.save(run / "qsm" / "chi.nii.gz", (np.arange(8.0) + (np.arange(8) == 7) * 1e-3).reshape(2, 2, 2),
              np.eye(4))
    niio.write_text(run / "t.tsv", "a\tb\n1\t3\n")
    (run / "i.json").unlink()
    (run / "qsm" / ".tmp-123-chi.nii.gz").write_bytes(b"")
    diffs, n = chaos.compare(ref, run)
    assert diffs == ["left behind: qsm/.tmp-123-chi.nii.gz", "missing: i.json",
                     "qsm/chi.nii.gz: NIfTI data differ (1 voxels)", "t.tsv: text differs"], diffs

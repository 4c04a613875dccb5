"""A checksum list of a workflow output folder, to prove that a change altered no result.

Each file that bench/chaos.py compares gets one SHA-256 of its *content* with the same
meaning: a NIfTI's data array (dtype, shape, bytes) and affine, not its gzip stream; an .npz's
arrays by name; JSON parsed and re-written with sorted keys; a torch checkpoint (.pt) by what
it holds (tensors by dtype, shape and bytes, other values by repr), not its zip stream; text and
other files byte for byte. Wall times are left out: the jobs' logs, Snakemake benchmarks, the
benchmark tables and PNG figures (as in chaos.py), and a training log's or checkpoint's
``seconds`` (the `seconds` column of a TSV, `seconds` entries of a checkpoint). Record a list before a refactor, run the same configuration
after it on the same machine (floating-point results differ between CPUs), and check:

    .venv/bin/python bench/outputs_digest.py record results > before.tsv
    .venv/bin/python bench/outputs_digest.py check results before.tsv    # exit 1 on a difference
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chaos import _nifti, compared, output_files  # noqa: E402


def _array_bytes(h, a: np.ndarray) -> None:
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())


def _object_bytes(h, x) -> None:
    """A checkpoint's content, in a fixed order; wall times (``seconds``) left out."""
    import torch

    if isinstance(x, dict):
        for k in sorted(x, key=str):
            if k != "seconds":
                h.update(repr(k).encode())
                _object_bytes(h, x[k])
    elif isinstance(x, (list, tuple)):
        h.update(f"{type(x).__name__}{len(x)}".encode())
        for v in x:
            _object_bytes(h, v)
    elif torch.is_tensor(x):
        _array_bytes(h, x.detach().cpu().numpy())
    else:
        h.update(repr(x).encode())


def _tsv_without_seconds(text: str) -> str:
    rows = [line.split("\t") for line in text.splitlines()]
    if not rows or "seconds" not in rows[0]:
        return text
    i = rows[0].index("seconds")
    return "\n".join("\t".join(r[:i] + r[i + 1:]) for r in rows)


def digest(path: Path) -> str:
    """SHA-256 of one file's content (the module docstring says what counts)."""
    h = hashlib.sha256()
    name = path.name
    if name.endswith((".nii", ".nii.gz")):
        data, affine = _nifti(path)
        _array_bytes(h, data)
        _array_bytes(h, np.asarray(affine, np.float64))
    elif name.endswith(".npz"):
        with np.load(path) as z:
            for k in sorted(z.files):
                h.update(k.encode())
                _array_bytes(h, z[k])
    elif name.endswith(".json"):
        h.update(json.dumps(json.loads(path.read_text()), sort_keys=True).encode())
    elif name.endswith(".pt"):
        import torch
        _object_bytes(h, torch.load(path, map_location="cpu", weights_only=True))
    elif name.endswith(".tsv"):
        h.update(_tsv_without_seconds(path.read_text()).encode())
    else:
        h.update(path.read_bytes())
    return h.hexdigest()


def record(root: Path) -> dict[str, str]:
    """{relative path: digest} of every file under ``root`` that chaos.py compares."""
    return {f: digest(root / f) for f in sorted(output_files(root)) if compared(f)}


def check(root: Path, listed: dict[str, str]) -> list[str]:
    """The differences of ``root`` from a recorded list (files missing, extra or changed)."""
    now = record(root)
    return ([f"missing: {f}" for f in sorted(set(listed) - set(now))]
            + [f"extra: {f}" for f in sorted(set(now) - set(listed))]
            + [f"changed: {f}" for f in sorted(set(now) & set(listed)) if now[f] != listed[f]])


def read_list(path: Path) -> dict[str, str]:
    rows = (line.split("\t") for line in path.read_text().splitlines() if line.strip())
    return {f: d for f, d in rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="print the list of an output folder (path<TAB>sha256)")
    r.add_argument("root", type=Path)
    c = sub.add_parser("check", help="compare an output folder with a recorded list")
    c.add_argument("root", type=Path)
    c.add_argument("listed", type=Path)
    a = ap.parse_args(argv)
    if not a.root.is_dir():
        ap.exit(2, f"outputs_digest: error: {a.root}: not a folder\n")
    if a.cmd == "record":
        for f, d in record(a.root).items():
            print(f"{f}\t{d}")
        return 0
    diffs = check(a.root, read_list(a.listed))
    for line in diffs:
        print(line)
    print(f"{len(diffs)} differences", file=sys.stderr)
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())

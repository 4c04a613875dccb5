"""``deepmir stack | folds | train | predict | lesion-counts`` end to end on tiny NIfTIs."""
import json
import os
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch

from deepmir import niio
from deepmir.cli import main

SHAPE = (32, 32, 6)
AFFINE = np.array([[0.8, 0, 0, -12], [0, 0.8, 0, -14], [0, 0, 2.0, -5], [0, 0, 0, 1]])
def paper(epochs, **over):
    """The paper learner at a tiny size: its learn settings as --config-json."""
    cfg = {"learner": "paper", "epochs": epochs, "batch_size": 8, "lr": 0.01, "model": {"depth": 3, "base_width": 4},
           "augment": {"n_translations": 1, "n_rotations": 1, "max_shift": 6}, **over}
    return ["--config-json", json.dumps(cfg), "--threads", "1", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")


def participant(root, pid, seed, labels=True):
    rng = np.random.default_rng(seed)
    swi = rng.normal(1.0, 0.05, SHAPE)
    qsm = rng.normal(0.0, 0.01, SHAPE)
    dseg = np.zeros(SHAPE, np.uint8)
    for k in range(SHAPE[2]):
        for _ in range(2):
            i, j = rng.integers(6, 26, 2)
            cls = int(rng.integers(1, 3))
            swi[i - 1:i + 2, j - 1:j + 2, k] = 0.2
            qsm[i - 1:i + 2, j - 1:j + 2, k] = 0.3 if cls == 1 else 0.1
            dseg[i - 1:i + 2, j - 1:j + 2, k] = cls
    mask = np.zeros(SHAPE, np.uint8)
    mask[3:29, 3:29, :] = 1
    paths = {}
    for name, arr in (("swi", swi), ("qsm", qsm), ("mask", mask), ("dseg", dseg)):
        paths[name] = niio.save(root / f"{pid}_{name}.nii.gz", arr, AFFINE,
                                dtype=np.uint8 if name in ("mask", "dseg") else np.float32)
    return paths


def run(*argv):
    return main([str(a) for a in argv])


def build(tmp_path, pids=("sub-01", "sub-02", "sub-03", "sub-04")):
    stacks = {}
    for n, pid in enumerate(pids):
        p = participant(tmp_path, pid, n)
        stacks[pid] = tmp_path / f"{pid}_stack.npz"
        assert run("stack", "--channel", f"SWI={p['swi']}", "--channel", f"QSM={p['qsm']}", "--mask", p["mask"],
                   "--dseg", p["dseg"], "--out", stacks[pid], "--pad-to", 32) == 0
    return stacks


def test_stack_folds_train_predict_counts(tmp_path, capsys):
    stacks = build(tmp_path)
    with np.load(stacks["sub-01"]) as f:
        assert f["x"].shape == (6, 2, 32, 32) and f["y"].shape == (6, 32, 32)
        meta = json.loads(str(f["meta"]))
    assert meta["axial_axis"] == 2 and meta["channels"] == ["SWI", "QSM"]
    # folds: one per participant, written alone, and the nnU-Net file
    assert run("folds", "--participants", *stacks, "--seed", 1, "--fold", "sub-02",
               "--fold-out", tmp_path / "split.json", "--splits-final", tmp_path / "splits_final.json") == 0
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["test"] == ["sub-02"] and len(split["val"]) == 1 and len(split["train"]) == 2
    assert not set(split["train"]) & set(split["val"]) and "sub-02" not in split["train"] + split["val"]
    nn = json.loads((tmp_path / "splits_final.json").read_text())
    # nnU-Net's meaning: val is the fold's held-out (test) participant, train all the others
    assert len(nn) == 4 and nn[1] == {"train": ["sub-01", "sub-03", "sub-04"], "val": ["sub-02"]}
    # train the multi-class SWI+QSM model and predict the held-out participant
    out = tmp_path / "fold"
    assert run("train", "--train-stacks", *[stacks[p] for p in split["train"]],
               "--val-stacks", *[stacks[p] for p in split["val"]], "--label-mode", "multiclass",
               "--out-dir", out, *paper(3)) == 0
    assert {"best.pt", "last.pt", "log.tsv", "learning_curve.png"} <= set(os.listdir(out))
    assert len((out / "log.tsv").read_text().splitlines()) == 4
    assert run("predict", "--model", out / "best.pt", "--stack", stacks["sub-02"], "--out-labels",
               tmp_path / "pred.nii.gz", "--out-probs", tmp_path / "prob.nii.gz", "--threads", 1) == 0
    lab, prob = nib.load(tmp_path / "pred.nii.gz"), nib.load(tmp_path / "prob.nii.gz")
    assert lab.shape == SHAPE and np.allclose(lab.affine, AFFINE) and lab.get_data_dtype() == np.uint8
    assert prob.shape == SHAPE + (3,) and np.allclose(prob.affine, AFFINE)
    assert set(np.unique(np.asarray(lab.dataobj))) <= {0, 1, 2}
    assert np.allclose(np.asarray(prob.dataobj)[3:29, 3:29].sum(-1), 1, atol=1e-4)
    capsys.readouterr()
    assert run("lesion-counts", "--participants", "sub-02", "--pred", tmp_path / "pred.nii.gz",
               "--ref", tmp_path / "sub-02_dseg.nii.gz", "--label-mode", "multiclass",
               "--out", tmp_path / "counts.tsv") == 0
    rows = [r.split("\t") for r in (tmp_path / "counts.tsv").read_text().splitlines()]
    assert rows[0] == ["participant", "class", "n_true", "n_pred", "n_true_detected"]
    assert [r[1] for r in rows[1:]] == ["cmb", "iron"] and sum(int(r[2]) for r in rows[1:]) >= 6
    assert "sub-02\tcmb" in capsys.readouterr().out


def test_single_class_channel_subset_and_3d_probs(tmp_path):
    stacks = build(tmp_path, ("sub-a", "sub-b", "sub-c"))
    out = tmp_path / "fold"
    assert run("train", "--train-stacks", stacks["sub-a"], "--val-stacks", stacks["sub-b"], "--label-mode", "iron",
               "--channels", "SWI", "--out-dir", out, *paper(1)) == 0
    ck = torch.load(out / "best.pt", weights_only=True)
    assert ck["info"]["channels"] == ["SWI"] and ck["info"]["class_value"] == 2 and ck["config"]["in_channels"] == 1
    assert run("predict", "--model", out / "best.pt", "--stack", stacks["sub-c"], "--out-labels",
               tmp_path / "p.nii.gz", "--out-probs", tmp_path / "q.nii.gz") == 0
    assert nib.load(tmp_path / "q.nii.gz").shape == SHAPE
    assert set(np.unique(np.asarray(nib.load(tmp_path / "p.nii.gz").dataobj))) <= {0, 2}
    assert run("train", "--train-stacks", stacks["sub-a"], "--val-stacks", stacks["sub-b"], "--label-mode", "iron",
               "--channels", "SWI", "--out-dir", out, *paper(1, keep_last_checkpoint=False)) == 0
    assert (out / "best.pt").exists() and not (out / "last.pt").exists()


def test_bad_inputs_one_line_and_nothing_written(tmp_path, capsys):
    p = participant(tmp_path, "sub-01", 0)
    bad = niio.save(tmp_path / "bad.nii.gz", np.zeros((4, 4, 4)), AFFINE)
    out = tmp_path / "s.npz"
    assert run("stack", "--channel", f"SWI={bad}", "--mask", p["mask"], "--out", out) == 2
    assert run("stack", "--channel", f"SWI={p['swi']}", "--mask", tmp_path / "nope.nii.gz", "--out", out) == 2
    assert run("stack", "--channel", f"SWI={p['swi']}", "--mask", p["swi"], "--out", out) == 2
    # slices wider than --pad-to: the centre crop would cut the brain (3..28 of 32 voxels)
    assert run("stack", "--channel", f"SWI={p['swi']}", "--mask", p["mask"], "--out", out, "--pad-to", 16) == 2
    assert not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and "bad.nii.gz: shape" in err[0] and "nope.nii.gz: brain mask not found" in err[1]
    assert "mask.nii.gz: slices of 32×32 voxels do not fit --pad-to 16" in err[3] and "at least 32" in err[3]
    # a crop through air only is fine
    narrow = niio.save(tmp_path / "narrow_mask.nii.gz", np.pad(np.ones((12, 12, SHAPE[2]), np.uint8),
                                                               ((10, 10), (10, 10), (0, 0))), AFFINE)
    assert run("stack", "--channel", f"SWI={p['swi']}", "--mask", narrow, "--out", out, "--pad-to", 16) == 0
    out.unlink()
    assert run("stack", "--channel", f"SWI={p['swi']}", "--mask", p["mask"], "--out", out, "--pad-to", 32) == 0
    assert run("train", "--train-stacks", out, "--val-stacks", out, "--label-mode", "cmb",
               "--out-dir", tmp_path / "t", *paper(1)) == 2
    assert "stack has no labels" in capsys.readouterr().err
    assert run("folds", "--participants", "a", "b", "--splits-final", tmp_path / "s.json") == 2
    assert not (tmp_path / "s.json").exists()


def kill_after_first_checkpoint(args, out):
    """Run `deepmir <args> --out-dir out` in a process and SIGKILL it once last.pt exists."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "deepmir.cli", *map(str, args), "--out-dir", str(out)],
                            env=env, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not (out / "last.pt").exists() and proc.poll() is None and time.time() - t0 < 300:
        time.sleep(0.02)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the training process ended before it could be killed"
    return out


def test_sigkill_during_training_then_resume_matches_uninterrupted(tmp_path):
    stacks = build(tmp_path, ("sub-a", "sub-b"))
    args = ["train", "--train-stacks", stacks["sub-a"], "--val-stacks", stacks["sub-b"], "--label-mode", "union",
            *paper(4)]
    assert run(*args, "--out-dir", tmp_path / "full") == 0
    killed = kill_after_first_checkpoint(args, tmp_path / "killed")
    done = torch.load(killed / "last.pt", weights_only=True)["epoch"]
    assert 1 <= done <= 4
    assert run(*args, "--out-dir", killed) == 0
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(killed / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["best_model"][k], b["best_model"][k]) for k in a["best_model"])


PATCH = ["--config-json", json.dumps({"patch": {"iterations": 40, "batch_size": 8, "patch_size": 16, "depth": 3,
                                     "base_width": 4, "val_every": 20, "checkpoint_every": 10,
                                     "log_every": 10, "mine_every": 10, "mine_slices": 2}}),
         "--threads", "1", "--quiet"]


def test_patch_learner_train_and_predict_at_its_operating_point(tmp_path):
    stacks = build(tmp_path, ("sub-a", "sub-b", "sub-c"))
    out = tmp_path / "fold"
    assert run("train", "--train-stacks", stacks["sub-a"], "--val-stacks", stacks["sub-b"], "--label-mode",
               "multiclass", "--out-dir", out, *PATCH) == 0
    assert {"best.pt", "last.pt", "log.tsv", "learning_curve.png", "selection.json"} <= set(os.listdir(out))
    sel = json.loads((out / "selection.json").read_text())
    ck = torch.load(out / "best.pt", weights_only=True)
    assert ck["info"]["learner"] == "patch" and ck["config"]["in_channels"] == 2 * 3
    assert {int(k): v for k, v in sel["operating_point"].items()} == ck["info"]["operating_point"]
    assert run("predict", "--model", out / "best.pt", "--stack", stacks["sub-c"], "--out-labels",
               tmp_path / "pred.nii.gz", "--out-probs", tmp_path / "prob.nii.gz", "--threads", 1) == 0
    lab, prob = nib.load(tmp_path / "pred.nii.gz"), nib.load(tmp_path / "prob.nii.gz")
    assert lab.shape == SHAPE and prob.shape == SHAPE + (3,) and np.allclose(lab.affine, AFFINE)
    mask = np.asarray(nib.load(tmp_path / "sub-c_mask.nii.gz").dataobj) > 0
    assert not np.asarray(lab.dataobj)[~mask].any()
    # the same participant with an iron region: everywhere changes nothing, nowhere leaves no iron
    p = {k: tmp_path / f"sub-c_{k}.nii.gz" for k in ("swi", "qsm", "mask", "dseg")}
    got = {}
    for name, value in (("all", 1), ("none", 0)):
        region = niio.save(tmp_path / f"{name}.nii.gz", np.full(SHAPE, value, np.uint8), AFFINE, dtype=np.uint8)
        assert run("stack", "--channel", f"SWI={p['swi']}", "--channel", f"QSM={p['qsm']}", "--mask", p["mask"],
                   "--iron-region", region, "--out", tmp_path / f"{name}.npz", "--pad-to", 32) == 0
        assert run("predict", "--model", out / "best.pt", "--stack", tmp_path / f"{name}.npz", "--out-labels",
                   tmp_path / f"pred_{name}.nii.gz", "--threads", 1) == 0
        got[name] = np.asarray(nib.load(tmp_path / f"pred_{name}.nii.gz").dataobj)
    plain = np.asarray(lab.dataobj)
    assert (got["all"] == plain).all() and not (got["none"] == 2).any()
    assert (got["none"][plain == 1] == 1).all()
    assert run("train", "--train-stacks", stacks["sub-a"], "--val-stacks", stacks["sub-b"], "--label-mode",
               "cmb", "--out-dir", tmp_path / "bad", "--config-json", '{"patch": {"iterations": 0}}') == 2
    assert run("train", "--train-stacks", stacks["sub-a"], "--val-stacks", stacks["sub-b"], "--label-mode",
               "cmb", "--out-dir", tmp_path / "bad", "--config-json", '{"patch": {"iteration": 10}}') == 2
    assert not (tmp_path / "bad").exists()


def test_patch_learner_sigkill_then_resume_matches_uninterrupted(tmp_path):
    stacks = build(tmp_path, ("sub-a", "sub-b"))
    args = ["train", "--train-stacks", stacks["sub-a"], "--val-stacks", stacks["sub-b"], "--label-mode",
            "multiclass", *PATCH]
    assert run(*args, "--out-dir", tmp_path / "full") == 0
    killed = kill_after_first_checkpoint(args, tmp_path / "killed")
    assert 10 <= torch.load(killed / "last.pt", weights_only=True)["state"]["iteration"] < 40
    assert run(*args, "--out-dir", killed) == 0
    a = torch.load(tmp_path / "full" / "best.pt", weights_only=True)
    b = torch.load(killed / "best.pt", weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["info"]["operating_point"] == b["info"]["operating_point"]
    la = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    lb = torch.load(killed / "last.pt", weights_only=True)
    assert all(torch.equal(la["model"][k], lb["model"][k]) for k in la["model"])
    # the log's losses are the same too (only the seconds column differs)
    cols = lambda p: [r.split("\t")[:4] for r in (p / "log.tsv").read_text().splitlines()]  # noqa: E731
    assert cols(tmp_path / "full") == cols(killed)


def test_stack_carries_the_iron_region(tmp_path):
    """`deepmir stack --iron-region` keeps the mask on the stack (restacked as the brain mask);
    a mask off the grid or not 0/1 is refused (exit 2); a stack without one has none."""
    from deepmir.learn.stack import iron_region, load_stack

    p = participant(tmp_path, "sub-a", 0)
    region = np.zeros(SHAPE, np.uint8)
    region[10:20, 10:20, :] = 1
    rpath = niio.save(tmp_path / "region.nii.gz", region, AFFINE, dtype=np.uint8)
    out = tmp_path / "st.npz"
    assert run("stack", "--channel", f"SWI={p['swi']}", "--mask", p["mask"], "--iron-region", rpath,
               "--out", out, "--pad-to", 32) == 0
    st = load_stack(out)
    assert (st["iron_region"] == region).all()
    from deepmir.learn.dataset import restack
    assert (iron_region(st) == restack(region > 0, st["meta"], fill=False)).all()
    assert run("stack", "--channel", f"SWI={p['swi']}", "--mask", p["mask"], "--out", tmp_path / "n.npz",
               "--pad-to", 32) == 0
    assert load_stack(tmp_path / "n.npz")["iron_region"] is None
    bad = niio.save(tmp_path / "bad.nii.gz", region[:-1], AFFINE, dtype=np.uint8)
    two = niio.save(tmp_path / "two.nii.gz", region * 2, AFFINE, dtype=np.uint8)
    for r in (bad, two):
        assert run("stack", "--channel", f"SWI={p['swi']}", "--mask", p["mask"], "--iron-region", r,
                   "--out", tmp_path / "x.npz", "--pad-to", 32) == 2
    assert not (tmp_path / "x.npz").exists()


def test_stack_auto_size_fits_each_participant(tmp_path):
    p = participant(tmp_path, "sub-a", 0)
    for multiple, size in ((32, 32), (8, 32), (24, 48)):
        out = tmp_path / f"auto{multiple}.npz"
        assert run("stack", "--channel", f"SWI={p['swi']}", "--mask", p["mask"], "--out", out,
                   "--pad-multiple", multiple) == 0
        with np.load(out) as f:
            assert f["x"].shape[-2:] == (size, size)
    assert run("stack", "--channel", f"SWI={p['swi']}", "--mask", p["mask"], "--out", tmp_path / "x.npz",
               "--pad-to", "big") == 2

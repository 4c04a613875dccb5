"""Training of one fold on a tiny synthetic set (CPU): learning, epoch selection, checkpoints,
resuming after a kill."""
import time

import numpy as np
import pytest
import torch

from deepmir.device import pick_device
from deepmir.learn.augment import AugmentConfig
from deepmir.learn.train import amp_settings, iou_counts, iou_from_counts, loss_fn, predicted_labels, train

SMALL = dict(depth=3, base_width=8)
AUG = AugmentConfig(n_translations=1, n_rotations=1, max_shift=8, max_angle=30)


pytestmark = pytest.mark.usefixtures("one_thread")


def dots(n, seed, size=32, n_classes=1):
    """Slices of noise with dark 3×3 dots (as microbleeds look on SWI) and their labels; for
    multi-class, class-2 dots are bright instead."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.3, size=(n, 1, size, size)).astype(np.float32)
    y = np.zeros((n, size, size), np.uint8)
    for s in range(n):
        for _ in range(rng.integers(0, 3)):
            r, c = rng.integers(3, size - 3, 2)
            cls = 1 if n_classes == 1 else int(rng.integers(1, 3))
            x[s, 0, r - 1:r + 2, c - 1:c + 2] += -3.0 if cls == 1 else 3.0
            y[s, r - 1:r + 2, c - 1:c + 2] = cls
    return x, y


def test_tiny_training_learns_within_a_minute(tmp_path):
    tx, ty = dots(24, 0)
    vx, vy = dots(8, 1)
    t0 = time.process_time()
    r = train(tx, ty, vx, vy, n_classes=1, model_config=SMALL, epochs=8, batch_size=8, lr=1e-2, seed=0,
              augment=AUG, checkpoint_dir=tmp_path, progress=False)
    cpu_seconds = time.process_time() - t0  # CPU time: the wall clock depends on the machine's load
    losses = [h["train_loss"] for h in r.history]
    assert cpu_seconds < 60
    assert len(r.history) == 8 and r.completed
    assert losses[-1] < 0.25 * losses[0]
    assert r.history[-1]["train_iou"] > 0.5
    assert r.best_val_iou == max(h["val_iou"] for h in r.history) > 0.5
    assert r.history[r.best_epoch - 1]["val_iou"] == r.best_val_iou
    # the returned model is the best epoch's: its validation IoU is the recorded one
    with torch.no_grad():
        counts = iou_counts(predicted_labels(r.model(torch.from_numpy(vx))), torch.from_numpy(vy).long(), 1)
    assert iou_from_counts(counts) > 0.5
    # outputs
    log = (tmp_path / "log.tsv").read_text().splitlines()
    assert log[0].split("\t") == ["epoch", "train_loss", "train_iou", "val_iou", "seconds"] and len(log) == 9
    assert (tmp_path / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["epoch"] == r.best_epoch and best["config"]["depth"] == 3
    for k, v in r.model.state_dict().items():
        assert torch.equal(best["state_dict"][k], v)


def test_multiclass_training_runs_and_improves():
    tx, ty = dots(16, 2, n_classes=3)
    vx, vy = dots(4, 3, n_classes=3)
    r = train(tx, ty, vx, vy, n_classes=3, model_config=SMALL, epochs=6, batch_size=8, lr=1e-2, seed=0,
              augment=AUG, progress=False)
    assert r.model(torch.from_numpy(vx)).shape == (4, 3, 32, 32)
    assert r.history[-1]["train_loss"] < 0.5 * r.history[0]["train_loss"]
    assert r.history[-1]["train_iou"] > 0.3


def _kwargs(ckdir, **kw):
    return dict(n_classes=1, model_config=SMALL, epochs=4, batch_size=8, lr=1e-2, seed=7, augment=AUG,
                checkpoint_dir=ckdir, progress=False, **kw)


class Killed(Exception):
    pass


def test_resume_after_kill_gives_identical_weights(tmp_path):
    tx, ty = dots(12, 4)
    vx, vy = dots(4, 5)
    full = train(tx, ty, vx, vy, **_kwargs(tmp_path / "full"))

    def kill_after_2(record):  # the process dies right after epoch 2's checkpoint
        if record["epoch"] == 2:
            raise Killed
    with pytest.raises(Killed):
        train(tx, ty, vx, vy, **_kwargs(tmp_path / "killed", on_epoch_end=kill_after_2))
    ck = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert ck["epoch"] == 2
    (tmp_path / "killed" / "best.pt").unlink()  # as Snakemake removes the outputs of a failed job
    (tmp_path / "killed" / "log.tsv").unlink()
    resumed = train(tx, ty, vx, vy, **_kwargs(tmp_path / "killed"))
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for a, b in zip(full.history, resumed.history):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    for k, v in full.last_state.items():
        assert torch.equal(v, resumed.last_state[k]), k
    assert full.best_epoch == resumed.best_epoch
    b1 = torch.load(tmp_path / "full" / "best.pt", weights_only=True)
    b2 = torch.load(tmp_path / "killed" / "best.pt", weights_only=True)
    assert all(torch.equal(b1["state_dict"][k], b2["state_dict"][k]) for k in b1["state_dict"])
    assert (tmp_path / "killed" / "log.tsv").exists()


def test_stop_after_epoch_then_more_epochs_and_mismatch(tmp_path):
    tx, ty = dots(8, 6)
    vx, vy = dots(4, 7)
    part = train(tx, ty, vx, vy, **_kwargs(tmp_path, stop_after_epoch=1))
    assert not part.completed and len(part.history) == 1
    done = train(tx, ty, vx, vy, **_kwargs(tmp_path))
    assert [h["epoch"] for h in done.history] == [1, 2, 3, 4]
    # nothing left to do: returns the same state and rewrites the outputs
    (tmp_path / "learning_curve.png").unlink()
    again = train(tx, ty, vx, vy, **_kwargs(tmp_path))
    assert len(again.history) == 4 and (tmp_path / "learning_curve.png").exists()
    assert all(torch.equal(v, again.last_state[k]) for k, v in done.last_state.items())
    # other settings: error, or a fresh start
    with pytest.raises(ValueError, match="different data or settings"):
        train(tx, ty, vx, vy, **{**_kwargs(tmp_path), "lr": 1e-3})
    tx2 = tx.copy()
    tx2[0, 0, 0, 0] += 1   # other data (e.g. QSM made with another parameter): never resumed
    with pytest.raises(ValueError, match="different data or settings"):
        train(tx2, ty, vx, vy, **_kwargs(tmp_path))
    with pytest.raises(ValueError, match="past epochs"):
        train(tx, ty, vx, vy, **{**_kwargs(tmp_path), "epochs": 2})
    fresh = train(tx, ty, vx, vy, **{**_kwargs(tmp_path), "epochs": 2, "on_mismatch": "restart"})
    assert [h["epoch"] for h in fresh.history] == [1, 2]


def test_bad_inputs():
    tx, ty = dots(4, 8)
    with pytest.raises(ValueError):
        train(tx, ty, tx, ty, n_classes=2, model_config=SMALL, epochs=1, progress=False)
    with pytest.raises(ValueError, match="labels go up to"):
        train(tx, ty * 2, tx, ty, n_classes=1, model_config=SMALL, epochs=1, progress=False)
    with pytest.raises(ValueError, match="no labelled slice"):
        train(tx, np.zeros_like(ty), tx, ty, n_classes=1, model_config=SMALL, epochs=1, progress=False)
    with pytest.raises(ValueError):
        train(tx, ty[:2], tx, ty, n_classes=1, model_config=SMALL, epochs=1, progress=False)


def test_iou_loss_and_device_settings():
    pred = torch.tensor([[0, 1, 1, 2, 0]])
    ref = torch.tensor([[0, 1, 0, 2, 2]])
    c = iou_counts(pred, ref, 3)
    assert c.tolist() == [[1, 1], [2, 2]]  # CMB: 1 / 2, iron: 1 / 2
    assert iou_from_counts(c) == 0.5
    assert iou_from_counts(np.array([[0.0, 1.0], [0.0, 4.0]])) == 0.25  # empty class left out
    assert iou_from_counts(np.zeros((2, 1))) == 1.0
    logits = torch.tensor([[[[2.0, -1.0]]]])
    assert predicted_labels(logits).tolist() == [[[1, 0]]]
    bce = loss_fn(logits, torch.tensor([[[1, 0]]]))
    assert torch.isclose(bce, torch.nn.functional.softplus(-torch.tensor([2.0, 1.0])).mean())
    cpu = torch.device("cpu")
    assert amp_settings(cpu, None)[0] is False  # no autocast on CPU unless asked
    assert pick_device("cpu") == pick_device(None) == cpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_channels_last_runs():
    tx, ty = dots(8, 9)
    r = train(tx, ty, tx, ty, n_classes=1, model_config=SMALL, epochs=2, batch_size=4, augment=AUG,
              device="cuda", progress=False)
    assert amp_settings(torch.device("cuda"), None)[0] is True and len(r.history) == 2


def test_prior_bias_and_foreground_weight():
    from deepmir.learn.train import build_model, set_prior_bias
    y = np.zeros((4, 10, 10), np.uint8)
    y[0, :2, :5] = 1  # 10 of 400 voxels → p = 0.025
    m = build_model(1, 1, SMALL, seed=0)
    set_prior_bias(m, y)
    assert np.isclose(float(m.head.bias.detach()), np.log(0.025 / 0.975), atol=1e-6)
    y[1, :2, :5] = 2
    m3 = build_model(3, 1, SMALL, seed=0)  # head ReLU: positive background bias only
    set_prior_bias(m3, y)
    assert np.isclose(float(m3.head.bias.detach()[0]), np.log(0.95 / 0.025), atol=1e-5) and not m3.head.bias[1:].any()
    m3n = build_model(3, 1, {**SMALL, "head_relu": False}, seed=0)
    set_prior_bias(m3n, y)
    assert np.allclose(m3n.head.bias.detach().numpy(), np.log([0.95, 0.025, 0.025]), atol=1e-5)
    # foreground weight: BCE pos_weight / CE class weights; 1 is the plain loss
    logits = torch.tensor([[[[0.5, -0.5]]]])
    t = torch.tensor([[[1, 0]]])
    plain = loss_fn(logits, t)
    weighted = loss_fn(logits, t, fg_weight=4.0)
    sp = torch.nn.functional.softplus
    assert torch.isclose(weighted, (4 * sp(-torch.tensor(0.5)) + sp(torch.tensor(-0.5))) / 2)
    assert weighted > plain
    l3 = torch.randn(1, 3, 1, 2)
    assert torch.isclose(loss_fn(l3, t, 1.0), torch.nn.functional.cross_entropy(l3, t))
    w = torch.nn.functional.cross_entropy(l3, t, weight=torch.tensor([1.0, 3.0, 3.0]))
    assert torch.isclose(loss_fn(l3, t, 3.0), w)

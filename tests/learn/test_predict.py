import numpy as np
import pytest
import torch
from torch import nn

from deepmir.learn.dataset import make_stack
from deepmir.learn.predict import model_from_checkpoint, predict_probs, predict_volume
from deepmir.learn.unet import UNet


class Oracle(nn.Module):
    """Logits from the first input channel: +10 where it is above 1, −10 elsewhere (single
    class), or three classes (background, > 1, < −1)."""

    def __init__(self, n_classes):
        super().__init__()
        self.n_classes = n_classes
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        v = x[:, :1]
        if self.n_classes == 1:
            return torch.where(v > 1, 10.0, -10.0)
        return torch.cat([torch.full_like(v, 1.0), (v > 1) * 20.0, (v < -1) * 20.0], dim=1)


def volume():
    rng = np.random.default_rng(0)
    shape = (10, 12, 5)
    vol = rng.normal(0, 0.1, size=shape)
    vol[2:4, 3:5, 1] = 8.0
    vol[6:8, 7:9, 3] = -8.0
    mask = np.ones(shape, bool)
    mask[:, :, 4] = False
    return vol, mask


def test_single_class_back_on_grid_with_class_value():
    vol, mask = volume()
    x, _, meta = make_stack({"SWI": vol}, mask, None, axial_axis=2, pad_to=16)
    labels, probs = predict_volume(Oracle(1), x, meta, n_classes=1, class_value=2, mask=mask, device="cpu")
    assert labels.shape == vol.shape and labels.dtype == np.uint8 and probs.shape == vol.shape + (1,)
    expected = np.zeros(vol.shape, np.uint8)
    expected[2:4, 3:5, 1] = 2
    assert np.array_equal(labels, expected)
    assert np.all((probs >= 0) & (probs <= 1))
    assert probs[2, 3, 1, 0] > 0.99 and probs[0, 0, 0, 0] < 0.01


def test_multiclass_argmax_and_softmax():
    vol, mask = volume()
    x, _, meta = make_stack({"SWI": vol}, mask, None, axial_axis=2, pad_to=16)
    labels, probs = predict_volume(Oracle(3), x, meta, n_classes=3, device="cpu", batch_size=2)
    assert probs.shape == vol.shape + (3,)
    assert np.allclose(probs.sum(-1), 1, atol=1e-5)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert (labels[2:4, 3:5, 1] == 1).all() and (labels[6:8, 7:9, 3] == 2).all()
    with pytest.raises(ValueError):
        predict_volume(Oracle(3), x, meta, n_classes=1, device="cpu")


def test_mask_removes_labels_outside():
    vol, mask = volume()
    vol[1, 1, 4] = 8.0  # outside the mask: z-scored to 0 anyway
    x, _, meta = make_stack({"SWI": vol}, mask, None, axial_axis=2, pad_to=16)
    x[4, 0, :, :] = 5.0  # pretend the network sees something in a slice outside the brain
    labels, _ = predict_volume(Oracle(1), x, meta, n_classes=1, mask=mask, device="cpu")
    assert not labels[:, :, 4].any()
    labels, _ = predict_volume(Oracle(1), x, meta, n_classes=1, mask=None, device="cpu")
    assert labels[:, :, 4].all()


def test_checkpoint_round_trip_weights_only(tmp_path):
    torch.manual_seed(0)
    m = UNet(2, 3, depth=3, base_width=4).eval()
    torch.save({"config": m.config, "state_dict": m.state_dict(), "epoch": 1, "val_iou": 0.5, "info": {}},
               tmp_path / "best.pt")
    ck = torch.load(tmp_path / "best.pt", weights_only=True)
    m2 = model_from_checkpoint(ck)
    x = np.random.default_rng(0).normal(size=(3, 2, 16, 16)).astype(np.float32)
    with torch.no_grad():
        ref = torch.softmax(m(torch.from_numpy(x)), 1).numpy()
    assert np.allclose(predict_probs(m2, x, device="cpu"), ref, atol=1e-6)

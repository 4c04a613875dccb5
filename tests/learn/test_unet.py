import pytest
import torch
from torch import nn

from deepmir.learn.unet import UNet, flops_per_slice, macs_per_slice, probabilities


@pytest.mark.parametrize("in_ch,n_classes,depth,width,size", [
    (1, 1, 2, 4, 8), (3, 3, 3, 4, 16), (2, 1, 4, 2, 24), (4, 3, 6, 2, 64), (2, 3, 5, 3, 32),
])
def test_output_shapes(in_ch, n_classes, depth, width, size):
    torch.manual_seed(0)
    m = UNet(in_ch, n_classes, depth=depth, base_width=width)
    out = m(torch.randn(2, in_ch, size, size + 2 ** (depth - 1)))
    assert out.shape == (2, n_classes, size, size + 2 ** (depth - 1))
    assert sum(isinstance(x, nn.MaxPool2d) for x in m.modules()) == 1  # one shared pool …
    assert len(m.down) == depth - 1 and len(m.up) == depth - 1        # … used depth − 1 times
    assert sum(isinstance(x, nn.BatchNorm2d) for x in m.modules()) == 2 * (2 * depth - 1)
    assert m.widths == [width * 2 ** i for i in range(depth)]


def test_paper_network_has_8x8_centre_and_sizes():
    m = UNet(2, 3)  # defaults: 6 resolutions, base width 64
    seen = {}
    m.center.register_forward_hook(lambda mod, i, o: seen.update(centre=tuple(o.shape)))  # returns None
    tensors = {k: torch.empty_like(v, device="meta") for k, v in [*m.named_parameters(), *m.named_buffers()]}
    m.eval()
    out = torch.func.functional_call(m, tensors, (torch.empty(1, 2, 256, 256, device="meta"),))
    assert seen["centre"] == (1, 2048, 8, 8) and out.shape == (1, 3, 256, 256)
    assert m.config["head_relu"] is True and UNet(2, 1, depth=2, base_width=2).config["head_relu"] is False


def test_indivisible_input_rejected():
    with pytest.raises(ValueError):
        UNet(1, 1, depth=3, base_width=2)(torch.zeros(1, 1, 10, 16))  # 10 is not a multiple of 4


def test_heads_and_probabilities():
    torch.manual_seed(0)
    m3 = UNet(1, 3, depth=2, base_width=4)
    out = m3(torch.randn(2, 1, 8, 8))
    assert (out >= 0).all()  # ReLU before the softmax (preprint S2.1)
    p = probabilities(out)
    assert torch.allclose(p.sum(1), torch.ones(2, 8, 8))
    m1 = UNet(1, 1, depth=2, base_width=4)
    o1 = m1(torch.randn(2, 1, 8, 8))
    assert (o1 < 0).any() and torch.equal(probabilities(o1), torch.sigmoid(o1))
    assert (UNet(1, 3, depth=2, base_width=4, head_relu=False)(torch.randn(2, 1, 8, 8)) < 0).any()


def test_macs_hand_count():
    m = UNet(2, 1, depth=2, base_width=4)
    # 8×8 input: enc 2→4, 4→4 at 64 px; centre 4→8, 8→8 at 16 px; transposed 8→4 (2×2) from 16 px;
    # dec 8→4, 4→4 at 64 px; head 4→1 (1×1) at 64 px
    expected = (64 * 4 * 2 * 9 + 64 * 4 * 4 * 9 + 16 * 8 * 4 * 9 + 16 * 8 * 8 * 9
                + 16 * 8 * 4 * 4 + 64 * 4 * 8 * 9 + 64 * 4 * 4 * 9 + 64 * 1 * 4)
    assert expected == 57600
    assert macs_per_slice(m, 2, 8, 8) == 57600
    assert flops_per_slice(m, 2, 8, 8) == 115200
    assert m.training  # left in training mode
    assert macs_per_slice(m, 2, 16, 16) == 4 * 57600

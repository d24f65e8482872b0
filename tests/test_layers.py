"""SD layers: forward == integer reconstruction, state dict, conversion report, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from golden.layers import (SDConv2d, SDLinear, convert_to_sd, fake_quant_basis, sd_layers,
                           to_dense)
from golden.sdweight import weight_to_rows
from hw.config import preset

CFG = preset("default")


def _max_rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("make", [
    lambda: nn.Linear(29, 11),
    lambda: nn.Linear(128, 10, bias=False),
    lambda: nn.Conv2d(5, 12, 3, stride=2, padding=1),
    lambda: nn.Conv2d(3, 9, 5, padding=2),
    lambda: nn.Conv2d(4, 10, 1),
    lambda: nn.Conv2d(2, 6, (3, 2), dilation=2),
])
def test_forward_matches_integer_reconstruction(make):
    torch.manual_seed(0)
    dense = make()
    cls = SDLinear if isinstance(dense, nn.Linear) else SDConv2d
    sd = cls.from_dense(dense, CFG, name="l")
    sdw = sd.to_sdweight("l")
    assert _max_rel(sd.weight.detach(), sdw.reconstruct()) < 1e-6
    if isinstance(dense, nn.Linear):
        x = torch.randn(4, dense.in_features)
    else:
        x = torch.randn(2, dense.in_channels, 9, 9)
    with torch.no_grad():
        y_sd = sd(x)
        dense_copy = to_dense(nn.Sequential(sd))[0]      # integer-basis weights
        assert torch.allclose(y_sd, dense_copy(x), rtol=1e-5, atol=1e-5)
        # the SD layer approximates the dense one (8-bit B, 7 exponent levels)
        y = dense(x)
        assert float((y_sd - y).norm() / y.norm()) < 0.35


def test_sd_layer_attributes_like_dense():
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1)
    sd = SDConv2d.from_dense(conv, CFG, name="conv2")
    assert (sd.stride, sd.padding, sd.kernel_size) == (conv.stride, conv.padding,
                                                       conv.kernel_size)
    assert torch.equal(sd.bias, conv.bias)
    assert "kernel_size=(3, 3)" in repr(sd) and "rows=48" in repr(sd)
    lin = SDLinear(10, 4, config=CFG)            # drop-in constructor decomposes an init
    assert lin.weight.shape == (4, 10) and lin(torch.randn(2, 10)).shape == (2, 4)
    assert "in_features=10" in repr(lin)


def test_state_dict_round_trip():
    torch.manual_seed(1)
    sd = SDConv2d.from_dense(nn.Conv2d(4, 9, 3, padding=1), CFG, name="c", prune=0.3)
    state = sd.state_dict()
    assert set(state) == {"C", "B", "mask", "row_keep", "bias"}
    fresh = SDConv2d(4, 9, 3, padding=1, config=CFG, init=False)
    fresh.load_state_dict(state)
    x = torch.randn(2, 4, 6, 6)
    assert torch.equal(fresh(x), sd(x))
    a, b = sd.to_sdweight("c"), fresh.to_sdweight("c")
    assert torch.equal(a.exponent, b.exponent) and torch.equal(a.basis, b.basis)
    assert torch.equal(a.row_keep, b.row_keep)


def test_fake_quant_basis_is_per_channel_and_straight_through():
    b = torch.randn(3, 2, 3, 3, requires_grad=True)
    q = fake_quant_basis(b, CFG)
    scale = b.detach().abs().flatten(1).amax(1) / CFG.basis_max
    ints = q.detach() / scale[:, None, None, None]
    assert torch.allclose(ints, ints.round(), atol=1e-4)
    assert float(ints.abs().max()) <= CFG.basis_max + 1e-4
    q.sum().backward()
    assert torch.equal(b.grad, torch.ones_like(b))


def test_coefficients_never_leave_support_even_if_edited():
    sd = SDLinear.from_dense(nn.Linear(30, 8), CFG, name="l", prune=0.4)
    with torch.no_grad():
        sd.C.fill_(0.3)                              # not representable, outside mask too
    coef = sd.coefficients().detach()
    assert set(coef.unique().tolist()) <= {0.0, 0.25}
    assert not (coef.ne(0) & ~sd.support()).any()
    sdw = sd.to_sdweight("l")
    group = torch.arange(8) // CFG.lanes
    assert not (sdw.mask.any(-1).any(-1) & ~sdw.row_keep[group]).any()


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(8)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())
        self.emb = nn.Embedding(5, 4)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.block(self.bn(self.dw(self.stem(x))))
        return self.head(x.mean((2, 3)))


def test_convert_to_sd_reports_what_it_leaves_alone(caplog):
    net = _Net()
    with caplog.at_level("INFO", logger="golden.layers"):
        report = convert_to_sd(net, CFG, prune={"block.0": 0.5}, skip=["head"])
    converted = {c["name"] for c in report.converted}
    alone = {c["name"]: c["reason"] for c in report.left_alone}
    assert converted == {"stem", "block.0"}
    assert "grouped" in alone["dw"] and "skip" in alone["head"]
    assert "normalisation" in alone["bn"] and "Embedding" in alone["emb"]
    assert isinstance(net.stem, SDConv2d) and isinstance(net.block[0], SDConv2d)
    assert isinstance(net.dw, nn.Conv2d) and isinstance(net.head, nn.Linear)
    assert "left dw" in caplog.text
    assert "converted 2 layer(s)" in str(report)
    assert [n for n, _ in sd_layers(net)] == ["stem", "block.0"]
    assert net(torch.randn(2, 3, 6, 6)).shape == (2, 3)


def test_convert_rejects_unknown_prune_names():
    with pytest.raises(ValueError, match="unknown layer"):
        convert_to_sd(_Net(), CFG, prune={"nope": 0.5})


def test_pruned_rows_are_zero_for_the_whole_group():
    torch.manual_seed(3)
    conv = nn.Conv2d(6, 20, 3)
    sd = SDConv2d.from_dense(conv, CFG, name="c", prune=0.5)
    rows = weight_to_rows(sd.weight.detach(), 3)
    group = torch.arange(20) // CFG.lanes
    assert (rows[~sd.row_keep[group]] == 0).all()
    assert (sd.row_keep.sum(1) == 9).all()


def test_unsupported_layers_raise_clear_errors():
    with pytest.raises(ValueError, match="groups=2"):
        SDConv2d(4, 4, 3, groups=2)
    with pytest.raises(ValueError, match="padding_mode"):
        SDConv2d(4, 4, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="dw: grouped"):
        SDConv2d.from_dense(nn.Conv2d(4, 4, 3, groups=4), CFG, name="dw")
    with pytest.raises(TypeError, match="expected nn.Linear"):
        SDLinear.from_dense(nn.Conv2d(4, 4, 3), CFG)
    bad = nn.Linear(4, 4)
    with torch.no_grad():
        bad.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="fc1.*NaN"):
        SDLinear.from_dense(bad, CFG, name="fc1")
    with pytest.raises(ValueError, match="in_features"):
        SDLinear(0, 4)


def test_load_sdweight_checks_shape_and_config():
    a = SDLinear.from_dense(nn.Linear(9, 4), CFG, name="a")
    b = SDLinear(12, 4, config=CFG, init=False)
    with pytest.raises(ValueError, match="does not match"):
        b.load_sdweight(a.to_sdweight("a"))
    c = SDLinear(9, 4, config=preset("tiny"), init=False)
    with pytest.raises(ValueError, match="configuration differs"):
        c.load_sdweight(a.to_sdweight("a"))

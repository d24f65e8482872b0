"""Bit-exact integer reference: window order, accumulation, requantization, bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from golden.qnet import QLayer, build_qnet, choose_requant, quantize_bias
from golden.reference import (AccumulatorOverflowError, accumulate, fc_rows, im2col_rows,
                              layer_float, layer_int, quantization_bound, quantize_input,
                              requantize)
from golden.sdweight import SDWeight
from hw.config import SDConfig
from test_pack import HAND_CFG, _FakeSD, hand_layer, random_sdweight


# ---------------------------------------------------------------- window order
@pytest.mark.parametrize("cin,h,w,k,stride,pad,s", [
    (1, 8, 8, (3, 3), (1, 1), (1, 1), 3),
    (16, 8, 8, (3, 3), (2, 2), (1, 1), 3),
    (3, 7, 5, (3, 2), (2, 1), (0, 1), 4),     # K = 18 not a multiple of S = 4
    (2, 5, 6, (5, 1), (1, 3), (2, 0), 2),
    (4, 4, 4, (1, 1), (1, 1), (0, 0), 3),     # 1x1 conv, K = 4 -> 2 rows
])
def test_im2col_rows_is_the_flattened_cin_ky_kx_window(cin, h, w, k, stride, pad, s):
    g = torch.Generator().manual_seed(cin * 100 + h)
    x = torch.randint(-128, 128, (3, cin, h, w), generator=g)
    shape = (5, cin, *k)
    rows = im2col_rows(x, shape, stride, pad, s)
    cols = F.unfold(x.double(), k, padding=pad, stride=stride)        # (N, K, P), (c,ky,kx)
    kk = cin * k[0] * k[1]
    r = -(-kk // s)
    want = F.pad(cols.transpose(1, 2), (0, r * s - kk)).reshape(3, -1, r, s)
    assert rows.dtype == np.int64 and rows.shape == tuple(want.shape)
    assert np.array_equal(rows, want.numpy().astype(np.int64))
    assert np.array_equal(im2col_rows(x[1], shape, stride, pad, s), rows[1])


def test_fc_rows_pad_the_last_row_with_zeros():
    x = np.arange(1, 8)[None]
    assert fc_rows(x, 7, 3).tolist() == [[[1, 2, 3], [4, 5, 6], [7, 0, 0]]]
    with pytest.raises(ValueError, match=r"linear input must be \(N, 7\)"):
        fc_rows(x[:, :6], 7, 3)


# ---------------------------------------------------------------- accumulation
def _qlayer(sd, stride=(1, 1), padding=(0, 0), in_shape=None, out_shape=None, relu=False):
    cout = sd.out_channels
    return QLayer(name=sd.name, sd=sd, relu=relu, stride=stride, padding=padding,
                  in_shape=in_shape or (sd.weight_shape[1],), out_shape=out_shape or (cout,),
                  bias_float=np.zeros(cout), bias_int=np.zeros(cout, np.int64),
                  mult=np.ones(cout, np.int64), shift=np.zeros(cout, np.int64),
                  in_scale=1.0, out_scale=1.0)


def test_accumulators_equal_the_weight_stationary_schedule_and_conv2d():
    cfg = SDConfig(lanes=3, block_rows=4, max_rows=64)
    sd = random_sdweight(cfg, (7, 4, 3, 3), 11, density=0.5, keep=0.6, name="conv")
    lay = _qlayer(sd, (2, 1), (1, 0), (4, 6, 5), (7, 3, 3))
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-128, 128, (2, 4, 6, 5), generator=g)
    acc = accumulate(lay, x)                                        # (N, Cout, P)
    # the hardware's order: group, kept row, lane, position
    w = sd.rebuilt_int().numpy()
    rows = im2col_rows(x, sd.weight_shape, (2, 1), (1, 0), 3)     # (N, P, R, S)
    loop = np.zeros_like(acc)
    for grp in range(sd.n_groups):
        for r in np.nonzero(sd.row_keep[grp].numpy())[0]:
            for lane in range(cfg.lanes):
                o = grp * cfg.lanes + lane
                if o < sd.out_channels:
                    loop[:, o, :] += rows[:, :, r, :] @ w[o, r, :]
    assert np.array_equal(acc, loop)
    w_dense = torch.from_numpy(w).reshape(7, -1)[:, :36].reshape(7, 4, 3, 3).double()
    ref = F.conv2d(x.double(), w_dense, stride=(2, 1), padding=(1, 0))
    assert np.array_equal(acc, ref.reshape(2, 7, -1).numpy().astype(np.int64))


def test_requantize_rounds_half_up_then_relu_then_saturates():
    cfg = SDConfig()
    acc = np.array([-3, -1, 0, 1, 3, 1000, -1000])[None, None, :].repeat(2, axis=1)
    one = np.ones(2, np.int64)
    got = requantize(acc, 0 * one, one, one, relu=False, config=cfg)[0, 0]
    assert got.tolist() == [-1, 0, 0, 1, 2, 127, -128]       # -1.5 -> -1, -0.5 -> 0
    got = requantize(acc, 0 * one, one, one, relu=True, config=cfg)[0, 0]
    assert got.tolist() == [0, 0, 0, 1, 2, 127, 0]
    got = requantize(acc, np.array([1, -1]), np.array([3, 1]), np.array([2, 0]), False, cfg)
    # channel 0: ((x + 1) * 3 + 2) >> 2 ; channel 1: x - 1 (sh = 0: no rounding term)
    assert got[0, 0].tolist() == [((v + 1) * 3 + 2) >> 2 if abs(v) < 100 else
                                  (127 if v > 0 else -128) for v in acc[0, 0]]
    assert got[0, 1].tolist() == [-4, -2, -1, 0, 2, 127, -128]


def test_requantize_wide_products_are_exact():
    cfg = SDConfig(acc_bits=48, bias_bits=40, mult_bits=24, shift_bits=7)
    acc = np.array([[[(1 << 46) - 5, -(1 << 46) + 7, 123456789]]])
    m, sh, b = (1 << 24) - 3, 70, -(1 << 39)
    got = requantize(acc, np.array([b]), np.array([m]), np.array([sh]), False, cfg)[0, 0]
    want = [max(-128, min(127, ((int(a) + b) * m + (1 << (sh - 1))) >> sh)) for a in acc[0, 0]]
    assert got.tolist() == want


def _big_fc(acc_bits: int) -> QLayer:
    """A 2x60 layer with every code 2**0 and every basis entry 7: |w| = 1344."""
    cfg = HAND_CFG.replace(acc_bits=acc_bits, bias_bits=16, max_rows=31, block_rows=31)
    mask = torch.ones(2, 20, 3, 1, dtype=torch.bool)
    sd = SDWeight(config=cfg, weight_shape=(2, 60), mask=mask, sign=torch.zeros_like(mask),
                  exponent=torch.zeros(2, 20, 3, 1, dtype=torch.int8),
                  basis=torch.full((2, 1, 3, 3), 7, dtype=torch.int32),
                  basis_scale=torch.ones(2, dtype=torch.float64),
                  row_keep=torch.ones(1, 20, dtype=torch.bool), name="big")
    return _qlayer(sd, in_shape=(60,), out_shape=(2,))


def test_reference_raises_on_accumulator_overflow_naming_layer_channel_position():
    lay = _big_fc(22)
    x = np.zeros((3, 60), np.int64)
    x[2, :] = 127                                     # 60 * 1344 * 127 = 10.2 M > 2**21
    layer_int(lay, x[:2])                             # small inputs fit
    with pytest.raises(AccumulatorOverflowError,
                       match=r"layer big: accumulator = 10241280 at channel 0, image 2, "
                             r"position 0 does not fit acc_bits=22 \(needs 25 bits\)"):
        layer_int(lay, x)
    lay2 = _big_fc(22)
    x2 = np.zeros((1, 60), np.int64)
    x2[0, :12] = 127
    x2[0, 12] = 36                                    # 1344 * (12*127 + 36) = 2096640
    assert int(accumulate(lay2, x2)[0, 0, 0]) == 2096640 <= (1 << 21) - 1
    lay2.bias_int = np.array([1000, 0])              # pushes it past 2**21 - 1
    with pytest.raises(AccumulatorOverflowError, match=r"acc \+ bias = 2097640 at channel 0"):
        layer_int(lay2, x2)


def test_export_refuses_a_layer_the_accumulator_cannot_hold():
    lay = _big_fc(22)
    plan = [("big", _FakeSD(lay.sd, torch.zeros(2)), False)]
    with pytest.raises(AccumulatorOverflowError,
                       match=r"layer big: the accumulator can reach 10321920 .* needs 25 bits; "
                             r"the configuration has acc_bits=22"):
        build_qnet(None, lay.config, torch.rand(4, 60), layers=plan)
    q = build_qnet(None, lay.config.replace(acc_bits=25), torch.rand(4, 60), layers=[
        ("big", _FakeSD(_big_fc(25).sd, torch.zeros(2)), False)])
    assert q.layers[0].acc_bits_needed == 25


# ---------------------------------------------------------------- parameters
def test_choose_requant_uses_the_most_precise_fields():
    cfg = SDConfig()                                  # mult 16 bits, shift 6 bits
    m, sh = choose_requant(np.array([0.3, 1.0, 2.0 ** -40, 1000.0]), cfg, "l")
    assert (m < 1 << 16).all() and (m >= 1 << 15).all()
    real = m / 2.0 ** sh
    assert np.allclose(real, [0.3, 1.0, 2.0 ** -40, 1000.0], rtol=2 ** -16)
    with pytest.raises(ValueError, match=r"layer l: channel 0 needs multiplier 1e\+06 >= "
                                         r"2\*\*mult_bits; needs mult_bits >= 20"):
        choose_requant(np.array([1e6]), cfg, "l")
    with pytest.raises(ValueError, match=r"rounds to 0 even with the largest shift 63"):
        choose_requant(np.array([2.0 ** -80]), cfg, "l")
    with pytest.raises(ValueError, match=r"channel 1 has real multiplier nan"):
        choose_requant(np.array([1.0, np.nan]), cfg, "l")


def test_bias_beyond_bias_bits_is_refused():
    cfg = SDConfig(bias_bits=8)
    assert quantize_bias(np.array([1.26, -1.0]), np.array([0.01, 0.01]), cfg, "l").tolist() \
        == [126, -100]
    with pytest.raises(ValueError, match=r"layer l: bias of channel 1 is 300 accumulator units;"
                                         r" needs 10 bits, config has bias_bits=8"):
        quantize_bias(np.array([0.0, 3.0]), np.array([0.01, 0.01]), cfg, "l")


def test_quantize_input_rounds_and_clamps():
    cfg = SDConfig()
    x = np.array([0.0, 0.5 / 127, 1.5 / 127, 1.0, 2.0, -2.0])
    assert quantize_input(x, 1 / 127, cfg).tolist() == [0, 0, 2, 127, 127, -128]
    with pytest.raises(ValueError, match="NaN"):
        quantize_input(np.array([np.nan]), 1.0, cfg)


def test_layer_input_outside_the_activation_range_is_refused():
    with pytest.raises(ValueError, match=r"layer fc: input values \[0, 200\] exceed the 8-bit"):
        layer_int(hand_layer(), np.array([[0, 200, 0, 0, 0, 0]]))


# ---------------------------------------------------------------- integer vs float
def _synthetic_qnet(seed=0):
    cfg = SDConfig(lanes=4, max_rows=128, block_rows=20)
    g = torch.Generator().manual_seed(seed)
    plan = [("c1", _FakeSD(random_sdweight(cfg, (6, 1, 3, 3), seed + 1), torch.randn(6) * .05,
                           1, 1), True),
            ("c2", _FakeSD(random_sdweight(cfg, (8, 6, 3, 3), seed + 2), torch.randn(8) * .05,
                           2, 1), True),
            ("fc", _FakeSD(random_sdweight(cfg, (5, 32), seed + 3), torch.randn(5) * .05),
             False)]
    x = torch.rand(64, 1, 4, 4, generator=g)
    return build_qnet(None, cfg, x, layers=plan), x


def test_integer_layers_stay_within_the_documented_bound_of_the_float_layers():
    qnet, x = _synthetic_qnet()
    h = qnet.quantize_input(x)
    for lay in qnet.layers:
        y, acc = layer_int(lay, h, return_acc=True)
        yf = layer_float(lay, h * lay.in_scale) / lay.out_scale
        yf = np.clip(yf, lay.config.act_min, lay.config.act_max)
        bound = quantization_bound(lay, acc).reshape(y.shape)
        err = np.abs(y - yf)
        assert (err <= bound).all(), (lay.name, float((err - bound).max()))
        assert err.max() > 0.25          # the comparison is not vacuous
        h = y


def test_bound_catches_a_wrong_multiplier():
    qnet, x = _synthetic_qnet(3)
    lay = qnet.layers[0]
    h = qnet.quantize_input(x)
    lay.mult = lay.mult + 40                         # a 0.1 % - 0.2 % multiplier error
    y, acc = layer_int(lay, h, return_acc=True)
    yf = np.clip(layer_float(lay, h * lay.in_scale) / lay.out_scale, -128, 127)
    lay.mult = lay.mult - 40
    assert (np.abs(y - yf) > quantization_bound(lay, acc).reshape(y.shape)).any()


def test_digits_integer_network_agrees_with_the_float_sd_model():
    from golden.data import load_digits_split
    from golden.models import DEFAULT_CHECKPOINT, load_checkpoint
    model, cfg = load_checkpoint(DEFAULT_CHECKPOINT)
    data = load_digits_split()
    qnet = build_qnet(model, cfg, data.x_train)
    y = data.y_test.numpy()
    pred_int = qnet.predict(data.x_test)
    with torch.no_grad():
        pred_model = model(data.x_test).argmax(1).numpy()
    pred_ref = qnet.run_float(data.x_test).argmax(1)
    assert (pred_ref == pred_model).mean() >= 0.997     # float reference == the SD model
    agree = (pred_int == pred_model).mean()
    acc_int, acc_float = (pred_int == y).mean(), (pred_model == y).mean()
    assert agree >= 0.99, agree
    assert abs(acc_int - acc_float) <= 0.005, (acc_int, acc_float)
    # per-layer bound on the real network
    h = qnet.quantize_input(data.x_test)
    for lay in qnet.layers:
        out, acc = layer_int(lay, h, return_acc=True)
        yf = np.clip(layer_float(lay, h * lay.in_scale) / lay.out_scale, -128, 127)
        assert (np.abs(out - yf) <= quantization_bound(lay, acc).reshape(out.shape)).all()
        h = out


def test_layers_the_configuration_cannot_hold_are_refused():
    from test_pack import CONFIGS
    cfg = CONFIGS[1]                                   # lanes 3, block_rows 5, max_rows 64
    sd = random_sdweight(cfg, (7, 40), 9, name="fc")   # R = 14 rows, 3 groups
    x = torch.rand(4, 40)
    with pytest.raises(ValueError, match=r"layer fc: 14 rows per filter exceed max_rows=10"):
        build_qnet(None, cfg.replace(max_rows=10), x, layers=[("fc", _FakeSD(sd, torch.zeros(7)),
                                                                False)])
    with pytest.raises(ValueError, match=r"layer fc: 3 lane groups exceed max_groups=2"):
        build_qnet(None, cfg.replace(quant_depth=6), x, layers=[
            ("fc", _FakeSD(sd, torch.zeros(7)), False)])
    with pytest.raises(ValueError, match=r"layer fc: its SD weights were decomposed for a "
                                         r"different configuration: lanes=3 \(export config: 4\)"):
        build_qnet(None, cfg.replace(lanes=4), x, layers=[("fc", _FakeSD(sd, torch.zeros(7)),
                                                           False)])
    with pytest.raises(ValueError, match=r"layer fc: input has 30 features"):
        build_qnet(None, cfg, torch.rand(4, 30), layers=[("fc", _FakeSD(sd, torch.zeros(7)),
                                                          False)])
    with pytest.raises(TypeError, match=r"layer p: MaxPool2d is neither an SD layer"):
        build_qnet(None, cfg, x, layers=[("p", torch.nn.MaxPool2d(2), False)])
    with pytest.raises(ValueError, match=r"calibration images contain NaN"):
        build_qnet(None, cfg, torch.full((2, 40), float("nan")),
                   layers=[("fc", _FakeSD(sd, torch.zeros(7)), False)])

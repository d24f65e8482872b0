"""SD training keeps the SD structure; bucket switch semantics; row pruning (layer scope,
gradual, in dense form); the validation split; the end-to-end pipeline."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from golden.data import load_digits_split
from golden.layers import SDConv2d, SDLinear, convert_to_sd, sd_layers
from golden.models import DigitsCNN
from golden.quantize import project
from golden.sdweight import weight_to_rows
from golden.sparsity import prune_rows
from golden.training import (BucketSwitch, check_sd_structure, convert_with_patterns,
                             finetune_sd, prune_dense, prune_schedule, reproject, row_masks,
                             run_pipeline, sd_parameters, sd_training_step, storage_report,
                             switch_values, validation_split)
from hw.config import preset

CFG = preset("default")


def _sd_model(config=CFG, prune=None, seed=0):
    torch.manual_seed(seed)
    model = DigitsCNN()
    convert_to_sd(model, config, prune=prune)
    return model


def _assert_structure(model, mask0, keep0):
    for (name, layer), m0, k0 in zip(sd_layers(model), mask0, keep0):
        cfg = layer.config
        c = layer.C.detach()
        assert torch.equal(project(c.contiguous(), cfg.exp_min, cfg.exp_max, cfg.terms), c), \
            f"{name}: C left the power-of-two grid"
        nz = c != 0
        assert not (nz & ~m0).any(), f"{name}: non-zero outside the frozen mask"
        group = torch.arange(c.shape[0]) // cfg.lanes
        assert not (nz.any(-1) & ~k0[group]).any(), f"{name}: row pattern violated"
        assert torch.equal(layer.mask, m0) and torch.equal(layer.row_keep, k0)
    check_sd_structure(model)


@pytest.mark.parametrize("mode,terms,kw", [
    ("sign", 1, {"bar": 1}),                          # the reference switch, every step
    ("sign", 2, {"bar": 1}),
    ("accumulate", 1, {"precondition": True}),
    ("accumulate", 2, {"precondition": False}),
])
def test_training_steps_keep_sd_structure(mode, terms, kw):
    cfg = CFG.replace(terms=terms)
    model = _sd_model(cfg, prune={"conv2": 0.5, "conv3": 0.5, "fc": 0.3})
    mask0 = [layer.mask.clone() for _, layer in sd_layers(model)]
    keep0 = [layer.row_keep.clone() for _, layer in sd_layers(model)]
    data = load_digits_split(0)
    opt = torch.optim.SGD(sd_parameters(model, False), lr=0.01, momentum=0.9)
    # a huge lr makes the accumulate mode switch too (sign mode switches regardless)
    switch = BucketSwitch(model, lr=50.0, mode=mode, **kw)
    gen = torch.Generator().manual_seed(0)
    for step in range(8):
        idx = torch.randint(0, len(data.x_train), (32,), generator=gen)
        sd_training_step(model, opt, switch, data.x_train[idx], data.y_train[idx],
                         reproject_after=(step % 2 == 0))
        _assert_structure(model, mask0, keep0)
    assert switch.switches > 0


def test_sgd_mode_with_reprojection_keeps_structure():
    model = _sd_model(prune=0.3)
    mask0 = [layer.mask.clone() for _, layer in sd_layers(model)]
    keep0 = [layer.row_keep.clone() for _, layer in sd_layers(model)]
    data = load_digits_split(0)
    opt = torch.optim.SGD(sd_parameters(model, True), lr=5.0)     # C moves by plain SGD
    before = [layer.C.detach().clone() for _, layer in sd_layers(model)]
    for _ in range(3):
        sd_training_step(model, opt, None, data.x_train[:64], data.y_train[:64], True)
        _assert_structure(model, mask0, keep0)
    assert any(not torch.equal(b, layer.C) for b, (_, layer) in zip(before, sd_layers(model)))


def test_switch_values_semantics():
    cfg = CFG
    c = torch.tensor([0.25, 0.25, -0.25, -0.25, 2.0 ** -6, 1.0, 0.0, 0.0, 0.0, 0.5])
    d = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0, 0.0, 0.0])
    support = torch.tensor([True] * 9 + [False])
    out = switch_values(c, d, support, cfg)
    assert out.tolist() == [0.5, 0.125, -0.125, -0.5, 0.0, 1.0, 2.0 ** -6, -(2.0 ** -6),
                            0.0, 0.0]


def test_sign_switch_counts_to_the_bar():
    layer = SDLinear.from_dense(nn.Linear(6, 2), CFG, name="l")
    model = nn.Sequential(layer)
    sw = BucketSwitch(model, lr=0.1, momentum=0.0, bar=3, mode="sign")
    c0 = layer.C.detach().clone()
    for i in range(3):
        layer.C.grad = -torch.ones_like(layer.C)      # d = +lr: increase every C
        n = sw.step()
        if i < 2:
            assert n == 0 and torch.equal(layer.C, c0)
    nz = c0 != 0
    assert torch.equal(layer.C[nz], (c0[nz] * 2.0 ** torch.sign(c0[nz])).clamp(-1, 1))
    assert (sw.counter[0][layer.support()] == 0).all()        # reset after switching


def test_accumulate_switch_waits_for_half_a_gap():
    layer = SDLinear.from_dense(nn.Linear(3, 1), CFG, name="l")
    with torch.no_grad():
        layer.C.copy_(torch.tensor([[[0.25, 0.0, -0.5]]]))
        layer.mask.copy_(torch.tensor([[[True, True, True]]]))
    model = nn.Sequential(layer)
    sw = BucketSwitch(model, lr=1.0, momentum=0.0, mode="accumulate")
    layer.C.grad = torch.full_like(layer.C, -0.1)             # d = +0.1 per step
    sw.step()                  # 0.35 stays 0.25; 0 + 0.1 rounds to 0.125; -0.4 stays -0.5
    assert layer.C.detach().flatten().tolist() == [0.25, 0.125, -0.5]
    layer.C.grad = torch.full_like(layer.C, -0.1)
    sw.step()                  # 0.45 -> 0.5; 0.125 + 0.1 -> 0.25 (counter had restarted);
    assert layer.C.detach().flatten().tolist() == [0.5, 0.25, -0.25]   # -0.3 -> -0.25


def test_finetune_rejects_bad_modes():
    model = _sd_model()
    data = load_digits_split(0)
    with pytest.raises(ValueError, match="c_update"):
        finetune_sd(model, data.x_train, data.y_train, epochs=1, c_update="adam")
    with pytest.raises(ValueError, match="reproject"):
        finetune_sd(model, data.x_train, data.y_train, epochs=1, c_update="sgd",
                    reproject_after=False)
    with pytest.raises(ValueError, match="bar"):
        BucketSwitch(model, 0.1, bar=0)


def test_check_sd_structure_catches_violations():
    model = _sd_model(prune=0.5)
    layer = model.conv3
    with torch.no_grad():
        layer.C[0, 0, 0] = 0.3
    with pytest.raises(ValueError, match="conv3: C holds values"):
        check_sd_structure(model)
    reproject(model)
    check_sd_structure(model)
    with torch.no_grad():
        dropped = (~layer.row_keep[0]).nonzero()[0, 0]
        layer.C[0, dropped, 0] = 0.5
    with pytest.raises(ValueError, match="conv3: C is non-zero outside"):
        check_sd_structure(model)


def test_storage_report_totals():
    model = _sd_model(prune={"conv3": 0.5})
    rep = storage_report(model)
    total = sum(v["total"] for v in rep["layers"].values())
    weights = sum(v["weights"] for v in rep["layers"].values())
    assert rep["total"]["total"] == total and rep["total"]["weights"] == weights == 15248
    assert rep["bits_per_weight"] == pytest.approx(total / weights)
    assert rep["compression_vs_fp32"] == pytest.approx(32 * weights / total)


def test_end_to_end_training_meets_the_accuracy_bound():
    """Shortened schedule (about 10 s on one core): SD within 1 point of dense at the
    weight-memory budget of the shipped recipe (<= 2.55 bits/weight, everything counted)."""
    res = run_pipeline(epochs=30, prune_epochs=15, sd_epochs=20, seed=0)
    m = res.metrics
    assert m["bits_per_weight"] <= 2.55
    assert m["acc_dense_fp32"] >= 97.0
    assert m["acc_sd_finetuned"] >= m["acc_dense_fp32"] - 1.0, m
    assert m["acc_sd_finetuned"] >= m["acc_sd_decomposed"], m
    check_sd_structure(res.sd_model)
    assert all(isinstance(layer, (SDConv2d, SDLinear)) for _, layer, _ in
               res.sd_model.layer_plan())


def test_layer_scope_prunes_records_over_the_whole_layer():
    # 3 groups of 4 filters (the last holds 2 real filters, like fc's), 5 rows each
    torch.manual_seed(0)
    w = torch.randn(10, 15) * 0.01
    w[:4] *= 100.0                      # group 0 matters most
    keep = prune_rows(w, 0.5, 4, 3, "energy", scope="layer")
    assert keep.shape == (3, 5)
    assert int((~keep).sum()) == 8      # floor(0.5 * 15 + 0.5) records of the layer
    assert keep[0].all()                # the strong group keeps all its rows
    assert keep.any(dim=1).all()        # no group is left without a row
    # the group scope prunes the same count in every group instead
    assert (~prune_rows(w, 0.5, 4, 3, "energy")).sum(1).tolist() == [3, 3, 3]
    # a huge fraction still leaves every group its best row
    scores = weight_to_rows(w, 3).square().sum(-1)
    keep = prune_rows(w, 0.99, 4, 3, "energy", scope="layer")
    assert keep.sum(1).tolist() == [1, 1, 1]
    best = torch.stack([scores[g * 4:g * 4 + 4].sum(0).argmax() for g in range(3)])
    assert keep.float().argmax(1).tolist() == best.tolist()
    with pytest.raises(ValueError, match="scope"):
        prune_rows(w, 0.5, 4, 3, scope="global")


def test_prune_schedule_is_a_monotone_ramp():
    fr = [prune_schedule(0.6, e, 10) for e in range(14)]
    assert fr == sorted(fr) and 0 < fr[0] < 0.6
    assert fr[9] == fr[13] == pytest.approx(0.6) and fr[8] < 0.6
    assert prune_schedule(0.6, 0, 1) == prune_schedule(0.6, 0, 0) == 0.6


def test_row_masks_follow_the_row_layout():
    w = torch.randn(6, 5, 3, 3)        # R = 15 rows of 3
    keep = torch.rand(2, 15) > 0.5
    masked = w * row_masks(w, keep, 4, 3)
    rows = weight_to_rows(masked, 3)
    group = torch.arange(6) // 4
    assert (rows[~keep[group]] == 0).all()
    assert torch.equal(rows[keep[group]], weight_to_rows(w, 3)[keep[group]])
    lin = torch.randn(3, 10)           # R = 4 rows, the last one padded
    keep = torch.tensor([[True, False, True, False]])
    m = row_masks(lin, keep, 4, 3)
    assert m.tolist() == [[True] * 3 + [False] * 3 + [True] * 3 + [False]] * 3


def test_gradual_pruning_then_conversion_keeps_the_patterns():
    torch.manual_seed(0)
    data = load_digits_split(0)
    dense = DigitsCNN()
    teacher = DigitsCNN().eval()
    prune = {"conv2": 0.6, "conv3": 0.75, "fc": 0.45}
    x, y = data.x_train[:256], data.y_train[:256]
    pats = prune_dense(dense, x, y, prune, CFG, epochs=3, teacher=teacher)
    assert set(pats) == {"conv1", "conv2", "conv3", "fc"} and pats["conv1"].all()
    for name, frac in prune.items():
        k = pats[name]
        assert int((~k).sum()) == int(frac * k.numel() + 0.5), name
        w = getattr(dense, name).weight.detach()
        rows = weight_to_rows(w, 3)
        assert (rows[~k[torch.arange(w.shape[0]) // CFG.lanes]] == 0).all(), name
    report = convert_with_patterns(dense, CFG, pats)
    assert [c["name"] for c in report.converted] == ["conv1", "conv2", "conv3", "fc"]
    assert report.converted[2]["prune"] == pytest.approx(0.75, abs=0.01)
    assert report.left_alone == []
    for name, layer in sd_layers(dense):
        assert not (layer.row_keep & ~pats[name]).any(), name
    check_sd_structure(dense)
    with pytest.raises(ValueError, match="unknown layer"):
        prune_dense(DigitsCNN(), x, y, {"conv9": 0.5}, CFG, epochs=0)
    with pytest.raises(ValueError, match="epochs"):
        prune_dense(DigitsCNN(), x, y, 0.5, CFG, epochs=-1)
    with pytest.raises(ValueError, match="scope"):
        prune_dense(DigitsCNN(), x, y, 0.5, CFG, scope="net")


def test_validation_split_is_carved_from_the_training_images():
    a, b = validation_split(0), validation_split(0)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert len(a.y_train) + len(a.y_test) == 1437 and len(a.y_test) == 288
    d = load_digits_split(0)
    # both parts are rows of the training split, partitioning it
    key = lambda x, y: sorted(map(tuple, torch.cat([x.flatten(1), y[:, None]], 1).tolist()))  # noqa: E731
    assert key(torch.cat([a.x_train, a.x_test]), torch.cat([a.y_train, a.y_test])) == \
        key(d.x_train, d.y_train)
    assert int(torch.bincount(a.y_test, minlength=10).min()) >= 27

"""DigitsCNN, the digits split, checkpoints (shipped and round trip), bad checkpoint files."""

from __future__ import annotations

import torch
import pytest
from torch import nn

from golden.data import load_digits_split
from golden.layers import SDConv2d, SDLinear, convert_to_sd, to_dense
from golden.models import (DEFAULT_CHECKPOINT, DENSE_CHECKPOINT, CHECKPOINT_FORMAT, DigitsCNN,
                           load_checkpoint, load_dense_checkpoint, save_checkpoint)
from golden.training import evaluate, storage_report
from hw.config import preset


def test_architecture_and_layer_plan():
    m = DigitsCNN()
    plan = m.layer_plan()
    assert [(n, r) for n, _, r in plan] == [("conv1", True), ("conv2", True), ("conv3", True),
                                          ("fc", False)]
    shapes = [tuple(mod.weight.shape) for _, mod, _ in plan]
    assert shapes == [(16, 1, 3, 3), (32, 16, 3, 3), (32, 32, 3, 3), (10, 128)]
    assert [mod.stride for _, mod, _ in plan[:3]] == [(1, 1), (2, 2), (2, 2)]
    assert all(mod.padding == (1, 1) for _, mod, _ in plan[:3])
    x = torch.rand(3, 1, 8, 8)
    # the plan, walked by hand, is the forward pass (flatten in (c, h, w) order)
    h = x
    for name, mod, relu in plan:
        if isinstance(mod, nn.Linear):
            assert h.shape[1:] == (32, 2, 2)
            h = h.flatten(1)
        h = mod(h)
        h = torch.relu(h) if relu else h
    assert torch.equal(h, m(x))
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        m(torch.rand(2, 1, 9, 9))


def test_layer_plan_after_conversion_gives_sd_modules():
    m = DigitsCNN()
    convert_to_sd(m, "default")
    for _, mod, _ in m.layer_plan():
        assert isinstance(mod, (SDConv2d, SDLinear))
        assert hasattr(mod, "bias") and hasattr(mod, "to_sdweight")
    assert m.conv2.stride == (2, 2) and m.conv2.padding == (1, 1)


def test_digits_split_is_fixed_and_stratified():
    a, b = load_digits_split(0), load_digits_split(0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a.x_train.shape == (1437, 1, 8, 8) and a.x_test.shape == (360, 1, 8, 8)
    assert a.x_train.dtype == torch.float32 and a.y_train.dtype == torch.int64
    assert float(a.x_train.min()) >= 0 and float(a.x_train.max()) <= 1
    counts = torch.bincount(a.y_test, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37
    c = load_digits_split(1)
    assert not torch.equal(a.y_test, c.y_test)


def test_shipped_checkpoint_loads_and_meets_its_bounds():
    assert DEFAULT_CHECKPOINT.stat().st_size < 1_000_000
    model, cfg, info = load_checkpoint(with_info=True)
    assert cfg == preset("default")
    m = info["metrics"]
    data = load_digits_split(0)
    acc = evaluate(to_dense(model), data.x_test, data.y_test)
    assert acc == pytest.approx(m["acc_sd_finetuned"], abs=1e-6)
    assert acc >= m["acc_dense_fp32"] - 1.0
    assert storage_report(model)["bits_per_weight"] <= 3.5
    assert m["bits_per_weight"] == pytest.approx(storage_report(model)["bits_per_weight"])
    dense, dm = load_dense_checkpoint()
    assert evaluate(dense, data.x_test, data.y_test) == pytest.approx(m["acc_dense_fp32"])
    assert DENSE_CHECKPOINT.is_file()


def test_shipped_checkpoint_integer_accuracy_and_weight_memory_ratio():
    """The bit-exact integer network is within 1 point of dense fp32 too; words x width
    of the accelerator's weight images (as the bench's RTL section counts them): SD Ce +
    basis + quant <= 0.30 of the dense int8 baseline's weights + quant (target 1/3, kept
    with margin), and <= 1/3 without the quant words."""
    from golden.qnet import build_qnet
    from golden.rtl_runner import pack_network
    from hw.top import memory_map

    model, cfg, info = load_checkpoint(with_info=True)
    data = load_digits_split(0)
    qnet = build_qnet(model, cfg, data.x_train)
    acc_int = 100.0 * float((qnet.predict(data.x_test.numpy()) == data.y_test.numpy()).mean())
    assert acc_int >= info["metrics"]["acc_dense_fp32"] - 1.0
    bits = {}
    for kind in ("sd", "dense"):
        images, _, _ = pack_network(qnet, kind)
        mm = memory_map(cfg, kind)
        where = {"ce": "weights", "dense": "weights", "basis": "basis", "quant": "quant"}
        bits[kind] = {name: len(words) * mm[where[name]]["width"]
                      for name, words in images.items()}
    sd, dense = bits["sd"], bits["dense"]
    assert set(sd) == {"ce", "basis", "quant"} and set(dense) == {"dense", "quant"}
    assert sd["quant"] == dense["quant"]
    # the images hold exactly what the storage report counts
    assert sum(sd.values()) == storage_report(model)["total"]["total"]
    assert sum(sd.values()) / sum(dense.values()) <= 0.30
    assert (sd["ce"] + sd["basis"]) / dense["dense"] <= 1 / 3


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = DigitsCNN()
    convert_to_sd(model, "tiny", prune={"conv3": 0.5}, skip=["conv1"])
    path = save_checkpoint(tmp_path / "m.pt", model, preset("tiny"), metrics={"a": 1.5},
                           options={"note": "x"})
    loaded, cfg, info = load_checkpoint(path, with_info=True)
    assert cfg == preset("tiny")
    assert info["metrics"] == {"a": 1.5}
    assert info["options"]["sd_layers"] == ["conv2", "conv3", "fc"]
    assert isinstance(loaded.conv1, nn.Conv2d)
    x = torch.rand(4, 1, 8, 8)
    model.eval()
    assert torch.equal(loaded(x), model(x))
    for name in ("conv2", "conv3", "fc"):
        a = getattr(model, name).to_sdweight(name)
        b = getattr(loaded, name).to_sdweight(name)
        assert torch.equal(a.exponent, b.exponent) and torch.equal(a.row_keep, b.row_keep)


def _write(tmp_path, obj, name="bad.pt"):
    p = tmp_path / name
    torch.save(obj, p)
    return p


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="junk.pt: not a smartdeal-sd-checkpoint"):
        load_checkpoint(junk)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(DEFAULT_CHECKPOINT.read_bytes()[:2000])
    with pytest.raises(ValueError, match="trunc.pt"):
        load_checkpoint(trunc)
    with pytest.raises(ValueError, match="not a dict"):
        load_checkpoint(_write(tmp_path, [1, 2]))
    good = torch.load(DEFAULT_CHECKPOINT, weights_only=True)
    for change, match in [({"format": "other"}, "format field"),
                          ({"version": 2}, "version 2"),
                          ({"arch": "ResNet"}, "unknown arch"),
                          ({"config": {"lanes": 0}}, "invalid configuration"),
                          ({"state_dict": {"x": 1}}, "dict of tensors")]:
        with pytest.raises(ValueError, match=match):
            load_checkpoint(_write(tmp_path, {**good, **change}))
    state = dict(good["state_dict"])
    state.pop("fc.B")
    with pytest.raises(ValueError, match="does not fit DigitsCNN"):
        load_checkpoint(_write(tmp_path, {**good, "state_dict": state}))
    state = dict(good["state_dict"])
    state["conv2.C"] = state["conv2.C"] * 0 + 0.3          # not powers of two
    with pytest.raises(ValueError, match="conv2"):
        load_checkpoint(_write(tmp_path, {**good, "state_dict": state}))
    with pytest.raises(ValueError, match=CHECKPOINT_FORMAT.replace("sd", "dense")):
        load_dense_checkpoint(DEFAULT_CHECKPOINT)

"""Export directories: every format, manifest, load back, inspect, atomic writes, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from golden import export as ex
from golden import memfile
from golden.export import ExportError, export_qnet, load_export, verify_export
from golden.manifest import ManifestError, read_manifest
from golden.pack import MEMORIES
from scripts.cli import main as cli
from test_reference import _synthetic_qnet


@pytest.fixture(scope="module")
def qnet_and_x():
    return _synthetic_qnet(5)


@pytest.fixture()
def exported(tmp_path, qnet_and_x):
    qnet, _ = qnet_and_x
    out = tmp_path / "exp"
    export_qnet(qnet, out, ex.ALL_FORMATS, progress=False)
    return out


def test_every_format_written_verified_and_identical(exported, qnet_and_x):
    qnet, x = qnet_and_x
    manifest, cfg = read_manifest(exported)
    assert manifest["format_version"] == 1 and cfg == qnet.config
    assert verify_export(exported) == {k: {f: "ok" for f in ex.ALL_FORMATS} for k in MEMORIES}
    for kind in MEMORIES:
        mem = manifest["memories"][kind]
        images = {f: memfile.read_memory(exported / info["name"], mem["width"], fmt=f,
                                         count=mem["words"])
                  for f, info in mem["files"].items()}
        first = images["hex"]
        assert all(img == first for img in images.values()), kind
        assert memfile.image_sha256(first, mem["width"]) == mem["sha256"]
        assert (exported / f"{kind}.bin").read_bytes() == memfile.words_to_bytes(first,
                                                                                 mem["width"])


def test_load_export_gives_back_the_same_network(exported, qnet_and_x):
    qnet, x = qnet_and_x
    for fmt in ex.ALL_FORMATS:
        cfg, back, images = load_export(exported, fmt=fmt)
        xi = qnet.quantize_input(x)
        for a, b in zip(qnet.run_int(xi, return_all=True), back.run_int(xi, return_all=True)):
            assert np.array_equal(a, b)
        assert np.array_equal(qnet.run_float(x), back.run_float(x))
    for la, lb in zip(qnet.layers, back.layers):
        assert (la.name, la.stride, la.padding, la.relu, la.in_shape, la.out_shape) == \
               (lb.name, lb.stride, lb.padding, lb.relu, lb.in_shape, lb.out_shape)
        assert la.in_scale == lb.in_scale and la.out_scale == lb.out_scale
        assert torch.equal(la.sd.basis_scale, lb.sd.basis_scale)
        assert la.acc_bits_needed == lb.acc_bits_needed


def test_manifest_records_layout_and_storage_two_ways(exported, qnet_and_x):
    qnet, _ = qnet_and_x
    manifest, cfg = read_manifest(exported)
    report = json.loads((exported / "storage_report.json").read_text())
    next_base = {k: 0 for k in MEMORIES}
    for lay, entry, rep in zip(qnet.layers, manifest["layers"], report["layers"]):
        for kind in MEMORIES:
            assert entry[kind]["base"] == next_base[kind]        # consecutive placement
            next_base[kind] += entry[kind]["words"]
        assert entry["rows"] == lay.sd.rows and entry["n_groups"] == lay.sd.n_groups
        packed = (entry["ce"]["words"] * cfg.ce_word_width
                  + entry["basis"]["words"] * cfg.basis_word_bits
                  + entry["quant"]["words"] * cfg.quant_word_bits)
        assert packed == lay.sd.storage_bits().total == rep["total"] == rep["packed_bits"]
    assert next_base == {k: manifest["memories"][k]["words"] for k in MEMORIES}
    assert "| total |" in (exported / "storage_report.md").read_text()


# ---------------------------------------------------------------- inspect
def test_inspect_prints_the_report_and_verifies(exported, capsys):
    assert cli(["inspect", str(exported)]) == 0
    out = capsys.readouterr().out
    assert "all checksums verified" in out and "| c1 |" in out and "| total |" in out


@pytest.mark.parametrize("damage,match", [
    (lambda d: d.joinpath("ce.hex").write_text(
        d.joinpath("ce.hex").read_text().replace("@0", "@1")), r"ce.hex: sha256 .* does not "
                                                               r"match the manifest"),
    (lambda d: d.joinpath("basis.npz").unlink(), r"basis.npz: listed in the manifest .* missing"),
    (lambda d: _edit_manifest(d, lambda m: m.update(format_version=2)),
     r"format_version is 2, this reader understands version 1"),
    (lambda d: _edit_manifest(d, lambda m: m.update(format="other")), r"format is 'other'"),
    (lambda d: _edit_manifest(d, lambda m: m["config"].update(acc_bits=40)),
     r"config_fingerprint .* does not match"),
    (lambda d: _truncate_and_rehash(d, "quant.bin"), r"quant.bin:byte \d+: file size 130 is not a multiple of 7 bytes"),
    (lambda d: _truncate_and_rehash(d, "ce.coe"), r"ce.coe:line \d+: statement .* is not terminated"),
    (lambda d: _edit_report(d), r"storage_report.json disagrees with the memory images: "
                                r"layer c2: codes"),
    (lambda d: d.joinpath("manifest.json").write_text("{"), r"manifest.json: not valid JSON"),
])
def test_inspect_fails_on_damage_naming_the_file(exported, capsys, damage, match):
    damage(exported)
    assert cli(["inspect", str(exported)]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err
    import re
    assert re.search(match, err), err


def _edit_manifest(d, fn):
    m = json.loads((d / "manifest.json").read_text())
    fn(m)
    (d / "manifest.json").write_text(json.dumps(m))


def _truncate_and_rehash(d, name):
    """Cut a file short and record its new checksum, so only the reader can notice."""
    p = d / name
    data = p.read_bytes()
    p.write_bytes(data[:len(data) - 3])
    kind, suffix = name.split(".")
    _edit_manifest(d, lambda m: m["memories"][kind]["files"][suffix].update(
        sha256=ex.file_sha256(p)))


def _edit_report(d):
    p = d / "storage_report.json"
    r = json.loads(p.read_text())
    r["layers"][1]["codes"] += 1
    p.write_text(json.dumps(r))


def test_load_export_rejects_a_checksum_mismatch(exported):
    p = exported / "quant.mem"
    p.write_text(p.read_text() + "\n// harmless comment, but the file changed\n")
    with pytest.raises(ExportError, match=r"quant.mem: sha256 .* does not match"):
        load_export(exported)
    _, q, _ = load_export(exported, verify=False)     # the image itself is still intact
    assert q.layers[0].name == "c1"


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match=r"no manifest"):
        read_manifest(tmp_path)


# ---------------------------------------------------------------- atomic output
def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_a_network_that_does_not_fit_leaves_no_output(tmp_path, qnet_and_x):
    qnet, _ = qnet_and_x
    small = qnet.config.replace(ce_depth=10)
    for lay in qnet.layers:
        lay.sd = type(lay.sd)(**{**lay.sd.__dict__, "config": small})
    try:
        with pytest.raises(ValueError, match=r"words of ce memory but the configuration has "
                                             r"ce_depth=10"):
            export_qnet(type(qnet)(**{**qnet.__dict__, "config": small}), tmp_path / "o",
                        progress=False)
    finally:
        for lay in qnet.layers:
            lay.sd = type(lay.sd)(**{**lay.sd.__dict__, "config": qnet.config})
    assert not (tmp_path / "o").exists() and _leftovers(tmp_path) == []


def test_a_failure_while_writing_keeps_the_previous_export(exported, qnet_and_x, monkeypatch):
    qnet, _ = qnet_and_x
    before = {p.name: p.read_bytes() for p in exported.iterdir()}
    calls = {"n": 0}
    real = memfile.write_memory

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full (simulated)")
        return real(*a, **k)

    monkeypatch.setattr(memfile, "write_memory", flaky)
    with pytest.raises(OSError, match="simulated"):
        export_qnet(qnet, exported, ["hex", "coe"], progress=False)
    assert {p.name: p.read_bytes() for p in exported.iterdir()} == before
    assert _leftovers(exported.parent) == []
    monkeypatch.setattr(memfile, "write_memory", real)
    export_qnet(qnet, exported, ["hex"], progress=False)        # replaces the old export
    assert sorted(p.name for p in exported.iterdir()) == sorted(
        ["manifest.json", "storage_report.json", "storage_report.md", "ce.hex", "basis.hex",
         "quant.hex"])


def test_refuses_to_replace_a_directory_that_is_not_an_export(tmp_path, qnet_and_x):
    qnet, _ = qnet_and_x
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"holds no manifest.json; refusing to replace it"):
        export_qnet(qnet, tmp_path / "keep", progress=False)
    assert (tmp_path / "keep" / "notes.txt").read_text() == "mine"


def test_parse_formats():
    assert ex.parse_formats("all") == list(ex.ALL_FORMATS)
    assert ex.parse_formats("hex, mif,hex") == ["hex", "mif"]
    with pytest.raises(ValueError, match=r"unknown memory format\(s\) \['vhd'\]"):
        ex.parse_formats("hex,vhd")


# ---------------------------------------------------------------- CLI and model files
@pytest.fixture(scope="module")
def dense_state(tmp_path_factory):
    from golden.models import DigitsCNN
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("models")
    state = DigitsCNN().state_dict()
    torch.save(state, d / "dense.pt")
    from safetensors.torch import save_file
    save_file(state, str(d / "dense.safetensors"), metadata={"config": '{"lanes": 2, "ce_depth": 4096}'})
    torch.save({"epoch": 3, "state_dict": state}, d / "wrapped.pt")
    torch.save([1, 2, 3], d / "list.pt")
    (d / "text.pt").write_text("not a checkpoint")
    torch.save({"conv1.weight": torch.zeros(2, 2)}, d / "other_arch.pt")
    bad = dict(state)
    bad["fc.bias"] = torch.full((10,), float("nan"))
    torch.save(bad, d / "nan.pt")
    return d


@pytest.mark.parametrize("name,config_lanes", [("dense.pt", 4), ("dense.safetensors", 2)])
def test_cli_exports_plain_state_dicts_by_decomposing(tmp_path, dense_state, capsys, name,
                                                      config_lanes):
    out = tmp_path / "o"
    assert cli(["export", str(dense_state / name), "--formats", "npz,hex", "--out", str(out),
                "--calib", "64", "-q"]) == 0
    manifest, cfg = read_manifest(out)
    assert cfg.lanes == config_lanes
    assert manifest["source"]["kind"] == ("safetensors" if "safe" in name else "state-dict")
    assert manifest["evaluation"]["images"] == 360
    assert cli(["inspect", str(out)]) == 0


@pytest.mark.parametrize("name,match", [
    ("list.pt", r"list.pt: not a model checkpoint: expected a smartdeal-sd-checkpoint file or a "
                r"state dict of tensors, found list"),
    ("text.pt", r"text.pt: not a PyTorch checkpoint"),
    ("other_arch.pt", r"other_arch.pt: not a DigitsCNN state dict"),
    ("nan.pt", r"nan.pt: tensor 'fc.bias' contains NaN or inf"),
    ("missing.pt", r"missing.pt: no such model file"),
])
def test_cli_refuses_files_that_are_not_models(tmp_path, dense_state, capsys, name, match):
    assert cli(["export", str(dense_state / name), "--out", str(tmp_path / "o"), "-q"]) == 1
    import re
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert not (tmp_path / "o").exists()


def test_load_model_accepts_a_wrapped_state_dict(dense_state):
    model, cfg, kind = ex.load_model(dense_state / "wrapped.pt")
    assert kind == "state-dict" and type(model).__name__ == "DigitsCNN"


def test_digits_checkpoint_exported_in_all_formats_and_inspected(tmp_path, capsys):
    """The bundled SD checkpoint: every format, identical images, inspect verifies."""
    out = tmp_path / "digits"
    assert cli(["export", "--formats", "all", "--out", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    manifest, cfg = read_manifest(out)
    ev = manifest["evaluation"]
    assert ev["agreement"] >= 0.99 and abs(ev["int_accuracy"] - ev["float_sd_accuracy"]) <= 0.005
    assert verify_export(out) == {k: {f: "ok" for f in ex.ALL_FORMATS} for k in MEMORIES}
    assert cli(["inspect", str(out)]) == 0
    assert "all checksums verified" in capsys.readouterr().out
    assert "digits test set (360 images)" in text
    # a configuration the checkpoint was not decomposed for is refused by name
    assert cli(["export", "--config", "tiny", "--out", str(tmp_path / "t"), "-q"]) == 1
    assert "lanes=4 (export config: 2)" in capsys.readouterr().err

"""`smartdeal verilog` / `smartdeal demo` command behaviour (fast: shifter blocks only)."""

from __future__ import annotations

import json

import pytest

from hw.config import PRESETS, SDConfig
from hw.designs import DESIGNS, build, factory
from scripts import cli


def test_writes_requested_blocks_and_config(tmp_path, capsys):
    out = tmp_path / "v"
    rc = cli.main(["verilog", "--config", "tiny", "--out", str(out),
                   "--only", "shift", "--only", "shifter"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "shift.v", "shifter.v"]
    assert SDConfig.from_dict(json.loads((out / "config.json").read_text())) == PRESETS["tiny"]
    text = (out / "shifter.v").read_text()
    assert "module sd_shifter(" in text and "i__payload" in text and "o__valid" in text
    listed = capsys.readouterr().out
    assert "shift.v" in listed and "shifter.v" in listed


def test_config_from_json_file(tmp_path):
    config = SDConfig(basis_bits=6, exp_min=-3, exp_max=0)
    path = tmp_path / "cfg.json"
    path.write_text(config.to_json())
    assert cli.main(["verilog", "--config", str(path), "--out", str(tmp_path / "v"),
                     "--only", "shift"]) == 0
    # 6-bit value shifted by up to 3, plus a sign bit: a 10-bit result port.
    assert "output [9:0] result" in (tmp_path / "v" / "shift.v").read_text()


def test_bad_preset_lists_presets(tmp_path, capsys):
    assert cli.main(["verilog", "--config", "huge", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'huge'" in err and "tiny" in err and "large" in err


def test_registry_entries_resolve():
    for name in DESIGNS:
        assert callable(factory(name)), name
    with pytest.raises(ValueError, match="registered"):
        factory("nope")
    with pytest.raises(TypeError, match="SDConfig"):
        build("shifter", "default")

"""`SDConfig`: presets, JSON round trip, derived widths and readable validation errors."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from hw.config import PRESETS, SDConfig, load_config, preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_json_round_trip(name):
    config = PRESETS[name]
    again = SDConfig.from_json(config.to_json())
    assert again == config
    assert again.fingerprint() == config.fingerprint()
    assert SDConfig.from_dict(json.loads(config.to_json(indent=None))) == config


def test_presets_are_distinct_and_named():
    assert {"tiny", "default", "large"} <= set(PRESETS)
    assert len({c.fingerprint() for c in PRESETS.values()}) == len(PRESETS)
    assert preset("default") == SDConfig()
    assert PRESETS["tiny"].lanes < PRESETS["default"].lanes < PRESETS["large"].lanes


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'huge'.*default.*large.*tiny"):
        preset("huge")
    with pytest.raises(ValueError, match=r"known presets"):
        load_config("huge")


def test_load_config_from_file_and_manifest(tmp_path):
    config = SDConfig(lanes=4, exp_min=-5, exp_max=1)
    plain = tmp_path / "cfg.json"
    plain.write_text(config.to_json())
    assert load_config(plain) == config
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"format": 1, "config": config.to_dict()}))
    assert load_config(str(manifest)) == config
    assert load_config(None) == PRESETS["default"]
    assert load_config(config) is config
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.json")


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SDConfig().lanes = 4  # type: ignore[misc]


def test_replace_validates():
    assert SDConfig().replace(lanes=4).lanes == 4
    with pytest.raises(ValueError, match=r"lanes must be in \[1, 64\], got 0"):
        SDConfig().replace(lanes=0)


# ------------------------------------------------------------------ invalid values
# (field, bad value, words the message must contain: the parameter and its range)
RANGE_CASES = [
    ("lanes", 0, r"lanes must be in \[1, 64\], got 0"),
    ("lanes", 65, r"lanes must be in \[1, 64\], got 65"),
    ("basis_size", 1, r"basis_size must be in \[2, 8\], got 1"),
    ("terms", 3, r"terms must be in \[1, 2\], got 3"),
    ("act_bits", 1, r"act_bits must be in \[2, 16\], got 1"),
    ("basis_bits", 17, r"basis_bits must be in \[2, 16\], got 17"),
    ("exp_bits", 0, r"exp_bits must be in \[1, 6\], got 0"),
    ("acc_bits", 65, r"acc_bits must be in \[8, 64\], got 65"),
    ("shift_bits", 8, r"shift_bits must be in \[1, 7\], got 8"),
    ("ce_depth", 0, r"ce_depth must be in \[1, \d+\], got 0"),
    ("acc_depth", 0, r"acc_depth must be in \[1, \d+\], got 0"),
    ("exp_min", -33, r"exp_min must be in \[-32, 32\], got -33"),
    ("ce_word_bits", 4, r"ce_word_bits must be in \[8, 1024\] or None, got 4"),
]


@pytest.mark.parametrize("field,value,message", RANGE_CASES,
                         ids=[f"{f}={v}" for f, v, _ in RANGE_CASES])
def test_out_of_range_field_names_parameter_and_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        SDConfig(**{field: value})


def test_exponent_range_wider_than_code_width():
    # exp_bits=3 holds 7 levels (field 0 is zero): [-7, 0] has 8.
    with pytest.raises(ValueError, match=re.escape("exponent range [-7, 0] has 8 levels, "
                                                   "but exp_bits=3 holds at most 7")):
        SDConfig(exp_min=-7, exp_max=0)
    SDConfig(exp_min=-6, exp_max=0)  # exactly 7 levels is fine
    SDConfig(exp_bits=4, exp_min=-7, exp_max=0, acc_bits=40)


def test_inverted_exponent_range():
    with pytest.raises(ValueError, match=r"exp_max \(-3\) must be >= exp_min \(0\)"):
        SDConfig(exp_min=0, exp_max=-3)


def test_accumulator_too_narrow_for_one_product():
    needed = SDConfig().product_bits + 1
    with pytest.raises(ValueError, match=rf"acc_bits \(16\) must be >= {needed}"):
        SDConfig(acc_bits=16, bias_bits=16)


@pytest.mark.parametrize("kwargs,message", [
    ({"block_rows": 300, "max_rows": 200}, r"block_rows \(300\) must be <= max_rows \(200\)"),
    ({"bias_bits": 40}, r"bias_bits \(40\) must be <= acc_bits \(32\)"),
])
def test_inconsistent_pairs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SDConfig(**kwargs)


@pytest.mark.parametrize("field,value", [("lanes", 2.0), ("lanes", True), ("exp_min", "0"),
                                         ("ce_word_bits", 32.5)])
def test_wrong_types_raise_type_error(field, value):
    with pytest.raises(TypeError, match=field):
        SDConfig(**{field: value})


def test_json_errors_are_value_errors():
    with pytest.raises(ValueError, match="malformed"):
        SDConfig.from_json("{not json")
    with pytest.raises(ValueError, match=r"unknown SDConfig field\(s\) \['lane'\]"):
        SDConfig.from_json('{"lane": 4}')
    with pytest.raises(TypeError):
        SDConfig.from_dict([1, 2])  # type: ignore[arg-type]


# ----------------------------------------------------------------- derived widths
@pytest.mark.parametrize("config", [*PRESETS.values(),
                                    SDConfig(basis_bits=6, exp_min=-3, exp_max=0),
                                    SDConfig(exp_bits=4, exp_min=-10, exp_max=3, acc_bits=40),
                                    SDConfig(terms=2, basis_size=4, lanes=3)],
                         ids=[*PRESETS, "b6_e4", "b8_e14", "t2_s4_l3"])
def test_derived_widths_hold_their_extremes(config):
    c = config
    assert c.exp_levels == c.exp_max - c.exp_min + 1 <= c.max_exp_levels == 2 ** c.exp_bits - 1
    assert c.max_shift == c.exp_max - c.exp_min
    assert 2 ** c.shift_code_bits > c.max_shift
    assert c.code_bits == 1 + c.exp_bits
    assert c.element_code_bits == c.terms * c.code_bits
    assert c.record_bits == c.row_bits + c.lanes * c.basis_size * c.element_code_bits
    assert c.words_per_record * c.ce_word_width >= c.record_bits
    assert c.header_bits <= c.record_bits
    # The largest shifted term, |basis_min| << max_shift, fits a signed shifted_bits value.
    biggest = -c.basis_min << c.max_shift
    assert biggest <= 2 ** (c.shifted_bits - 1) - 1
    # A rebuilt weight sums S * terms such terms.
    assert biggest * c.basis_size * c.terms <= 2 ** (c.rebuilt_weight_bits - 1) - 1
    assert c.product_bits == c.rebuilt_weight_bits + c.act_bits
    assert c.acc_bits > c.product_bits
    assert c.basis_word_bits == c.basis_size ** 2 * c.basis_bits
    assert c.act_word_bits == c.basis_size * c.act_bits
    assert c.quant_word_bits == c.bias_bits + c.mult_bits + c.shift_bits
    assert (c.act_min, c.act_max) == (-2 ** (c.act_bits - 1), 2 ** (c.act_bits - 1) - 1)
    assert (c.basis_min, c.basis_max) == (-2 ** (c.basis_bits - 1), 2 ** (c.basis_bits - 1) - 1)
    assert 2 ** c.row_bits > c.max_rows
    assert 2 ** c.block_bits >= c.max_blocks
    assert 2 ** c.lane_bits >= c.lanes
    assert 2 ** c.acc_addr_bits >= c.acc_depth
    assert 2 ** c.group_bits > c.max_groups
    assert c.summary().startswith(f"S={c.basis_size} lanes={c.lanes}")


@pytest.mark.parametrize("kwargs, error, message", [
    ({"rebuild_cycles": 0}, ValueError, r"rebuild_cycles must be in \[1, lanes=4\], got 0"),
    ({"rebuild_cycles": 8}, ValueError, r"rebuild_cycles must be in \[1, lanes=4\], got 8"),
    ({"rebuild_cycles": 3, "lanes": 4}, ValueError, r"rebuild_cycles \(3\) must divide lanes \(4\)"),
    ({"rebuild_cycles": 2.0}, TypeError, r"rebuild_cycles must be an int, got 2.0"),
    ({"rebuild_cycles": True}, TypeError, r"rebuild_cycles must be an int, got True"),
])
def test_rebuild_cycles_validation(kwargs, error, message):
    with pytest.raises(error, match=message):
        SDConfig(**kwargs)


def test_rebuild_cycles_default_round_trip_and_fingerprint(tmp_path):
    assert all(c.rebuild_cycles == 1 for c in PRESETS.values())
    assert SDConfig(lanes=8, rebuild_cycles=8).rebuild_cycles == 8
    slow = SDConfig(rebuild_cycles=4)
    assert SDConfig.from_json(slow.to_json()) == slow
    assert slow.fingerprint() != SDConfig().fingerprint()
    # A JSON written before the field existed loads with the default, and keeps the
    # fingerprint it had then (manifests store it): a hash of the old field set.
    import hashlib
    old = {k: v for k, v in SDConfig().to_dict().items() if k != "rebuild_cycles"}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    loaded = load_config(path)
    assert loaded == SDConfig() and loaded.rebuild_cycles == 1
    old_hash = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:12]
    assert loaded.fingerprint() == old_hash


def test_sim_accepts_an_export_config_differing_only_in_rebuild_cycles():
    from scripts.sim import accelerator_config

    export = SDConfig()
    slow = SDConfig(rebuild_cycles=4)
    assert accelerator_config(export, None) is export
    assert accelerator_config(export, slow) is slow
    with pytest.raises(ValueError, match=r"lanes=4 \(in --config: 2\).*only rebuild_cycles"):
        accelerator_config(export, SDConfig(lanes=2, rebuild_cycles=2))
    with pytest.raises(ValueError, match=r"acc_depth=256 \(in --config: 64\)"):
        accelerator_config(export, slow.replace(acc_depth=64))

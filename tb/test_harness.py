"""Self-test of the regression harness (`tb.harness`) and the testbench helpers (`tb.common`).

The RTL part builds one tiny hand-written Verilog design (a registered adder whose adder is
in an extra source file, width set by a parameter), checks that a passing cocotb test
passes, that a failing one becomes an ``AssertionError`` naming it, and that the second run
reuses the build.
"""

from __future__ import annotations

import os

import cocotb
import pytest
from amaranth import signed
from amaranth.lib import data
from cocotb.triggers import RisingEdge

from hw.config import PRESETS, SDConfig
from tb.common import ClockReset, Scoreboard, pack, random_stalls, unpack
from tb.harness import CONFIG_ENV, config_from_env, run_cocotb

TOP = """
module harness_top #(parameter WIDTH = 4) (
    input clk, input rst,
    input [WIDTH-1:0] a, input [WIDTH-1:0] b,
    output reg [WIDTH:0] sum
);
    wire [WIDTH:0] s;
    harness_add #(.WIDTH(WIDTH)) add (.a(a), .b(b), .s(s));
    always @(posedge clk) sum <= rst ? 0 : s;
endmodule
"""

ADDER = """
module harness_add #(parameter WIDTH = 4) (
    input [WIDTH-1:0] a, input [WIDTH-1:0] b, output [WIDTH:0] s
);
    assign s = a + b;
endmodule
"""


# -------------------------------------------------------------------------- cocotb
@cocotb.test()
async def harness_adds(dut):
    """The configuration and extra environment arrive; the design adds with WIDTH=8."""
    assert config_from_env() == PRESETS["tiny"]
    assert os.environ["HARNESS_SELFTEST"] == "yes"
    assert len(dut.a) == 8, "the WIDTH parameter did not reach the build"
    clock = ClockReset(dut)
    await clock.reset()
    board = Scoreboard("adder")
    for a, b in [(0, 0), (255, 255), (17, 200)]:
        dut.a.value, dut.b.value = a, b
        await RisingEdge(dut.clk)  # operands sampled here
        await RisingEdge(dut.clk)  # registered sum visible after this edge
        board.expect(a + b, inputs=(a, b))
        board.compare(int(dut.sum.value))
    board.check()


@cocotb.test()
async def harness_fails_on_purpose(dut):
    """Always fails: proves that a failing cocotb test fails the pytest test."""
    raise AssertionError("deliberate failure")


# -------------------------------------------------------------------------- pytest
@pytest.mark.sim
def test_verilog_text_design_passes_fails_and_is_cached(tmp_path):
    extra = tmp_path / "harness_add.v"
    extra.write_text(ADDER)
    args = dict(test_module=__name__, name="harness_selftest", parameters={"WIDTH": 8},
                extra_env={"HARNESS_SELFTEST": "yes"}, verilog_sources=[extra], timeout_s=120)
    results = run_cocotb(lambda config: TOP, PRESETS["tiny"], testcase="harness_adds", **args)
    build_dir = results.parent.parent.parent
    binary = build_dir / "harness_top"
    built_at = binary.stat().st_mtime_ns
    with pytest.raises(AssertionError, match=r"1 of 1 cocotb test\(s\) failed.*\n"
                                             r".*harness_fails_on_purpose: failure: "
                                             r".*deliberate failure"):
        run_cocotb(lambda config: TOP, PRESETS["tiny"], testcase="harness_fails_on_purpose",
                   **args)
    assert binary.stat().st_mtime_ns == built_at, "an unchanged design was rebuilt"


def test_run_cocotb_rejects_non_config():
    with pytest.raises(TypeError, match="SDConfig"):
        run_cocotb(lambda config: TOP, {"lanes": 2}, test_module=__name__)


def test_config_from_env(monkeypatch):
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    with pytest.raises(RuntimeError, match="run_cocotb"):
        config_from_env()
    config = SDConfig(lanes=3)
    monkeypatch.setenv(CONFIG_ENV, config.to_json())
    assert config_from_env() == config


# ----------------------------------------------------------------- tb.common helpers
LAYOUT = data.StructLayout({"x": signed(4), "flag": 1, "v": data.ArrayLayout(signed(3), 2)})


def test_pack_unpack_struct_round_trip():
    value = {"x": -8, "flag": 1, "v": [3, -4]}
    bits = pack(LAYOUT, value)
    # x = 0b1000 at [0,4), flag at 4, v[0] = 0b011 at [5,8), v[1] = 0b100 at [8,11)
    assert bits == 0b100_011_1_1000
    assert unpack(LAYOUT, bits) == value
    assert unpack(signed(5), 0b11111) == -1 and pack(signed(5), -1) == 0b11111


@pytest.mark.parametrize("value,message", [
    ({"x": 8, "flag": 0, "v": [0, 0]}, r"payload\.x: 8 does not fit signed\(4\)"),
    ({"x": 0, "flag": 0, "v": [0, 4]}, r"payload\.v\[1\]: 4 does not fit"),
    ({"x": 0, "flag": 0}, r"missing field\(s\) \['v'\]"),
    ({"x": 0, "flag": 0, "v": [0, 0], "y": 1}, r"unknown field\(s\) \['y'\]"),
    ({"x": 0, "flag": 0, "v": [0]}, r"payload\.v: expected 2 elements"),
])
def test_pack_names_the_bad_field(value, message):
    with pytest.raises(ValueError, match=message):
        pack(LAYOUT, value)


def test_scoreboard_reports_item_field_and_cycle():
    board = Scoreboard("blk")
    board.expect({"a": 1, "b": [1, 2]}, row=0)
    board.expect({"a": 2, "b": [3, 4]}, row=1)
    board.compare({"a": 1, "b": [1, 2]}, cycle=10)
    board.compare({"a": 2, "b": [3, 5]}, cycle=11)
    with pytest.raises(AssertionError, match=r"item #1 \(cycle 11\) for row=1: "
                                             r"payload\.b\[1\]: expected 4, got 5"):
        board.check()
    missing = Scoreboard("blk")
    missing.expect(7)
    with pytest.raises(AssertionError, match="1 expected item.* never arrived"):
        missing.check()
    with pytest.raises(AssertionError, match="nothing was compared"):
        Scoreboard("empty").check()


def test_random_stalls_is_seeded_and_bounded():
    first = [next(g) for g in [random_stalls(0.5, seed=3)] for _ in range(200)]
    again = [next(g) for g in [random_stalls(0.5, seed=3)] for _ in range(200)]
    assert first == again and 60 < sum(first) < 140
    assert not any(next(random_stalls(0.0)) for _ in range(10))
    with pytest.raises(ValueError, match="stall probability"):
        random_stalls(1.0)

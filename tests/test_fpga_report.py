"""FPGA report: grouping, tables, checks and the `smartdeal fpga-report` command's errors.

No tool runs here (fast): the runs are small dicts shaped like `fpga.flow.run_flow`'s.
"""

from __future__ import annotations

import pytest

from fpga import report, tools
from fpga.measure import checks_for
from scripts import cli


def _res(lut=0, ff=0, bram=0, dsp=0):
    return {"lut": lut, "ff": ff, "bram": bram, "dsp": dsp, "lutram": 0, "spram": 0}


BLOCKS = {
    "(total)": _res(1000, 800, 10, 6),
    "datapath.decoder": _res(100, 50),
    "datapath.basis_array": _res(200, 100),
    "datapath.mac": _res(400, 300, 2, 6),
    "datapath.seq": _res(20, 10),
    "host": _res(150, 200),
    "mem_weights": _res(5, 0, 8, 0),
    "(top logic)": _res(125, 140),
}


def _run(status="ok", device="ecp5-25k", preset="default", kind="sd", fmax=120.0,
         blocks=BLOCKS):
    r = {"design": f"{kind}_top", "device": device, "preset": preset, "kind": kind,
         "status": status, "error": None if status == "ok" else "FitError: needs 57 DSP",
         "target_mhz": 150.0, "seconds": 12.0}
    if status == "ok":
        r.update(fmax_mhz=fmax, blocks=blocks,
                 pnr={"utilisation": {"lut": {"used": 1100, "available": 24288},
                                      "ff": {"used": 900, "available": 24288},
                                      "bram": {"used": 10, "available": 56},
                                      "dsp": {"used": 6, "available": 28}},
                      "critical_path": None})
    return r


def test_block_groups_count_each_block_once_and_bram_under_memories():
    g = report.block_groups(BLOCKS)
    assert g["decoder"]["lut"] == 100 and g["basis array"]["lut"] == 200
    assert g["MAC lanes"] == {**_res(400, 300, 0, 6)}           # its BRAM moves to memories
    assert g["host interface"]["lut"] == 150 and g["control"]["lut"] == 20
    assert g["memories"]["bram"] == 10 and g["memories"]["lut"] == 5
    assert g["other"]["lut"] == 1000 - (100 + 200 + 400 + 150 + 20 + 5)
    for k in ("lut", "ff", "dsp", "bram"):
        assert sum(v[k] for v in g.values()) == BLOCKS["(total)"][k]


def test_failed_run_shows_failed_and_no_figures():
    sd, dense = _run(), _run(status="failed", kind="dense")
    table = "\n".join(report.comparison_table([("default", sd, dense)]))
    assert "ok / failed" in table
    assert "120.0 / -" in table and "1000 / -" in table
    row = report.run_row(dense)
    assert row["fmax"] is None and row["lut"] is None and row["bram"] is None
    assert "FAILED: FitError" in report.critical_path_lines(dense)[0]


def test_checks_pass_miss_and_fail():
    pairs = [("default", _run(fmax=96.8), _run(kind="dense")),
             ("tiny", _run(status="failed", device="ice40-up5k", preset="tiny"),
              _run(device="ice40-up5k", preset="tiny", kind="dense"))]

    class B:
        storage = {"sd_bits": 30, "dense_bits": 100}
    checks = {c.name.split(":")[0].split(" (")[0]: c for c in checks_for(pairs, {"x": B()})}
    fmax = checks["default preset on ECP5-25k"]
    assert fmax.value == 96.8 and fmax.status == "MISSED"
    assert checks["rebuild path"].value == 0 and checks["rebuild path"].status == "pass"
    ratio = checks["LUT(decoder + basis array) / LUT(MAC lanes)"]
    assert ratio.value == pytest.approx(300 / 400) and ratio.status == "MISSED"
    assert checks["bundled network"].value == pytest.approx(0.3)
    tiny = checks["tiny preset fits an iCE40 with the network's weights on chip"]
    assert tiny.value == 0.0 and tiny.status == "MISSED" and "FitError" in tiny.detail
    none = report.Check("x", None, 1.0, ">=")
    assert none.status == "FAILED (no result)"


def test_command_refuses_unknown_preset_and_device(capsys, tmp_path):
    assert cli.main(["fpga-report", "--preset", "huge", "--reports", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'huge'" in err and "tiny" in err
    assert cli.main(["fpga-report", "--device", "ecp5-12k", "--reports", str(tmp_path)]) == 2
    assert "unknown FPGA device 'ecp5-12k'" in capsys.readouterr().err


def test_command_names_a_missing_toolchain(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(tools.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    tools.find_tool.cache_clear()
    tools.tool_version.cache_clear()
    try:
        rc = cli.main(["fpga-report", "--quick", "--reports", str(tmp_path)])
    finally:
        tools.find_tool.cache_clear()
        tools.tool_version.cache_clear()
    assert rc == 2
    err = capsys.readouterr().err
    assert "yowasp-" in err and "pip install" in err
    assert not list(tmp_path.glob("*.json")), "no report may be written without tools"


def test_render_only_rewrites_the_doc_from_a_summary(tmp_path, capsys):
    runs = [_run(), _run(kind="dense", fmax=130.0),
            _run(status="failed", device="ice40-up5k", preset="tiny"),
            _run(status="failed", device="ice40-up5k", preset="tiny", kind="dense")]
    for r in runs:
        r["label"] = r["preset"]
        r["tools"] = {"yosys": "Yosys 0.70"}
    checks = [report.Check("default preset on ECP5-25k: Fmax after P&R (MHz)", 120.0, 100.0, ">=")]
    report.write_json(tmp_path / "summary.json", runs, checks, {"seconds": 60.0})
    doc = tmp_path / "fpga.md"
    assert cli.main(["fpga-report", "--render-only", "--reports", str(tmp_path),
                     "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "| default preset on ECP5-25k: Fmax after P&R (MHz) | 120.000 | >= 100.000 | pass |" in text
    assert "| default | ecp5-25k | ok / ok | 120.0 / 130.0 |" in text
    assert "| tiny | ice40-up5k | failed / failed | - / - |" in text
    assert "FAILED: FitError" in text
    assert (tmp_path / "fpga_resources.png").stat().st_size > 1000
    assert cli.main(["fpga-report", "--render-only", "--reports", str(tmp_path / "none")]) == 2


def test_block_checks_use_the_family_run_that_completed():
    # 25k did not fit (synthesis only); the 85k run shares the synthesis and completed
    sd25 = _run(status="failed")
    sd25["blocks"] = BLOCKS
    sd85 = _run(device="ecp5-85k", fmax=36.5)
    for r in (sd25, sd85):
        r["family"] = "ecp5"
    pairs = [("default", sd25, _run(status="failed", kind="dense")),
             ("default", sd85, _run(device="ecp5-85k", kind="dense"))]
    checks = checks_for(pairs, {})
    fmax, dsp, ratio = checks[0], checks[1], checks[2]
    assert fmax.value is None and "FitError" in fmax.detail and "ecp5-85k: 36.5 MHz" in fmax.detail
    assert dsp.value == 0 and "ecp5-85k" in dsp.detail
    assert ratio.value == pytest.approx(0.75)
    assert checks[3].status == "FAILED (no result)"      # no build storage given


def _fake_flow(design, dev, workdir, **kwargs):
    """Stand-in for `fpga.flow.run_flow`: a result naming what it was asked to build."""
    return {"design": design, "device": dev, "status": "ok", "fmax_mhz": 100.0,
            "workdir": str(workdir)}


def test_tasks_run_in_worker_processes_and_come_back_by_key():
    from scripts.fpga_report import _run_tasks
    tasks = {("a",): (pow, 2, 10), ("b",): (pow, 3, 2), ("c",): (divmod, 7, 2)}
    assert _run_tasks(tasks, 2, "test") == {("a",): 1024, ("b",): 9, ("c",): (3, 1)}
    assert _run_tasks(tasks, 1, "test") == {("a",): 1024, ("b",): 9, ("c",): (3, 1)}


def test_command_runs_the_plan_and_keeps_its_order(tmp_path, monkeypatch):
    """The plan's runs come back in plan order (tools stubbed; --jobs 1 keeps the stubs)."""
    jobs = 1
    import types

    import fpga.flow
    import fpga.measure

    monkeypatch.setattr(fpga.flow, "run_flow", _fake_flow)
    monkeypatch.setattr(fpga.measure, "design_of", lambda built, kind: f"{built.name}:{kind}")
    monkeypatch.setattr(fpga.measure, "build_for",
                        lambda name, out: types.SimpleNamespace(name=name, storage={}))
    monkeypatch.setattr(fpga.measure, "checks_for", lambda pairs, builds, blocks=(): [])
    monkeypatch.setattr(tools, "check_toolchain", lambda family: None)
    reports = tmp_path / "reports"
    assert cli.main(["fpga-report", "--preset", "default", "--device", "ecp5-25k",
                     "--device", "ecp5-85k", "--no-blocks", "--no-boards", "--no-doc",
                     "--jobs", str(jobs), "--workdir", str(tmp_path / "w"),
                     "--reports", str(reports)]) == 0
    import json
    runs = json.loads((reports / "summary.json").read_text())["runs"]
    assert [(r["design"], r["device"], r["kind"]) for r in runs] == [
        ("default:sd", "ecp5-25k", "sd"), ("default:dense", "ecp5-25k", "dense"),
        ("default:sd", "ecp5-85k", "sd"), ("default:dense", "ecp5-85k", "dense")]
    assert (reports / "default_ecp5-85k_dense.json").exists()


def test_command_refuses_zero_jobs(capsys, tmp_path):
    assert cli.main(["fpga-report", "--jobs", "0", "--reports", str(tmp_path)]) == 2
    assert "--jobs must be at least 1, got 0" in capsys.readouterr().err


def test_rebuild_ratio_detail_names_the_time_multiplexed_variant():
    """The blocks measured alone add the full-rate and the time-multiplexed ratio to the
    rebuild-LUT target's detail (the target itself stays the design's breakdown)."""
    def block(name, lut):
        return {"design": name, "status": "ok", "blocks": {"(total)": {"lut": lut, "ff": 1}}}
    blocks = [block("decoder", 100), block("basis_array", 500), block("mac", 1000),
              block("basis_array_r4", 150)]
    pairs = [("default", _run(), _run(kind="dense"))]
    ratio = {c.name: c for c in checks_for(pairs, {}, blocks)}[
        "LUT(decoder + basis array) / LUT(MAC lanes)"]
    assert "blocks alone: 0.600 at one row per cycle" in ratio.detail
    assert "0.250 with rebuild_cycles=4 (basis array 150 LUT" in ratio.detail
    # a failed variant adds nothing
    blocks[-1] = {"design": "basis_array_r4", "status": "failed"}
    ratio = {c.name: c for c in checks_for(pairs, {}, blocks)}[
        "LUT(decoder + basis array) / LUT(MAC lanes)"]
    assert "rebuild_cycles" not in ratio.detail


def test_per_block_section_names_the_classic_abc_fallbacks():
    from fpga.measure import _fallback_note
    sd = {"synth": {"blocks_fallback": {"ctrl": "abc (classic)"}}}
    dense = {"synth": {"blocks_fallback": {"(total)": "abc (classic)", "ctrl": "abc (classic)"}}}
    note = _fallback_note(sd, dense)
    assert "(SD: ctrl; dense: the design, ctrl)" in note
    assert _fallback_note({"synth": {}}, None) == ""

"""Benchmark bookkeeping: flags computed from measured values, "not available" handling,
results.json merging and the generated report.  Fast: no section does real work here."""

import json
import math
import sys
import types
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:  # `bench/` is a top-level folder, not an installed package
    sys.path.insert(0, str(_REPO))

from bench import runner  # noqa: E402
from bench.context import Context  # noqa: E402
from bench.core import (FAIL, NOT_AVAILABLE, NOT_RUN, PASS, NotAvailable,  # noqa: E402
                        SectionOutput, Stat, TargetSpec, evaluate, require, target_entry)
from bench.report import render  # noqa: E402
from bench.targets import TARGETS, TARGETS_BY_KEY  # noqa: E402


def spec(op=">=", target=20.0, missing=NOT_AVAILABLE):
    return TargetSpec("s.k", "thing", op, target, "x", 3, "s", missing_status=missing)


@pytest.mark.parametrize("op, target, measured, expected", [
    (">=", 20.0, 20.0, PASS), (">=", 20.0, 19.99, FAIL), ("<=", 0.15, 0.15, PASS),
    ("<=", 0.15, 0.151, FAIL), ("<", 60.0, 60.0, FAIL), ("<", 60.0, 59.9, PASS),
    (">", 1.0, 1.0, FAIL), ("<=", 0, 0, PASS), ("<=", 0, 1, FAIL),
])
def test_flag_follows_measured_value(op, target, measured, expected):
    assert evaluate(spec(op, target), measured) == expected


def test_missing_measurement_is_never_a_pass():
    assert evaluate(spec(), None) == NOT_AVAILABLE
    assert evaluate(spec(missing=NOT_RUN), None) == NOT_RUN
    with pytest.raises(ValueError, match="not finite"):
        evaluate(spec(), math.nan)
    with pytest.raises(TypeError, match="number or None"):
        evaluate(spec(), True)
    with pytest.raises(ValueError, match="unknown operator"):
        TargetSpec("a", "b", "==", 1, "x", 1, "s")


def test_target_entry_records_value_bound_and_reason():
    e = target_entry(spec(), 25.0)
    assert (e["measured"], e["target"], e["op"], e["status"]) == (25.0, 20.0, ">=", PASS)
    assert "reason" not in e
    e = target_entry(spec(), None, reason="module x is not in the tree yet")
    assert e["status"] == NOT_AVAILABLE and e["reason"].startswith("module x")


def test_every_issue_target_is_listed():
    keys = set(TARGETS_BY_KEY)
    for key in ("decompose.speedup_conv", "decompose.us_per_weight_conv",
                "accuracy.drop_points", "accuracy.bits_per_weight", "rtl.cycles_over_ideal",
                "rtl.weight_memory_ratio", "fpga.fmax_ecp5_mhz", "energy.ratio_dram"):
        assert key in keys
    assert TARGETS_BY_KEY["fpga.fmax_ecp5_mhz"].missing_status == NOT_RUN
    assert TARGETS_BY_KEY["energy.ratio_dram"].target == 2.44
    assert TARGETS_BY_KEY["rtl.weight_memory_ratio"].target == pytest.approx(1 / 3)


def test_stat_median_and_spread():
    s = Stat.of([3.0, 1.0, 2.0, 10.0], "s")
    assert (s.median, s.min, s.max, s.n) == (2.5, 1.0, 10.0, 4)
    assert s.q1 <= s.median <= s.q3
    one = Stat.of([5.0])
    assert one.q1 == one.q3 == one.median == 5.0
    with pytest.raises(ValueError, match="non-finite"):
        Stat.of([1.0, math.inf])


def test_require_reports_missing_module_and_attribute():
    with pytest.raises(NotAvailable, match="not in the tree yet"):
        require("golden.no_such_module_here")
    with pytest.raises(NotAvailable, match="has no nothing_here"):
        require("json", "nothing_here")
    assert require("json", "dumps") is json


def _fake_sections(monkeypatch, behaviours):
    """Register fake section modules: name -> callable(ctx) returning SectionOutput."""
    sections = {}
    for name, fn in behaviours.items():
        mod = types.ModuleType(f"_fake_bench_{name}")
        mod.run = fn
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
        sections[name] = (mod.__name__, f"fake {name}")
    monkeypatch.setattr(runner, "SECTIONS", sections)


def _missing(ctx):
    raise NotAvailable("module hw.top is not in the tree yet")


def _broken(ctx):
    raise RuntimeError("boom")


def test_runner_flags_and_not_available(monkeypatch, tmp_path):
    def decompose(ctx):
        return SectionOutput(values={"conv": {"speedup": 31.0}},
                             measured={"decompose.speedup_conv": 31.0,
                                       "decompose.us_per_weight_conv": 0.2})
    _fake_sections(monkeypatch, {"decompose": decompose, "rtl": _missing, "energy": _broken})
    ctx = Context(quick=True, out_dir=tmp_path, progress=False)
    res = runner.run_bench(ctx)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["targets"] == res["targets"]
    flags = {t["key"]: t for t in res["targets"]}
    assert flags["decompose.speedup_conv"]["status"] == PASS
    assert flags["decompose.us_per_weight_conv"]["status"] == FAIL
    # Measured by nobody although the section ran: not available, with a reason.
    assert flags["decompose.speedup_fc"]["status"] == NOT_AVAILABLE
    assert flags["rtl.cycles_over_ideal"]["status"] == NOT_AVAILABLE
    assert "hw.top" in flags["rtl.cycles_over_ideal"]["reason"]
    assert flags["energy.ratio_dram"]["status"] == NOT_AVAILABLE
    assert "boom" in flags["energy.ratio_dram"]["reason"]
    assert flags["fpga.fmax_ecp5_mhz"]["status"] == NOT_RUN
    assert res["sections"]["energy"]["status"] == "error"
    assert len(res["targets"]) == len(TARGETS)
    assert not any(t["status"] == PASS for t in res["targets"] if t["measured"] is None)


def test_only_keeps_previous_sections_and_recomputes_flags(monkeypatch, tmp_path):
    def rtl_v1(ctx):
        return SectionOutput(measured={"rtl.weight_memory_ratio": 0.5})

    def rtl_v2(ctx):
        return SectionOutput(measured={"rtl.weight_memory_ratio": 0.25})

    def decompose(ctx):
        return SectionOutput(measured={"decompose.speedup_fc": 40.0})
    _fake_sections(monkeypatch, {"decompose": decompose, "rtl": rtl_v1})
    ctx = Context(out_dir=tmp_path, progress=False)
    first = runner.run_bench(ctx)
    assert {t["key"]: t["status"] for t in first["targets"]}["rtl.weight_memory_ratio"] == FAIL
    _fake_sections(monkeypatch, {"decompose": decompose, "rtl": rtl_v2})
    second = runner.run_bench(ctx, only=["rtl"])
    flags = {t["key"]: t["status"] for t in second["targets"]}
    assert flags["rtl.weight_memory_ratio"] == PASS
    assert flags["decompose.speedup_fc"] == PASS          # kept from the first run
    assert second["sections_run"] == ["rtl"]
    with pytest.raises(ValueError, match="unknown bench section"):
        runner.run_bench(ctx, only=["nope"])


def test_report_opens_with_comparison_table(monkeypatch, tmp_path):
    def energy(ctx):
        return SectionOutput(values={"network": {"ratio_dram": 1.7, "ratio_onchip": 1.1}},
                             measured={"energy.ratio_dram": 1.7})
    _fake_sections(monkeypatch, {"energy": energy, "rtl": _missing})
    res = runner.run_bench(Context(out_dir=tmp_path, progress=False))
    text = render(res, tmp_path)
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert lines[0].startswith("| Metric | Unit | This project | SmartDeal paper | Dense baseline"
                               " | Command |")
    energy_row = next(ln for ln in lines if "weights streamed from DRAM" in ln)
    assert "| 1.7 |" in energy_row and "2.44" in energy_row
    assert "smartdeal bench --only energy" in energy_row
    goal = next(ln for ln in lines if "`energy.ratio_dram`" in ln)
    assert "**FAIL**" in goal and "goal" in goal
    assert "## Sections not available" in text and "hw.top" in text


def test_failed_measurement_is_a_fail_without_value(monkeypatch, tmp_path):
    def fpga(ctx):
        return SectionOutput(failed={"fpga.fmax_ecp5_mhz": "the latest run FAILED: timing"})
    _fake_sections(monkeypatch, {"fpga": fpga})
    res = runner.run_bench(Context(out_dir=tmp_path, progress=False))
    t = {t["key"]: t for t in res["targets"]}
    assert t["fpga.fmax_ecp5_mhz"]["status"] == FAIL
    assert t["fpga.fmax_ecp5_mhz"]["measured"] is None
    assert "FAILED" in t["fpga.fmax_ecp5_mhz"]["reason"]
    assert t["fpga.rebuild_dsp"]["status"] == NOT_RUN
    with pytest.raises(ValueError, match="cannot have a value"):
        target_entry(spec(), 3.0, failed=True)


def test_fpga_section_reads_reports(monkeypatch, tmp_path):
    from bench import fpga
    monkeypatch.setattr(fpga, "REPORTS", tmp_path)
    with pytest.raises(NotAvailable, match="make fpga-report"):
        fpga.run(Context(progress=False))
    def cells(lut, dsp=0):
        return {"lut": lut, "ff": 0, "bram": 0, "dsp": dsp, "spram": 0}
    blocks = {"(total)": cells(1000, 8), "decoder": cells(50), "basis_array": cells(150),
              "mac": cells(800, 8)}
    run = {"status": "ok", "fmax_mhz": 123.4, "target_mhz": 100, "blocks": blocks,
           "pnr": {"utilisation": {"lut": {"used": 1200}, "dsp": {"used": 8}}}}
    (tmp_path / "default_ecp5-25k_sd.json").write_text(json.dumps(run))
    out = fpga.run(Context(progress=False))
    assert out.measured["fpga.fmax_ecp5_mhz"] == 123.4
    assert out.measured["fpga.rebuild_lut_fraction"] == pytest.approx(200 / 800)
    assert out.measured["fpga.rebuild_dsp"] == 0
    (tmp_path / "default_ecp5-25k_sd.json").write_text(
        json.dumps({"status": "failed", "error": "nextpnr: no route"}))
    out = fpga.run(Context(progress=False))
    assert not out.measured and "no route" in out.failed["fpga.fmax_ecp5_mhz"]


def test_shared_failure_is_not_recomputed():
    ctx = Context(progress=False)
    calls = []

    def boom():
        calls.append(1)
        raise RuntimeError("sim crashed")
    for _ in range(2):
        with pytest.raises(RuntimeError, match="sim crashed"):
            ctx.cached("rtl_runs", boom)
    assert calls == [1]
    assert ctx.cached("x", lambda: 5) == 5 and ctx.cached("x", lambda: 6) == 5

"""FPGA figures (issue 7), reused from the latest ``make fpga-report``.

Place-and-route takes far longer than the benchmark may, so this section never runs the
tools: it reads ``fpga/reports/<preset>_<device>_<kind>.json`` written by
``smartdeal fpga-report`` (one `fpga.flow.run_flow` result per design) and recomputes
the targets from the measured values in them.  No report: the targets are "not run".
A report whose run failed: the targets it should have measured are "fail", with the
tool's error.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from .context import REPO, Context
from .core import NotAvailable, SectionOutput, require

__all__ = ["run", "REPORTS", "load_run", "figures"]

REPORTS = REPO / "fpga" / "reports"
PRESET, DEVICE = "default", "ecp5-25k"
OTHER_DEVICES = ("ecp5-85k",)
_KEYS = ("fpga.fmax_ecp5_mhz", "fpga.rebuild_lut_fraction", "fpga.rebuild_dsp")


def _rel(path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def load_run(reports: Path, preset: str, device: str, kind: str) -> dict | None:
    """One run result, or None when the report file does not exist."""
    path = Path(reports) / f"{preset}_{device}_{kind}.json"
    if not path.is_file():
        return None
    try:
        run = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(run, dict) or "status" not in run:
        raise ValueError(f"{path} is not an fpga-report run result (no 'status')")
    run["_path"] = str(path)
    run["_mtime"] = _dt.datetime.fromtimestamp(path.stat().st_mtime).isoformat(
        timespec="seconds")
    return run


def figures(run: dict) -> dict:
    """Flat figures of one run (None where the run failed)."""
    ok = run.get("status") == "ok"
    util = (run.get("pnr") or {}).get("utilisation", {}) if ok else {}

    def used(cat):
        v = util.get(cat)
        return v.get("used") if isinstance(v, dict) else v

    return {"status": run.get("status"), "error": run.get("error"),
            "fmax_mhz": run.get("fmax_mhz") if ok else None,
            "target_mhz": run.get("target_mhz"), "lut": used("lut"), "ff": used("ff"),
            "bram": used("bram"), "dsp": used("dsp"), "report": run.get("_path"),
            "report_time": run.get("_mtime"), "design": run.get("design"),
            "device": run.get("device")}


def run(ctx: Context) -> SectionOutput:
    report = require("fpga.report", "block_groups")
    sd = load_run(REPORTS, PRESET, DEVICE, "sd")
    dense = load_run(REPORTS, PRESET, DEVICE, "dense")
    if sd is None:
        raise NotAvailable(f"no {PRESET}_{DEVICE}_sd.json in {_rel(REPORTS)}: "
                           f"run `make fpga-report` first")
    values = {"sd": figures(sd), "dense": figures(dense) if dense else None,
              "preset": PRESET, "device": DEVICE, "other_devices": {}}
    out = SectionOutput(values=values)
    # Other devices of the report, for context (the targets are on ECP5-25k, issue 7).
    for dev in OTHER_DEVICES:
        runs = {k: load_run(REPORTS, PRESET, dev, k) for k in ("sd", "dense")}
        if runs["sd"] is not None:
            values["other_devices"][dev] = {k: figures(r) if r else None for k, r in runs.items()}
            f = values["other_devices"][dev]["sd"]
            out.notes.append(f"SD accelerator on {dev}: " + (
                f"{f['fmax_mhz']:.1f} MHz, {f['lut']} LUT, {f['dsp']} DSP"
                if f["status"] == "ok" else f"FAILED: {f['error']}") + ".")
    if sd["status"] != "ok":
        why = f"the latest fpga-report run FAILED: {sd.get('error')}"
        out.failed = {k: why for k in _KEYS}
        out.notes.insert(0, f"SD accelerator on {DEVICE}: {why}")
        return out
    groups = report.block_groups(sd.get("blocks") or {})
    rebuild = [groups.get(g, {}) for g in ("decoder", "basis array")]
    mac_lut = groups.get("MAC lanes", {}).get("lut")
    values["blocks"] = groups
    out.measured["fpga.fmax_ecp5_mhz"] = float(sd["fmax_mhz"])
    if groups:
        out.measured["fpga.rebuild_dsp"] = float(sum(g.get("dsp", 0) for g in rebuild))
    else:
        out.unavailable["fpga.rebuild_dsp"] = "the report has no per-block figures"
    if mac_lut:
        out.measured["fpga.rebuild_lut_fraction"] = sum(g.get("lut", 0) for g in rebuild) / mac_lut
    else:
        out.unavailable["fpga.rebuild_lut_fraction"] = "the report has no MAC-lane LUT count"
    d = values["dense"]
    out.notes.insert(0, 
        f"From {_rel(values['sd']['report'])} ({values['sd']['report_time']}): "
        f"SD accelerator {values['sd']['fmax_mhz']:.1f} MHz, {values['sd']['lut']} LUT, "
        f"{values['sd']['ff']} FF, {values['sd']['bram']} BRAM, {values['sd']['dsp']} DSP"
        + (f"; dense baseline {d['fmax_mhz']:.1f} MHz, {d['lut']} LUT, {d['ff']} FF, "
           f"{d['bram']} BRAM, {d['dsp']} DSP" if d and d.get("fmax_mhz") else
           "; dense baseline: " + (d["status"] if d else "no report"))
        + ". Details in docs/fpga.md.")
    return out

"""What `smartdeal fpga-report` measures and how it judges it.

* `build_for` writes the ``smartdeal verilog`` folder of a preset (accelerator, dense
  baseline, the bundled network's memory images) and `design_of` points the flow at
  one of its two tops, so the figures belong to the delivered Verilog;
* `block_runs` measures each registered block alone, `board_run` a board wrapper with
  its pin constraints;
* `checks_for` evaluates the must-reach targets, `write_doc` writes ``docs/fpga.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from fpga import report
from fpga.flow import VerilogDesign, amaranth_design, run_flow

__all__ = ["TopUnavailable", "build_for", "design_of", "bare_design", "failed_run",
           "block_runs", "board_run", "checks_for", "write_doc", "BLOCK_NAMES",
           "BLOCK_VARIANTS"]

#: registry blocks measured alone with --blocks (the tops are measured by the plan)
BLOCK_NAMES = ("shifter", "decoder", "basis_array", "mac", "dense")
#: configuration variants of registry blocks also measured alone: result name ->
#: (registry block, `SDConfig` changes).  The time-multiplexed basis array shows what the
#: rebuild path costs when it spends several cycles per coefficient row.
BLOCK_VARIANTS: dict[str, tuple[str, dict]] = {
    "basis_array_r4": ("basis_array", {"rebuild_cycles": 4}),
}


class TopUnavailable(RuntimeError):
    """The accelerator top (or the bundled network) needed for a build is missing."""


def build_for(preset_name: str, out: Path):
    """Write the build folder of ``preset_name`` (``smartdeal verilog``) into ``out``."""
    try:
        from scripts.verilog import write_build
    except ImportError as exc:      # pragma: no cover - only while the tree is incomplete
        raise TopUnavailable(f"scripts/verilog.py cannot write a build folder: {exc}") from None
    from hw.config import preset
    try:
        return write_build(preset(preset_name), out, label=preset_name, progress=False)
    except (ImportError, FileNotFoundError) as exc:
        raise TopUnavailable(f"cannot build preset {preset_name!r}: {exc}") from None


def design_of(build, kind: str) -> VerilogDesign:
    """The flow's view of the SD (``"sd"``) or dense (``"dense"``) top of a build."""
    b = build.sd if kind == "sd" else build.dense
    root = Path(b.root)
    return VerilogDesign(top=b.top, files=tuple(root / f for f in b.verilog),
                         data_dir=root / b.init_dir, clocks=(b.clock,), name=b.top)


def bare_design(preset_name: str, kind: str, out: Path) -> VerilogDesign:
    """The accelerator of ``kind`` for a preset with empty weight memories (resources only)."""
    from hw.config import preset
    from hw.top import AcceleratorTop
    from scripts.verilog import DENSE_TOP, SD_TOP

    top = SD_TOP if kind == "sd" else DENSE_TOP
    return amaranth_design(AcceleratorTop(preset(preset_name), kind), top, out,
                           name=f"{top} (memories empty)")


def failed_run(preset_name: str, dev: str, kind: str, error: str) -> dict:
    """A run that could not start, recorded as failed (no figures)."""
    from fpga.devices import device
    from scripts.verilog import DENSE_TOP, SD_TOP
    d = device(dev)
    return {"design": SD_TOP if kind == "sd" else DENSE_TOP, "device": d.name, "part": d.part,
            "family": d.family, "status": "failed", "error": error, "preset": preset_name,
            "kind": kind, "seconds": 0.0, "target_mhz": d.default_mhz}


def block_runs(preset_name: str, dev: str, work: Path,
               log: "Callable[[str], None] | None" = None) -> list[dict]:
    """Each block of `BLOCK_NAMES` and `BLOCK_VARIANTS` alone (harnessed) on ``dev``."""
    from hw.config import preset
    from hw.designs import DESIGNS, build, top_name

    cfg = preset(preset_name)
    jobs = [(name, name, {}) for name in BLOCK_NAMES]
    jobs += [(name, block, changes) for name, (block, changes) in BLOCK_VARIANTS.items()]
    out = []
    for name, block, changes in jobs:
        if block not in DESIGNS:
            continue
        d = amaranth_design(build(block, cfg.replace(**changes)), top_name(block),
                            work / preset_name / name, name=name)
        r = run_flow(d, dev, work / preset_name / name / dev, log=log)
        r["preset"], r["kind"] = preset_name, "block"
        if changes:
            r["config_changes"] = dict(changes)
        out.append(r)
    return out


def _alone_fraction(blocks, basis: str) -> "tuple[float, dict] | None":
    """LUT(decoder + ``basis``) / LUT(mac) from blocks measured alone, with the figures."""
    lut = {r.get("design"): report.run_row(r)["lut"] for r in blocks if r.get("status") == "ok"}
    need = ("decoder", basis, "mac")
    if any(not lut.get(n) for n in need):
        return None
    return (lut["decoder"] + lut[basis]) / lut["mac"], {n: lut[n] for n in need}


def board_run(board_name: str, preset_name: str, work: Path,
              log: "Callable[[str], None] | None" = None, built=None) -> dict:
    """Place and route the board wrapper of ``board_name`` with its pin constraints.

    The accelerator inside holds the bundled network's weights (``$readmemh`` images of
    the preset's build folder); the bitstream is packed too.
    """
    from fpga.board import BoardTop, board

    bd = board(board_name)
    out = work / board_name
    out.mkdir(parents=True, exist_ok=True)
    try:
        if built is None:
            built = build_for(preset_name, work.parent / "verilog" / preset_name)
        core = built.make_core("sd")
        top = BoardTop(bd, core)
        design = amaranth_design(top, bd.top_name, out / "rtl", name=bd.top_name)
        extra = tuple(Path(built.sd.root) / f for f in built.sd.verilog
                      if not f.endswith(f"{built.sd.top}.v"))
        # the tools run in the images' folder so that $readmemh finds them
        design = VerilogDesign(top=design.top, files=design.files + extra,
                               data_dir=Path(built.sd.root) / built.sd.init_dir,
                               clocks=(bd.clk_pin,), name=design.name)
    except (TopUnavailable, ValueError, TypeError) as exc:
        return {"design": bd.top_name, "device": bd.device, "status": "failed",
                "error": f"{type(exc).__name__}: {exc}", "board": board_name,
                "preset": preset_name, "kind": "board"}
    r = run_flow(design, bd.device, out / "pnr", harness=False, per_block=False,
                 constraints=bd.constraints_path, target_mhz=bd.clk_hz / 1e6,
                 bitstream=True, log=log)
    r.update(board=board_name, preset=preset_name, kind="board")
    return r


def _find(runs, preset_name, device, kind):
    for r in runs:
        if r.get("preset") == preset_name and r.get("device") == device and r.get("kind") == kind:
            return r
    return None


def checks_for(pairs, builds, blocks=()) -> list[report.Check]:
    """The must-reach targets of the FPGA flow, from one set of runs.

    ``blocks`` (the blocks measured alone) adds, to the rebuild-LUT target's detail, the
    same ratio for the time-multiplexed basis array of `BLOCK_VARIANTS`.
    """
    runs = [r for _, sd, dn in pairs for r in (sd, dn)]
    checks = []
    sd25 = _find(runs, "default", "ecp5-25k", "sd")
    ok = sd25 is not None and sd25["status"] == "ok"
    others = [r for r in runs if r.get("preset") == "default" and r.get("kind") == "sd"
              and r.get("family") == "ecp5" and r["status"] == "ok" and r is not sd25]
    detail = "SD accelerator, nextpnr-ecp5 --25k, aim 150"
    if sd25 is not None and not ok:
        detail += f"; {sd25.get('error')}"
    detail += "".join(f"; on {r['device']}: {r['fmax_mhz']:.1f} MHz" for r in others)
    checks.append(report.Check("default preset on ECP5-25k: Fmax after P&R (MHz)",
                               sd25["fmax_mhz"] if ok else None, 100.0, ">=", detail))
    # Per-block figures come from synthesis, which is the same for every ECP5 part: take
    # them from the 25k run, or from another ECP5 run of the preset that completed.
    src = sd25 if ok else (others[0] if others else None)
    groups = report.block_groups(src.get("blocks") or {}) if src else {}
    where = f"default preset, synth_ecp5 (from the {src['device']} run)" if src else \
        "no completed ECP5 run of the default preset"
    rebuild = [groups.get(g, {}) for g in ("decoder", "basis array")]
    checks.append(report.Check(
        "rebuild path (decoder + basis array) DSP blocks",
        sum(g.get("dsp", 0) for g in rebuild) if groups else None, 0, "<=", where))
    mac_lut = groups.get("MAC lanes", {}).get("lut")
    checks.append(report.Check(
        "LUT(decoder + basis array) / LUT(MAC lanes)",
        sum(g.get("lut", 0) for g in rebuild) / mac_lut if mac_lut else None, 0.30, "<=",
        where + "; MAC multipliers in DSP blocks" +
        (f"; decoder {rebuild[0].get('lut')} + basis array {rebuild[1].get('lut')} vs MAC "
         f"{mac_lut} LUT" if mac_lut else "") + _variant_note(blocks)))
    ratio = None
    for b in builds.values():
        st = getattr(b, "storage", None)
        if st and st.get("dense_bits"):
            ratio = st["sd_bits"] / st["dense_bits"]
            break
    checks.append(report.Check(
        "bundled network: weight memory bits SD / dense", ratio, 1 / 3, "<=",
        "words x width of the SD Ce + basis images vs the dense int8 weight image "
        "(quant images excluded, same in both)"))
    tiny = _find(runs, "tiny", "ice40-up5k", "sd") or _find(runs, "tiny", "ice40-hx8k", "sd")
    checks.append(report.Check(
        "tiny preset fits an iCE40 with the network's weights on chip (1 = placed and routed)",
        (1.0 if tiny["status"] == "ok" else 0.0) if tiny else None, 1.0, ">=",
        f"{tiny['device']}: {tiny['status']}" + (f" ({tiny['error']})" if tiny and tiny.get('error') else "")
        if tiny else "not run"))
    return checks


def _fallback_note(sd: dict, dense: "dict | None") -> str:
    """Which per-block figures classic ABC mapped (ABC9 aborted on them), if any."""
    parts = []
    for what, r in (("SD", sd), ("dense", dense)):
        fb = sorted(((r or {}).get("synth") or {}).get("blocks_fallback") or {})
        if fb:
            parts.append(f"{what}: {', '.join('the design' if b == '(total)' else b for b in fb)}")
    if not parts:
        return ""
    return (" LUTs were mapped by ABC9 except where yosys 0.70's ABC9 aborted; there classic "
            "ABC mapped them (" + "; ".join(parts) + "); its counts can differ from ABC9's by a few "
            "per cent.")


def _variant_note(blocks) -> str:
    """The rebuild-LUT ratio of the blocks alone, full-rate and time-multiplexed."""
    full = _alone_fraction(blocks, "basis_array")
    notes = []
    for name, (_, changes) in BLOCK_VARIANTS.items():
        alt = _alone_fraction(blocks, name)
        if alt is None:
            continue
        how = ", ".join(f"{k}={v}" for k, v in changes.items())
        notes.append(f"{alt[0]:.3f} with {how} (basis array {alt[1][name]} LUT; layers whose "
                     f"tile has fewer output positions than {changes.get('rebuild_cycles', 1)}, "
                     f"such as a fully connected layer at batch 1, become rebuild-bound)")
    if not notes:
        return ""
    head = f"; blocks alone: {full[0]:.3f} at one row per cycle, " if full else "; "
    return head + ", ".join(notes)


#: Static part of docs/fpga.md: commands and where things are.
USAGE = [
    "- `make fpga-report` (= `smartdeal fpga-report`): this page, `fpga/reports/*.json` "
    "(one per run, plus `summary.json`) and `docs/fpga_resources.png`. Options: `--quick`, "
    "`--preset`, `--device`, `--no-blocks` (skip each block alone), `--no-boards` (skip the "
    "board wrappers with pin constraints and bitstreams), `--jobs N` (independent tool runs "
    "in parallel), `--render-only` (rewrite this page from `summary.json`). Scratch files and "
    "logs go to `build/fpga/`; the run time of this page's run is stated at its top.",
    "- `make verilog PRESET=default` (= `smartdeal verilog --config default --out "
    "build/verilog/default`): the build folder users take into their tools: `rtl/sd_accel.v` "
    "(top `sd_accel`), `rtl/sd_dense_accel.v` (top `sd_dense_accel`), `rtl/sd_ram.v`, "
    "`rtl/sd_mul.v` (the MAC lanes' registered multiplier; `rtl/sd_mul_ecp5.v` is its ECP5 "
    "text on `MULT18X18D`, which ECP5 builds read instead), the "
    "bundled network's images in `mem/` (SD) and `mem_dense/` (dense) in every format, "
    "`manifest.json`, `README.md` (ports, clock/reset, registers, loading weights), "
    "`vivado/build.tcl`, `quartus/build.tcl` (and `build_dense.tcl`), FuseSoC cores "
    "`sd_<preset>.core`.",
    "- Open-source flow API: `fpga.flow.run_flow(design, device, workdir)` with a "
    "`VerilogDesign` (or `amaranth_design(component, top, dir)`); devices in "
    "`fpga/devices.py` (`ecp5-25k`, `ecp5-85k`, `ice40-up5k`, `ice40-hx8k`).",
    "- Boards (`fpga/board.py`, constraints in `fpga/boards/`): ULX3S 85F "
    "(`ulx3s.lpf`, 25 MHz, FT231X serial on M1/L4) and iCEBreaker (`icebreaker.pcf`, 12 MHz, "
    "serial on pins 6/9). The host reaches the accelerator's AXI4-Lite registers and "
    "AXI4-Stream ports through the UART bridge (`fpga/bridge.py`, protocol table there; host "
    "client `fpga.protocol.BridgeClient` over pyserial, 115200 baud). Bitstreams "
    "(`build/fpga/boards/<board>/pnr/design.bit|.bin`) load with openFPGALoader / iceprog.",
]


def write_doc(path: Path, pairs, runs, checks, block_results, board_results, builds,
              seconds: float, extra_pairs=(), build_errors=None) -> Path:
    """``docs/fpga.md`` and its plot from one report run."""
    path = Path(path)
    plot = report.plot(path.with_name("fpga_resources.png"), pairs)
    tools = next((r["tools"] for r in runs if r.get("tools")), {})
    intro = [
        "Generated by `make fpga-report` (`smartdeal fpga-report`) on "
        f"{time.strftime('%Y-%m-%d')} in {seconds / 60:.1f} min; all figures come from this one run. "
        "Do not edit by hand.",
        "",
        "Tools: " + "; ".join(f"{k}: {v}" for k, v in tools.items()) + ".",
        "",
        "Method: the accelerator (`smartdeal verilog` output, the bundled network's weights "
        "in its memories) is synthesized with `synth_ecp5` / `synth_ice40` and placed and "
        "routed with nextpnr (seed 1, `--timing-allow-fail`, Fmax from its `--report`). Its "
        "host ports are reached through a measurement harness (a scan flip-flop per port bit, "
        "`fpga/harness.py`), so every path is register to register as inside a system; "
        "the harness's flip-flops are included in the P&R utilisation but not in the "
        "per-block figures, which come from synthesizing the design and each of its blocks "
        "alone (no optimisation across block ports; `(top logic)` is the rest). "
        "LUT counts ECP5 carry cells as two LUT4s. A failed run shows FAILED and no figure.",
    ]
    sections = [("Must-reach targets", report._table(
        ["target", "measured", "bound", "status", "detail"],
        [[c.name, report.fmt(c.value, 3), f"{c.kind} {report.fmt(c.bound, 3)}", c.status,
          c.detail] for c in checks]))]
    sections.append(("SD accelerator vs dense baseline", report.comparison_table(pairs)
                     + ([f"", f"![resources]({plot.name})"] if plot else [])))
    if extra_pairs:
        sections.append(("Presets whose bundled network does not fit: RTL with empty memories",
                         [f"- preset `{p}`: {e}" for p, e in (build_errors or {}).items()] + [
                          "", "These runs measure the same RTL without weights, to show the "
                          "resource gap; they are not results of the with-weights target.", ""]
                         + report.comparison_table(list(extra_pairs))))
    # Synthesis is shared by the parts of a family: one table per (build, family), from
    # the pair that completed when there is one.
    best: dict = {}
    for label, sd, dn in [*pairs, *extra_pairs]:
        if not (sd.get("blocks") or (dn or {}).get("blocks")):
            continue
        score = sum(1 for r in (sd, dn) if r and r.get("status") == "ok")
        key = (label, sd.get("family"))
        if key not in best or score > best[key][0]:
            best[key] = (score, label, sd, dn)
    for _, label, sd, dn in best.values():
        failed = [r for r in (sd, dn) if r and r.get("status") != "ok"]
        note = ([f"Synthesis figures only: the run on {failed[0]['device']} stopped after "
                 f"synthesis ({failed[0].get('error')}).", ""] if failed else [])
        sections.append((f"Per block: {label}, synth_{sd.get('family')}",
                         note + report.blocks_table(sd, dn) + [
                             "", "Blocks are synthesized alone (no optimisation across their "
                             "ports), so their sum exceeds the flattened design."
                             + _fallback_note(sd, dn)]))
    cp_lines = [line for r in [*runs, *(r for _, a, b in extra_pairs for r in (a, b))]
                for line in report.critical_path_lines(r)]
    sections.append(("Critical paths", cp_lines))
    if block_results:
        rows = [[r["design"], r["device"], r["status"], report.fmt(r.get("fmax_mhz")),
                 report.fmt(report.run_row(r)["lut"]), report.fmt(report.run_row(r)["ff"]),
                 report.fmt(report.run_row(r)["dsp"]), report.fmt(r.get("seconds"))]
                for r in block_results]
        sections.append(("Blocks alone (Fmax per block)", report._table(
            ["block", "device", "status", "Fmax MHz", "LUT", "FF", "DSP", "time s"], rows)
            + [""] + [line for r in block_results for line in report.critical_path_lines(r)]))
    if board_results:
        rows = []
        for r in board_results:
            row = report.run_row(r)
            rows.append([r.get("board"), r["device"], r.get("preset"), r["status"],
                         report.fmt(r.get("fmax_mhz")), report.fmt(r.get("target_mhz")),
                         report.fmt(row["pnr_lut"]), report.fmt(row["bram"]),
                         report.fmt(row["dsp"]),
                         "yes" if r.get("pnr", {}).get("bitstream") else "no"])
        sections.append(("Board wrappers (UART bridge, pin constraints)", report._table(
            ["board", "device", "preset", "status", "Fmax MHz", "board clock MHz", "LUT",
             "BRAM", "DSP", "bitstream"], rows)))
    sections.append(("How to reproduce and use", USAGE))
    text = report.markdown("FPGA results", intro, sections)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path

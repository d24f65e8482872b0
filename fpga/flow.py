"""Open-source FPGA flow: yosys synthesis and nextpnr place-and-route with reports.

One call, `run_flow`, takes a Verilog design (or an Amaranth component, via
`amaranth_design`) to a measured result for one `fpga.devices.Device`:

1. ``synth_ecp5`` / ``synth_ice40`` of the design (wrapped in the measurement harness of
   `fpga.harness` unless the design is a board top with its own pins), flattened as it
   would be for a bitstream; a hand-written module with a text for the family is read in
   that text (`family_files`: on ECP5 the MAC lanes' registered multiplier ``sd_mul`` is
   a ``MULT18X18D`` with its own input and output registers);
2. a synthesis of the design alone and of each of its blocks (decoder, basis array, MAC
   lanes, memories, ...) as its own top, whose ``stat -json`` gives LUT / FF / BRAM / DSP
   per block (`block_stats`);
3. a check that the design fits the device (refused with a message naming the resource);
4. ``nextpnr-ecp5`` / ``nextpnr-ice40`` with ``--report``: Fmax per clock, used and
   available resources, and the critical path (cells, blocks and HDL source lines on it).

The result is a plain dict (JSON-ready); a run that fails is returned with
``status = "failed"`` and the error, never with figures.  A missing tool raises
`fpga.tools.ToolchainError` before any work.

Resource categories (what the tables call LUT, FF, BRAM, DSP):

========  ==========================================  ==============================
category  ECP5 cells                                  iCE40 cells
========  ==========================================  ==============================
lut       LUT4 + 2 x CCU2C (a carry cell is 2 LUT4s)  SB_LUT4
ff        TRELLIS_FF                                  SB_DFF*
bram      DP16KD / PDPW16KD (18 Kibit)                SB_RAM40_4K* (4 Kibit)
dsp       MULT18X18D                                  SB_MAC16
lutram    TRELLIS_DPR16X4 (distributed RAM)           --
spram     --                                          SB_SPRAM256KA (256 Kibit)
========  ==========================================  ==============================
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from fpga.devices import Device, device as get_device
from fpga.harness import HARNESS_TOP, Port, harness_verilog
from fpga.tools import ToolError, ToolchainError, check_toolchain, run_tool

__all__ = [
    "VerilogDesign", "FitError", "amaranth_design", "module_ports", "synthesize",
    "place_and_route", "parse_stat", "module_totals", "categorise", "parse_pnr_report",
    "check_fit", "run_flow", "block_of", "block_stats", "block_targets",
    "verilog_modules", "family_files", "CATEGORIES",
]

CATEGORIES = ("lut", "ff", "bram", "dsp", "lutram", "spram")

#: cell type -> (category, weight) per family; prefixes end in "*"
_CELL_MAP = {
    "ecp5": {
        "LUT4": ("lut", 1), "CCU2C": ("lut", 2), "TRELLIS_FF": ("ff", 1),
        "DP16KD": ("bram", 1), "PDPW16KD": ("bram", 1),
        "MULT18X18D": ("dsp", 1), "TRELLIS_DPR16X4": ("lutram", 1),
    },
    "ice40": {
        "SB_LUT4": ("lut", 1), "SB_DFF*": ("ff", 1), "SB_RAM40_4K*": ("bram", 1),
        "SB_MAC16": ("dsp", 1), "SB_SPRAM256KA": ("spram", 1),
    },
}

#: nextpnr bel type -> category (nextpnr counts an ECP5 carry cell as 2 TRELLIS_COMB and
#: an iCE40 logic cell as one ICESTORM_LC holding a LUT4 and a flip-flop)
_PNR_MAP = {
    "ecp5": {"TRELLIS_COMB": "lut", "TRELLIS_FF": "ff", "DP16KD": "bram",
             "MULT18X18D": "dsp", "TRELLIS_RAMW": "lutram",
             "TRELLIS_IO": "io"},
    "ice40": {"ICESTORM_LC": "lut", "ICESTORM_RAM": "bram", "ICESTORM_DSP": "dsp",
              "ICESTORM_SPRAM": "spram", "SB_IO": "io"},
}


class FitError(ToolError):
    """The design needs more of a resource than the device has."""


@dataclass(frozen=True)
class VerilogDesign:
    """A design as Verilog files plus the name of its top module.

    Parameters
    ----------
    top : str
        Top module name.
    files : tuple of Path
        Verilog sources.
    data_dir : Path or None
        Directory the tools run in, so that ``$readmemh("x.hex")`` finds its files.
    clocks : tuple of str
        Clock input ports (driven by the harness clock, not by its scan chain).
    name : str or None
        Label for reports (default: ``top``).
    """

    top: str
    files: tuple[Path, ...]
    data_dir: "Path | None" = None
    clocks: tuple[str, ...] = ("clk",)
    name: "str | None" = None

    def __post_init__(self):
        if not self.files:
            raise ValueError(f"design {self.top!r} has no Verilog files")
        missing = [str(f) for f in self.files if not Path(f).is_file()]
        if missing:
            raise ValueError(f"design {self.top!r}: Verilog file(s) not found: {missing}")

    @property
    def label(self) -> str:
        return self.name or self.top


def amaranth_design(component, top: str, out_dir: "str | Path", *,
                    name: "str | None" = None) -> VerilogDesign:
    """Write an Amaranth component as ``<out_dir>/<top>.v`` and describe it.

    The component's ports become the module ports (``clk``/``rst`` of the sync domain
    included); submodules become modules named ``<top>.<path>``, which is what the
    per-block report groups by.  Files of the component's ``verilog_sources`` (name ->
    text) are written next to it and belong to the design.
    """
    from amaranth.back import verilog

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{top}.v"
    path.write_text(verilog.convert(component, name=top))
    files = [path.resolve()]
    # Hand-written Verilog the component instantiates (e.g. the $readmemh RAM `sd_ram`).
    for fname, text in (getattr(component, "verilog_sources", None) or {}).items():
        (out_dir / fname).write_text(text)
        files.append((out_dir / fname).resolve())
    return VerilogDesign(top=top, files=tuple(files), data_dir=out_dir.resolve(), name=name)


# ------------------------------------------------------------------------ synthesis
def _rel(path: "str | Path", cwd: Path) -> str:
    """``path`` relative to the tool's working directory.

    YoWASP tools see the host file system except ``/tmp``, which they replace by a
    private directory; relative paths reach every directory, so the flow passes only those.
    """
    return os.path.relpath(Path(path).resolve(), Path(cwd).resolve())


def _tool_cwd(design: VerilogDesign, workdir: Path) -> Path:
    return Path(design.data_dir or workdir).resolve()


def _read_cmds(design: VerilogDesign, cwd: Path, family: "str | None" = None,
               workdir: "Path | None" = None) -> list[str]:
    files = design.files if family is None else family_files(design, family, workdir or cwd)
    return [f"read_verilog -sv {_rel(f, cwd)}" for f in files]


def family_files(design: VerilogDesign, family: str, workdir: Path) -> list[Path]:
    """The design's files, each generic hand-written module replaced by its ``family`` text.

    `hw.dsp.family_variant` names the replacements (on ECP5 the registered multiplier
    ``sd_mul.v`` becomes ``sd_mul_ecp5.v``, a ``MULT18X18D`` with its own registers); the
    variant is written into ``workdir``.  Files that are not the generic text stay.
    """
    from hw.dsp import FAMILY_VARIANTS, family_variant

    names = FAMILY_VARIANTS.get(family, {})
    out = []
    for f in design.files:
        f = Path(f)
        variant = (family_variant(f.name, f.read_text(errors="replace"), family)
                   if f.name in names else None)
        if variant is None:
            out.append(f)
            continue
        workdir.mkdir(parents=True, exist_ok=True)
        path = Path(workdir) / variant[0]
        if not path.is_file() or path.read_text() != variant[1]:
            path.write_text(variant[1])
        out.append(path)
    return out


def module_ports(design: VerilogDesign, workdir: Path) -> list[Port]:
    """Ports of the design's top module, read by yosys (order as declared)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cwd = _tool_cwd(design, workdir)
    out = workdir / "ports.json"
    script = workdir / "ports.ys"
    script.write_text("\n".join([*_read_cmds(design, cwd), f"hierarchy -top {_yname(design.top)}",
                                 "proc", f"select -module {_yname(design.top)} x:*",
                                 f"write_json -selected {_rel(out, cwd)}", ""]))
    run_tool("yosys", ["-q", "-s", _rel(script, cwd)], workdir / "ports.log", cwd)
    module = json.loads(out.read_text())["modules"].get(design.top)
    if module is None:
        raise ToolError(f"yosys did not find top module {design.top!r} in "
                        f"{[str(f) for f in design.files]}")
    return [Port(name, p["direction"], len(p["bits"])) for name, p in module["ports"].items()]


def _yname(name: str) -> str:
    """A module name as a yosys command argument (escaped names keep their backslash)."""
    return name if re.match(r"^[A-Za-z_][A-Za-z0-9_$]*$", name) else f"\\{name}"


def synthesize(design: VerilogDesign, dev: Device, workdir: Path, *, top: str,
               extra_files: Iterable[Path] = (), flatten: bool = True, dsp: bool = True,
               timeout_s: "float | None" = None) -> dict:
    """Synthesize for ``dev``; return cells per module, the netlist path and the time.

    Parameters
    ----------
    top : str
        Module to synthesize (the harness or the design itself).
    extra_files : iterable of Path
        More Verilog (the harness).
    flatten : bool
        False keeps the module hierarchy for per-block statistics.
    dsp : bool
        False keeps multipliers in LUTs (``-nodsp`` on ECP5; no ``-dsp`` on iCE40).

    Returns
    -------
    dict
        ``modules`` (module -> {cell type: count}, local counts), ``netlist`` (JSON
        netlist path, flattened runs only), ``seconds``, ``log``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    tag = "flat" if flatten else "hier"
    stat = workdir / f"stat_{tag}.json"
    netlist = workdir / "netlist.json"
    opts = _synth_options(dev, top, dsp)
    if not flatten:
        opts.append("-noflatten")
    cwd = _tool_cwd(design, workdir)
    log = workdir / f"synth_{tag}.log"
    for fallback in ([], ["-dff"]):
        cmds = [*_read_cmds(design, cwd, dev.family, workdir),
                *(f"read_verilog -sv {_rel(f, cwd)}" for f in extra_files),
                f"{dev.synth_command} {' '.join(opts + fallback)}",
                f"tee -q -o {_rel(stat, cwd)} stat -json",
                f"tee -q -o {_rel(workdir / f'stat_{tag}.txt', cwd)} stat"]
        if flatten:
            cmds.append(f"write_json {_rel(netlist, cwd)}")
        script = workdir / f"synth_{tag}.ys"
        script.write_text("\n".join(cmds) + "\n")
        try:
            seconds = run_tool("yosys", ["-q", "-l", _rel(workdir / f"synth_{tag}.full.log", cwd),
                                         "-s", _rel(script, cwd)], log, cwd, timeout_s)
            break
        except ToolError as exc:
            # yosys 0.70's ABC9 aborts on some designs (see `_abc9_abort`): retry once with
            # -dff (ABC9 then maps the flip-flops too, which avoids the abort) and keep
            # ABC9's timing-driven mapping for place and route
            if fallback or not _abc9_abort(exc):
                raise
    variants = [f"{a.name} -> {b.name}" for a, b in
                zip(design.files, family_files(design, dev.family, workdir)) if a != b]
    return {"modules": parse_stat(stat), "netlist": str(netlist) if flatten else None,
            "seconds": round(seconds, 2), "log": str(log),
            "fallback": " ".join(fallback) or None, "variants": variants}


def _synth_options(dev: Device, top: str, dsp: bool) -> list[str]:
    opts = [f"-top {_yname(top)}"]
    if dev.family == "ecp5" and not dsp:
        opts.append("-nodsp")
    if dev.family == "ice40":
        if dsp and dev.capacity.get("dsp", 0) > 0:
            opts.append("-dsp")
        if dev.capacity.get("spram", 0) > 0:
            opts.append("-spram")
    return opts


_MODULE = re.compile(r"^\s*module\s+(\\\S+|[A-Za-z_][A-Za-z0-9_$]*)", re.M)


def verilog_modules(files: Iterable[Path]) -> list[str]:
    """Module names defined in Verilog files (escaped names without their backslash)."""
    names = []
    for f in files:
        names += [n.lstrip("\\") for n in _MODULE.findall(Path(f).read_text(errors="replace"))]
    return names


def block_targets(modules: list[str], top: str, depth: int = 2) -> list[str]:
    """Submodules of ``top`` measured one by one: the leaves of its tree cut at ``depth``.

    Amaranth names the module of submodule ``a.b`` of top ``T`` ``T.a.b``.  A block with
    children inside the cut is represented by those children (its own glue goes to the
    top's remainder), so no logic is counted twice.
    """
    prefix = top + "."
    inside = [m for m in modules if m.startswith(prefix) and m[len(prefix):].count(".") < depth]
    return [m for m in inside if not any(o.startswith(m + ".") for o in inside)]


def _abc9_abort(exc: ToolError) -> bool:
    """True for yosys 0.70's assertion failures in ABC9's re-integration step."""
    text = str(exc)
    if "Assert" in text:
        return True
    log = getattr(exc, "log", None)
    return bool(log and Path(log).is_file() and
                "ABC_OPS_REINTEGRATE" in Path(log).read_text(errors="replace")[-4000:])


#: Label of the per-block fallback that maps LUTs with classic ABC instead of ABC9.
CLASSIC_ABC = "abc (classic)"


def _synth_commands(dev: Device, target: str, dsp: bool, classic: bool) -> list[str]:
    """The synthesis commands of one per-block attempt (ABC9, or classic ABC for LUTs).

    The classic attempt runs the family's script up to its LUT mapping, maps with
    ``abc -lut 4`` and runs the rest of the script: same cells, but no ABC9, whose
    re-integration step aborts on some Amaranth modules and whose ``-dff`` variant ran
    for hours on a whole design.
    """
    opts = " ".join(_synth_options(dev, target, dsp))
    if not classic:
        return [f"{dev.synth_command} {opts}"]
    if dev.family == "ice40":
        # synth_ice40's own non-ABC9 LUT mapping
        return [f"{dev.synth_command} {opts} -noabc"]
    return [f"{dev.synth_command} {opts} -run :map_luts",
            "techmap -map +/lattice/latches_map.v", "abc -lut 4", "clean",
            f"{dev.synth_command} {opts} -run map_cells:"]


def _synth_stat(design: VerilogDesign, dev: Device, workdir: Path, target: str, tag: str,
                dsp: bool, timeout_s) -> tuple[dict, float, "str | None"]:
    """Synthesize ``target`` of ``design`` alone; return its cells, time and fallback used.

    yosys 0.70's ABC9 step aborts on some modules (``ABC_OPS_REINTEGRATE``: assertions
    ``count_id(wire->name) == 0`` or ``GetSize(conn.first) == GetSize(conn.second)``);
    such a module is synthesized again with classic ABC mapping its LUTs (`CLASSIC_ABC`).
    """
    cwd = _tool_cwd(design, workdir)
    out = workdir / f"stat_{tag}.json"
    for classic in (False, True):
        cmds = [*_read_cmds(design, cwd, dev.family, workdir),
                *_synth_commands(dev, target, dsp, classic),
                f"tee -q -o {_rel(out, cwd)} stat -json"]
        script = workdir / f"synth_{tag}.ys"
        script.write_text("\n".join(cmds) + "\n")
        log = workdir / f"synth_{tag}.log"
        try:
            seconds = run_tool("yosys", ["-q", "-l", _rel(workdir / f"synth_{tag}.full.log", cwd),
                                         "-s", _rel(script, cwd)], log, cwd, timeout_s)
        except ToolError as exc:
            if classic or not _abc9_abort(exc):
                raise
            continue
        return parse_stat(out), seconds, CLASSIC_ABC if classic else None
    raise AssertionError("unreachable")


#: Wall-clock cap of one per-block synthesis attempt.  The breakdown is informative only,
#: and yosys 0.70's ABC9 with ``-dff`` ran for hours on a whole design (the dense baseline
#: of the default preset, 2026-11-28; no longer used); place and route must not wait.
BLOCK_SYNTH_TIMEOUT_S = 420.0


def block_stats(design: VerilogDesign, dev: Device, workdir: Path, *, depth: int = 2,
                dsp: bool = True, timeout_s: "float | None" = None) -> dict:
    """Per-block resources: the design and each block of `block_targets` synthesized alone.

    Each block is measured without optimisation across its ports, like a
    hierarchy-preserving synthesis; separate runs sidestep ``-noflatten``, whose ABC9 step
    aborts on Amaranth hierarchies in yosys 0.70.  A block whose synthesis fails is listed
    with ``None`` figures under ``"failed"``.

    Returns
    -------
    dict
        ``blocks``: ``{"(total)": design, "<path>": block, ..., "(top logic)": total
        minus the blocks (clipped at 0)}``; ``seconds``; ``fallbacks`` (blocks whose LUTs
        classic ABC mapped, `CLASSIC_ABC`); ``failed`` (block -> error).  Every attempt is capped at
        `BLOCK_SYNTH_TIMEOUT_S`; when the design's own total fails, ``blocks`` is empty
        and ``failed["(total)"]`` says why (the caller reports no breakdown).
    """
    workdir = Path(workdir) / "blocks"
    workdir.mkdir(parents=True, exist_ok=True)
    prefix = design.top + "."
    targets = [design.top, *block_targets(verilog_modules(design.files), design.top, depth)]
    blocks: dict = {}
    fallbacks, failed, seconds = {}, {}, 0.0
    cap = BLOCK_SYNTH_TIMEOUT_S if timeout_s is None else min(timeout_s, BLOCK_SYNTH_TIMEOUT_S)
    for i, target in enumerate(targets):
        name = "(total)" if target == design.top else target[len(prefix):]
        try:
            modules, t, fallback = _synth_stat(design, dev, workdir, target, f"b{i}", dsp, cap)
        except ToolError as exc:
            failed[name] = str(exc)
            if target == design.top:
                # without the design's own total there is no breakdown to report; the
                # flattened synthesis and place and route go on without it
                return {"blocks": {}, "seconds": round(seconds, 2), "fallbacks": fallbacks,
                        "failed": failed}
            continue
        seconds += t
        if fallback:
            fallbacks[name] = fallback
        blocks[name] = categorise(module_totals(modules, target), dev.family)
    total = blocks["(total)"]
    blocks["(top logic)"] = {k: max(0, v - sum(b[k] for p, b in blocks.items()
                                               if not p.startswith("(")))
                             for k, v in total.items()}
    return {"blocks": blocks, "seconds": round(seconds, 2), "fallbacks": fallbacks,
            "failed": failed}


def parse_stat(path: "str | Path") -> dict[str, dict[str, int]]:
    """Local cell counts per module from yosys ``stat -json`` (names without ``\\``)."""
    data = json.loads(Path(path).read_text())
    if "modules" not in data:
        raise ValueError(f"{path} is not a yosys `stat -json` report (no 'modules')")
    return {name.lstrip("\\"): dict(m.get("num_cells_by_type", {}))
            for name, m in data["modules"].items()}


def module_totals(modules: dict[str, dict[str, int]], name: str,
                  _seen: "tuple[str, ...]" = ()) -> dict[str, int]:
    """Cell counts of module ``name`` including all its submodules (recursively)."""
    if name not in modules:
        raise KeyError(f"module {name!r} not in the statistics; modules: {sorted(modules)}")
    if name in _seen:
        raise ValueError(f"recursive module hierarchy at {name!r}")
    total: dict[str, int] = {}
    for cell, count in modules[name].items():
        if cell in modules:
            for sub_cell, sub_count in module_totals(modules, cell, (*_seen, name)).items():
                total[sub_cell] = total.get(sub_cell, 0) + count * sub_count
        else:
            total[cell] = total.get(cell, 0) + count
    return total


def categorise(cells: dict[str, int], family: str) -> dict[str, int]:
    """Map cell counts to the `CATEGORIES` (see the module docstring)."""
    mapping = _CELL_MAP[family]
    out = {c: 0 for c in CATEGORIES}
    for cell, count in cells.items():
        for pattern, (cat, weight) in mapping.items():
            if cell == pattern or (pattern.endswith("*") and cell.startswith(pattern[:-1])):
                out[cat] += weight * count
                break
    return out


def check_fit(used: dict[str, int], dev: Device, what: str) -> None:
    """Raise `FitError` naming every resource ``used`` needs beyond ``dev``'s capacity."""
    over = []
    for cat in ("lut", "ff", "bram", "dsp", "spram"):
        need, have = used.get(cat, 0), dev.capacity.get(cat, 0)
        if need > have:
            over.append(f"{need} {cat.upper()} (device has {have})")
    if over:
        bigger = [d for d in ("ecp5-85k",) if dev.family == "ecp5" and dev.name != d]
        hint = (f"choose a larger device ({', '.join(bigger)})" if bigger else
                "choose a larger device") + " or a smaller configuration (fewer lanes, smaller memory depths)"
        raise FitError(f"{what} does not fit {dev.name} ({dev.part}): needs "
                       f"{', '.join(over)}; {hint}")


# ------------------------------------------------------------------ place and route
def place_and_route(netlist: "str | Path", dev: Device, workdir: Path, *,
                    target_mhz: float, constraints: "Path | None" = None, seed: int = 1,
                    bitstream: bool = False, timeout_s: "float | None" = None,
                    blocks: Iterable[str] = (), prefix: str = "") -> dict:
    """Run nextpnr on a flattened netlist; return the parsed report and the time.

    ``constraints`` is an ``.lpf`` (ECP5) or ``.pcf`` (iCE40); without one the pins are
    placed freely.  ``bitstream`` also writes the textual config (``.config`` / ``.asc``)
    and packs it (``ecppack`` / ``icepack``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    report = workdir / "pnr_report.json"
    workdir = workdir.resolve()
    args = [*dev.pnr_args, "--json", _rel(netlist, workdir), "--freq", f"{target_mhz:g}",
            "--report", _rel(report, workdir), "--detailed-timing-report", "--seed", str(seed),
            "--timing-allow-fail"]
    kind = "lpf" if dev.family == "ecp5" else "pcf"
    if constraints is not None:
        args += [f"--{kind}", _rel(constraints, workdir)]
    else:
        args.append(f"--{kind}-allow-unconstrained")
    out_cfg = workdir / ("design.config" if dev.family == "ecp5" else "design.asc")
    if bitstream:
        args += ["--textcfg" if dev.family == "ecp5" else "--asc", out_cfg.name]
    log = workdir / "pnr.log"
    try:
        seconds = run_tool(dev.nextpnr, ["-l", "pnr.full.log", *args], log,
                           workdir, timeout_s)
    except ToolError as exc:
        text = log.read_text(errors="replace")
        if re.search(r"Unable to find a placement location|Failed to place|"
                     r"design uses \d+ .* but the device only has|not enough", text, re.I):
            raise FitError(f"place-and-route on {dev.name}: the design does not fit: "
                           f"{exc}", exc.log) from None
        raise
    result = parse_pnr_report(report, dev.family, blocks, prefix)
    result["seconds"] = round(seconds, 2)
    result["log"] = str(log)
    if bitstream:
        packer = "ecppack" if dev.family == "ecp5" else "icepack"
        bit = workdir / "design.bit" if dev.family == "ecp5" else workdir / "design.bin"
        run_tool(packer, [out_cfg.name, bit.name], workdir / "pack.log", workdir, timeout_s)
        result["bitstream"] = str(bit)
    return result


def parse_pnr_report(path: "str | Path", family: str, blocks: Iterable[str] = (),
                     prefix: str = "") -> dict:
    """Fmax, utilisation and the critical path from a nextpnr ``--report`` JSON.

    ``blocks`` and ``prefix`` attribute the critical path's cells to blocks (`block_of`).
    """
    data = json.loads(Path(path).read_text())
    for key in ("fmax", "utilization"):
        if key not in data:
            raise ValueError(f"{path} is not a nextpnr --report JSON (no {key!r})")
    fmax = {clk: {"achieved_mhz": round(v["achieved"], 2), "target_mhz": v["constraint"]}
            for clk, v in data["fmax"].items()}
    util: dict[str, dict[str, int]] = {}
    for bel, v in data["utilization"].items():
        cat = _PNR_MAP[family].get(bel)
        if cat is None:
            continue
        slot = util.setdefault(cat, {"used": 0, "available": 0})
        slot["used"] += v["used"]
        slot["available"] += v["available"]
    worst = min(fmax.values(), key=lambda v: v["achieved_mhz"]) if fmax else None
    return {
        "fmax": fmax,
        "fmax_mhz": worst["achieved_mhz"] if worst else None,
        "utilisation": util,
        "critical_path": critical_path(data.get("critical_paths", []), blocks, prefix),
    }


def block_of(cell: str, blocks: Iterable[str] = (), prefix: str = "") -> str:
    """Block a cell of the flattened netlist belongs to.

    Flattening prefixes a cell name with its instance path (``dut.core.x_FF``), but
    Amaranth signal names contain dots too (``o__payload.result``), so the name is
    matched against the known block paths (longest first) rather than split.
    ``prefix`` is the design instance inside the harness (``"dut."``); cells outside it
    belong to the harness.
    """
    if prefix:
        if not cell.startswith(prefix):
            return "(harness)"
        cell = cell[len(prefix):]
    for block in sorted(blocks, key=len, reverse=True):
        if cell.startswith(block + "."):
            return block
    return "(top logic)"


def critical_path(paths: list, blocks: Iterable[str] = (), prefix: str = "") -> "dict | None":
    """Summary of the longest register-to-register path of a nextpnr report.

    Returns the start and end cells, their blocks, total / logic / routing delay (ns),
    the number of logic stages, the blocks crossed in order and the HDL source lines
    (Amaranth ``file.py:line``) of the nets on the path.
    """
    best = None
    for p in paths:
        steps = p.get("path", [])
        if not steps:
            continue
        total = sum(s.get("delay", 0.0) for s in steps)
        if best is None or total > best[0]:
            best = (total, p)
    if best is None:
        return None
    total, p = best
    steps = p["path"]
    logic = sum(s["delay"] for s in steps if s.get("type") in ("logic", "clk-to-q", "setup"))
    routing = sum(s["delay"] for s in steps if s.get("type") == "routing")
    known = [b for b in blocks if not b.startswith("(")]
    crossed: list[str] = []
    sources: list[str] = []
    for s in steps:
        b = block_of(s["from"]["cell"], known, prefix)
        if not crossed or crossed[-1] != b:
            crossed.append(b)
        for src in s.get("sources", []):
            if not src.startswith("/share/") and src not in sources:
                sources.append(src)
    return {
        "from": steps[0]["from"]["cell"], "to": steps[-1]["to"]["cell"],
        "clock": f"{p.get('from', '')} -> {p.get('to', '')}",
        "delay_ns": round(total, 3), "logic_ns": round(logic, 3),
        "routing_ns": round(routing, 3),
        "logic_stages": sum(1 for s in steps if s.get("type") == "logic"),
        "blocks": crossed, "sources": sources[:12],
    }


# ----------------------------------------------------------------------- one run
def _design_key(design: VerilogDesign) -> tuple:
    """Identity of a design's sources (path and content hash of every file)."""
    import hashlib
    return (design.top, *((str(f), hashlib.sha256(Path(f).read_bytes()).hexdigest())
                           for f in design.files))


def run_flow(design: VerilogDesign, dev: "str | Device", workdir: "str | Path", *,
             target_mhz: "float | None" = None, harness: bool = True,
             constraints: "Path | None" = None, per_block: bool = True, dsp: bool = True,
             seed: int = 1, bitstream: bool = False, timeout_s: "float | None" = None,
             log: "Callable[[str], None] | None" = None,
             synth_cache: "dict | None" = None) -> dict:
    """Synthesize, check the fit, place and route ``design`` on ``dev``.

    Parameters
    ----------
    design : VerilogDesign
        What to build.
    dev : str or Device
        Target (see `fpga.devices.DEVICES`).
    workdir : path
        Where scripts, netlists, logs and reports go.
    target_mhz : float, optional
        nextpnr timing target (default: the device's ``default_mhz``).
    harness : bool
        Wrap the design in the measurement harness (off for board tops with pins).
    constraints : Path, optional
        Pin constraints (``.lpf``/``.pcf``) for board tops.
    per_block : bool
        Also synthesize the design and its blocks alone for per-block figures.
    dsp : bool
        Allow DSP blocks (False maps multipliers to LUTs).
    synth_cache : dict, optional
        Shared between calls: synthesis does not depend on the device size, so a design
        already synthesized for the same family (same files, top, options) is reused
        (e.g. ECP5 25k and 85k).

    Returns
    -------
    dict
        ``status`` ("ok" or "failed"), ``error``, ``fmax_mhz``, ``synth``, ``blocks``,
        ``pnr`` and timings.  Figures are present only when ``status == "ok"``.

    Raises
    ------
    ToolchainError
        When yosys or nextpnr for the family is missing (nothing to report then).
    ValueError
        On an unknown device.
    """
    dev = get_device(dev)
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    say = log or (lambda msg: None)
    result: dict = {
        "design": design.label, "top": design.top, "device": dev.name, "part": dev.part,
        "family": dev.family, "target_mhz": target_mhz or dev.default_mhz,
        "harness": harness, "dsp_allowed": dsp, "status": "failed", "error": None,
        "workdir": str(workdir),
    }
    result["tools"] = check_toolchain(dev.family)
    start = time.monotonic()
    try:
        top, extra = design.top, []
        if harness:
            ports = module_ports(design, workdir)
            hv = workdir / f"{HARNESS_TOP}.v"
            hv.write_text(harness_verilog(design.top, ports, design.clocks))
            top, extra = HARNESS_TOP, [hv]
            result["harness_bits"] = {
                "in": sum(p.width for p in ports
                          if p.direction == "input" and p.name not in design.clocks),
                "out": sum(p.width for p in ports if p.direction == "output")}
        key = (_design_key(design), dev.family, dsp, harness, per_block,
               dev.capacity.get("dsp", 0) > 0, dev.capacity.get("spram", 0) > 0)
        cached = (synth_cache or {}).get(key)
        if cached:
            say(f"{design.label} @ {dev.name}: synthesis reused from {cached['device']}")
            flat, per = cached["flat"], cached["per"]
            result["synth_reused_from"] = cached["device"]
        else:
            say(f"{design.label} @ {dev.name}: synthesis")
            flat = synthesize(design, dev, workdir, top=top, extra_files=extra, dsp=dsp,
                              timeout_s=timeout_s)
            per = None
            if per_block:
                say(f"{design.label} @ {dev.name}: per-block synthesis")
                per = block_stats(design, dev, workdir, dsp=dsp, timeout_s=timeout_s)
            if synth_cache is not None:
                synth_cache[key] = {"device": dev.name, "flat": flat, "per": per}
        used = categorise(module_totals(flat["modules"], top), dev.family)
        result["synth"] = {"utilisation": used, "seconds": flat["seconds"],
                           "fallback": flat["fallback"], "variants": flat.get("variants", [])}
        if per is not None:
            result["blocks"] = per["blocks"]
            result["synth"]["blocks_seconds"] = per["seconds"]
            result["synth"]["blocks_fallback"] = per["fallbacks"]
            result["synth"]["blocks_failed"] = per["failed"]
        check_fit(used, dev, f"{design.label}" + (" (with measurement harness)" if harness else ""))
        say(f"{design.label} @ {dev.name}: place and route")
        pnr = place_and_route(flat["netlist"], dev, workdir, target_mhz=result["target_mhz"],
                              constraints=constraints, seed=seed, bitstream=bitstream,
                              timeout_s=timeout_s, blocks=result.get("blocks", {}),
                              prefix="dut." if harness else "")
        result["pnr"] = pnr
        result["fmax_mhz"] = pnr["fmax_mhz"]
        result["status"] = "ok"
    except ToolchainError:
        raise
    except (ToolError, ValueError, OSError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        say(f"{design.label} @ {dev.name}: FAILED: {exc}")
    result["seconds"] = round(time.monotonic() - start, 2)
    (workdir / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    return result

"""FuseSoC core description (CAPI2 ``.core``) of a generated build folder.

FuseSoC/Edalize users add the build folder to a library (``fusesoc library add sd
<folder>``) and depend on ``smartdeal:ip:<name>``.  The core lists the accelerator's
Verilog, the ``$readmemh`` images (copied next to the tool's work directory, where the
Verilog looks for them), and targets for a Verilator lint, an ECP5 build (Trellis flow:
yosys + nextpnr-ecp5) and a Vivado out-of-context synthesis.

The text is YAML written without a YAML library (every string double-quoted, JSON
style), so generating it needs nothing beyond Python.
"""

from __future__ import annotations

import json
from pathlib import Path

from fpga.buildinfo import BuildFiles
from fpga.vendor import VIVADO_PART

__all__ = ["core_text", "write_core", "core_name", "VLNV_VENDOR", "VLNV_LIBRARY"]

VLNV_VENDOR = "smartdeal"
VLNV_LIBRARY = "ip"


def core_name(b: BuildFiles) -> str:
    """VLNV of the core: ``smartdeal:ip:<name>:<version>``."""
    return f"{VLNV_VENDOR}:{VLNV_LIBRARY}:{b.name}:{b.version}"


def _yaml(value, indent: int = 0) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:")
                lines += _yaml(v, indent + 1)
            else:
                lines.append(f"{pad}{k}: {_scalar(v)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item:
                # one-key mappings of file lists: "- path: {file_type: ...}"
                first, *rest = _yaml(item, indent + 1)
                lines.append(f"{pad}- {first.strip()}")
                lines += rest
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    else:
        lines.append(f"{pad}{_scalar(value)}")
    return lines


def _scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_scalar(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    return json.dumps(str(v))


def core_text(b: BuildFiles, *, ecp5_args: tuple[str, ...] = ("--25k", "--package", "CABGA381"),
              vivado_part: str = VIVADO_PART) -> str:
    """The ``.core`` text of build ``b``."""
    filesets = {
        "rtl": {"files": list(b.verilog), "file_type": "verilogSource"},
    }
    used = ["rtl"]
    ecp5_rtl = b.verilog_for("ecp5")
    if ecp5_rtl != tuple(b.verilog):
        # the ECP5 build reads the ECP5 texts of hand-written modules (registered DSPs)
        filesets["rtl_ecp5"] = {"files": list(ecp5_rtl), "file_type": "verilogSource"}
    if b.init_files:
        filesets["mem_init"] = {
            "files": [{f: {"copyto": Path(f).name}} for f in b.init_files],
            "file_type": "user",
        }
        used.append("mem_init")
    filesets["constraints_vivado"] = {"files": [f"vivado/{b.top}.xdc"], "file_type": "xdc"}
    targets = {
        "default": {"filesets": list(used), "toplevel": b.top},
        "lint": {
            "default_tool": "verilator",
            "filesets": list(used),
            "tools": {"verilator": {"mode": "lint-only",
                                    "verilator_options": ["-Wno-fatal"]}},
            "toplevel": b.top,
        },
        "synth_ecp5": {
            "default_tool": "trellis",
            "filesets": [("rtl_ecp5" if f == "rtl" and "rtl_ecp5" in filesets else f)
                         for f in used],
            "tools": {"trellis": {"nextpnr_options": list(ecp5_args) + ["--lpf-allow-unconstrained"]}},
            "toplevel": b.top,
        },
        "synth_vivado": {
            "default_tool": "vivado",
            "filesets": [*used, "constraints_vivado"],
            "tools": {"vivado": {"part": vivado_part, "synth": "vivado", "pnr": "none"}},
            "toplevel": b.top,
        },
    }
    doc = {
        "name": core_name(b),
        "description": b.description or f"SmartDeal accelerator {b.name}",
        "filesets": filesets,
        "targets": targets,
    }
    return "CAPI=2:\n" + "\n".join(_yaml(doc)) + "\n"


def write_core(b: BuildFiles, **options) -> Path:
    """Write ``<root>/<name>.core``; refuses when a listed file is missing."""
    listed = [*b.all_files(), f"vivado/{b.top}.xdc"]
    missing = [f for f in listed if not (Path(b.root) / f).is_file()]
    if missing:
        raise ValueError(f"build folder {b.root} lacks file(s) the core lists: {missing} "
                         f"(write the vendor files first)")
    path = Path(b.root) / f"{b.name}.core"
    path.write_text(core_text(b, **options))
    return path

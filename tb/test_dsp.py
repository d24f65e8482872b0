"""The registered multiplier ``sd_mul`` (`hw.dsp`): generic text, ECP5 text, yosys netlist.

1. **Equivalence under Verilator.**  Both texts of ``sd_mul`` (renamed ``sd_mul_generic``
   and ``sd_mul_ecp5``) run side by side for the operand shapes the MAC lanes use (SD
   17s x 8s, dense 8s x 8s, requantization 17u x 16u and 16s x 16u), the block's
   limits (18s x 18s, 17u x 17u) and shapes that take the ECP5 text's fallback (18u x 8s,
   24s x 10s), with random operands, the signed / unsigned extremes and a random clock
   enable.  Every cycle both outputs must equal the product that Python computes from the
   operands loaded at the two previous enabled edges.

   yosys ships no simulation model of ``MULT18X18D`` (``cells_sim_ecp5.v`` has none; the
   cell is a blackbox in ``cells_bb_ecp5.v``), so the ECP5 text runs on `MULT18X18D_MODEL`
   below: a behavioural model written from Lattice's description of the ECP5 sysDSP
   multiplier (TN1267 / FPGA-TN-02205: A/B input, pipeline and output registers selected by
   ``REG_*_CLK``, enabled by ``REG_*_CE`` and reset by ``REG_*_RST``; ``SIGNEDA``/``SIGNEDB``
   choose two's complement per operand; ``P`` is the 36-bit product).  It refuses (``$fatal``)
   every parameter value it does not model, so an instance it accepts uses only modelled
   features.  This checks the wiring of the instance (bit order, sign extension, which
   registers, the clock enable, the product slice), not the silicon.
2. **Netlist.**  ``synth_ecp5`` of the ECP5 text keeps one ``MULT18X18D`` per multiplier
   with the A/B input and output registers on ``CLK0`` (what nextpnr needs to time the
   block register to register) and no fabric flip-flops; the generic text still maps to
   DSP blocks on iCE40 (``synth_ice40 -dsp``).
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import cocotb
import pytest
from amaranth import signed, unsigned
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from fpga.tools import find_tool
from hw.config import SDConfig
from hw.dsp import SD_MUL_ECP5_VERILOG, SD_MUL_VERILOG, mul_shape

#: (A_WIDTH, A_SIGNED, B_WIDTH, B_SIGNED) of the pairs under test.
SHAPES = [(17, 1, 8, 1), (8, 1, 8, 1), (17, 0, 16, 0), (16, 1, 16, 0),
          (18, 1, 18, 1), (17, 0, 17, 0), (18, 0, 8, 1), (24, 1, 10, 1)]

_MODEL_PARAMS = {
    "REG_INPUTA_CLK": "NONE", "REG_INPUTA_CE": "CE0", "REG_INPUTA_RST": "RST0",
    "REG_INPUTB_CLK": "NONE", "REG_INPUTB_CE": "CE0", "REG_INPUTB_RST": "RST0",
    "REG_INPUTC_CLK": "NONE", "REG_INPUTC_CE": "CE0", "REG_INPUTC_RST": "RST0",
    "REG_PIPELINE_CLK": "NONE", "REG_PIPELINE_CE": "CE0", "REG_PIPELINE_RST": "RST0",
    "REG_OUTPUT_CLK": "NONE", "REG_OUTPUT_CE": "CE0", "REG_OUTPUT_RST": "RST0",
    "CLK0_DIV": "ENABLED", "CLK1_DIV": "ENABLED", "CLK2_DIV": "ENABLED",
    "CLK3_DIV": "ENABLED", "HIGHSPEED_CLK": "NONE", "GSR": "ENABLED",
    "CAS_MATCH_REG": "FALSE", "SOURCEB_MODE": "B_SHIFT", "MULT_BYPASS": "DISABLED",
    "RESETMODE": "SYNC",
}


def _model_text() -> str:
    """Behavioural ``MULT18X18D`` (ports and parameter defaults of yosys' blackbox)."""
    bus = {"A": 18, "B": 18, "C": 18, "SRIA": 18, "SRIB": 18}
    outs = {"SROA": 18, "SROB": 18, "ROA": 18, "ROB": 18, "ROC": 18, "P": 36}
    ports = ([f"{n}{i}" for n, w in bus.items() for i in range(w)]
             + ["SIGNEDA", "SIGNEDB", "SOURCEA", "SOURCEB"]
             + [f"{n}{i}" for n in ("CLK", "CE", "RST") for i in range(4)]
             + [f"{n}{i}" for n, w in outs.items() for i in range(w)] + ["SIGNEDP"])
    n_in = sum(bus.values()) + 4 + 12
    decl = [f"    input {p};" for p in ports[:n_in]] + [f"    output {p};" for p in ports[n_in:]]
    params = [f'    parameter {k} = "{v}";' for k, v in _MODEL_PARAMS.items()]
    a = "{" + ", ".join(f"A{i}" for i in reversed(range(18))) + "}"
    b = "{" + ", ".join(f"B{i}" for i in reversed(range(18))) + "}"
    pbits = "\n".join(f"    assign P{i} = p_out[{i}];" for i in range(36))
    zero = "\n".join(f"    assign {n}{i} = 1'b0;" for n, w in outs.items() if n != "P"
                     for i in range(w))
    return f"""// Behavioural model of the ECP5 MULT18X18D multiplier mode (see tb/test_dsp.py).
module MULT18X18D({", ".join(ports)});
{chr(10).join(params)}
{chr(10).join(decl)}
    wire [17:0] a_in = {a};
    wire [17:0] b_in = {b};
    wire [3:0] ce = {{CE3, CE2, CE1, CE0}};
    wire [3:0] rst = {{RST3, RST2, RST1, RST0}};
    function automatic integer sel(input [8*4-1:0] name);
        sel = name == "CE0" || name == "RST0" ? 0 : name == "CE1" || name == "RST1" ? 1 :
              name == "CE2" || name == "RST2" ? 2 : name == "CE3" || name == "RST3" ? 3 : -1;
    endfunction
    function automatic integer clocked(input [8*4-1:0] name);
        clocked = name == "NONE" ? 0 : name == "CLK0" ? 1 : -1;
    endfunction
    initial begin
        if (clocked(REG_INPUTA_CLK) < 0 || clocked(REG_INPUTB_CLK) < 0 ||
            clocked(REG_PIPELINE_CLK) < 0 || clocked(REG_OUTPUT_CLK) < 0)
            $fatal(1, "MULT18X18D model: only NONE or CLK0 register clocks are modelled");
        if (sel(REG_INPUTA_CE) < 0 || sel(REG_INPUTB_CE) < 0 || sel(REG_PIPELINE_CE) < 0 ||
            sel(REG_OUTPUT_CE) < 0 || sel(REG_INPUTA_RST) < 0 || sel(REG_INPUTB_RST) < 0 ||
            sel(REG_PIPELINE_RST) < 0 || sel(REG_OUTPUT_RST) < 0)
            $fatal(1, "MULT18X18D model: bad CE/RST selection");
        if (REG_INPUTC_CLK != "NONE" || MULT_BYPASS != "DISABLED" || RESETMODE != "SYNC" ||
            HIGHSPEED_CLK != "NONE" || CAS_MATCH_REG != "FALSE")
            $fatal(1, "MULT18X18D model: C register, bypass, async reset, fast clock, cascade");
    end
    always @(posedge CLK0)
        if (SOURCEA !== 1'b0 || SOURCEB !== 1'b0)
            $fatal(1, "MULT18X18D model: only parallel inputs (SOURCEA = SOURCEB = 0)");
    // input registers (each with its sign control), pipeline and output registers
    reg [17:0] a_r = 18'd0, b_r = 18'd0;
    reg sa_r = 1'b0, sb_r = 1'b0;
    reg [35:0] pipe_r = 36'd0, out_r = 36'd0;
    wire [17:0] a_u = clocked(REG_INPUTA_CLK) ? a_r : a_in;
    wire [17:0] b_u = clocked(REG_INPUTB_CLK) ? b_r : b_in;
    wire sa = clocked(REG_INPUTA_CLK) ? sa_r : SIGNEDA;
    wire sb = clocked(REG_INPUTB_CLK) ? sb_r : SIGNEDB;
    wire signed [36:0] a_x = {{{{19{{sa & a_u[17]}}}}, a_u}};
    wire signed [36:0] b_x = {{{{19{{sb & b_u[17]}}}}, b_u}};
    wire signed [73:0] prod = a_x * b_x;
    wire [35:0] p_mul = prod[35:0];
    wire [35:0] p_pipe = clocked(REG_PIPELINE_CLK) ? pipe_r : p_mul;
    wire [35:0] p_out = clocked(REG_OUTPUT_CLK) ? out_r : p_pipe;
    always @(posedge CLK0) begin
        if (rst[sel(REG_INPUTA_RST)]) begin a_r <= 18'd0; sa_r <= 1'b0; end
        else if (ce[sel(REG_INPUTA_CE)]) begin a_r <= a_in; sa_r <= SIGNEDA; end
        if (rst[sel(REG_INPUTB_RST)]) begin b_r <= 18'd0; sb_r <= 1'b0; end
        else if (ce[sel(REG_INPUTB_CE)]) begin b_r <= b_in; sb_r <= SIGNEDB; end
        if (rst[sel(REG_PIPELINE_RST)]) pipe_r <= 36'd0;
        else if (ce[sel(REG_PIPELINE_CE)]) pipe_r <= p_mul;
        if (rst[sel(REG_OUTPUT_RST)]) out_r <= 36'd0;
        else if (ce[sel(REG_OUTPUT_CE)]) out_r <= p_pipe;
    end
{pbits}
    assign SIGNEDP = sa | sb;
{zero}
endmodule
"""


MULT18X18D_MODEL = _model_text()


def _p_width(aw, asg, bw, bsg) -> int:
    """Exact product width, as the MAC lanes size it (`hw.dsp.mul_shape`)."""
    return mul_shape(signed(aw) if asg else unsigned(aw), signed(bw) if bsg else unsigned(bw)).width


def equivalence_top(config: SDConfig) -> str:
    """Both texts of ``sd_mul`` side by side for every shape of `SHAPES`."""
    gen = SD_MUL_VERILOG.replace("module sd_mul ", "module sd_mul_generic ")
    ecp5 = SD_MUL_ECP5_VERILOG.replace("module sd_mul ", "module sd_mul_ecp5 ")
    assert gen != SD_MUL_VERILOG and ecp5 != SD_MUL_ECP5_VERILOG
    lines = ["module mul_equiv(input wire clk, input wire rst, input wire ce,",
             "                 input wire [35:0] a, input wire [35:0] b,"]
    outs, insts = [], []
    for k, (aw, asg, bw, bsg) in enumerate(SHAPES):
        pw = _p_width(aw, asg, bw, bsg)
        outs.append(f"                 output wire [{pw - 1}:0] pg{k}, output wire [{pw - 1}:0] pe{k}")
        for name, port in (("sd_mul_generic", f"pg{k}"), ("sd_mul_ecp5", f"pe{k}")):
            insts.append(f"    {name} #(.A_WIDTH({aw}), .A_SIGNED({asg}), .B_WIDTH({bw}), "
                         f".B_SIGNED({bsg}), .P_WIDTH({pw})) u_{port} (.clk(clk), .ce(ce), "
                         f".a(a[{aw - 1}:0]), .b(b[{bw - 1}:0]), .p({port}));")
    lines.append(",\n".join(outs) + ");")
    lines += insts + ["endmodule", ""]
    return "\n".join([gen, ecp5, MULT18X18D_MODEL, "\n".join(lines)])


def _operand(rng: random.Random, width: int, signed: bool) -> int:
    """Bits of a random operand, often an extreme (signed: -2**(w-1), -1, 0, 1, max)."""
    if rng.random() < 0.4:
        lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)
        v = rng.choice([lo, hi, 0, 1, lo + 1, hi - 1] + ([-1] if signed else []))
    else:
        v = rng.getrandbits(width)
    return v & ((1 << width) - 1)


def _value(bits: int, width: int, signed: bool) -> int:
    bits &= (1 << width) - 1
    return bits - (1 << width) if signed and bits >> (width - 1) else bits


@cocotb.test()
async def sd_mul_generic_and_ecp5_match_python(dut):
    """Random and extreme operands, random clock enable: p == a_q * b_q, both texts."""
    from tb.common import ClockReset
    clock = ClockReset(dut)
    rng = random.Random(2026)
    dut.ce.value = 0
    dut.a.value = 0
    dut.b.value = 0
    await clock.reset()
    # Python model per shape: input registers and output register (None = never loaded)
    state = [{"a": None, "b": None, "p": None} for _ in SHAPES]
    checked = 0
    for cycle in range(4000):
        a_bits, b_bits = rng.getrandbits(36), rng.getrandbits(36)
        # one shape's extremes per cycle in turn (the others take the low bits too)
        aw, asg, bw, bsg = SHAPES[cycle % len(SHAPES)]
        a_bits = (a_bits & ~((1 << aw) - 1)) | _operand(rng, aw, asg)
        b_bits = (b_bits & ~((1 << bw) - 1)) | _operand(rng, bw, bsg)
        ce = int(rng.random() < 0.7)
        await FallingEdge(dut.clk)
        dut.a.value, dut.b.value, dut.ce.value = a_bits, b_bits, ce
        await RisingEdge(dut.clk)
        if ce:
            for k, (aw, asg, bw, bsg) in enumerate(SHAPES):
                s = state[k]
                if s["a"] is not None:
                    pw = _p_width(aw, asg, bw, bsg)
                    s["p"] = (s["a"] * s["b"]) & ((1 << pw) - 1)
                s["a"], s["b"] = _value(a_bits, aw, asg), _value(b_bits, bw, bsg)
        await ReadOnly()
        for k, s in enumerate(state):
            if s["p"] is None:
                continue
            got_g, got_e = int(getattr(dut, f"pg{k}").value), int(getattr(dut, f"pe{k}").value)
            assert got_g == s["p"], (f"cycle {cycle}, shape {SHAPES[k]}: generic sd_mul "
                                     f"gives {got_g:#x}, expected {s['p']:#x}")
            assert got_e == s["p"], (f"cycle {cycle}, shape {SHAPES[k]}: ECP5 sd_mul "
                                     f"gives {got_e:#x}, expected {s['p']:#x}")
            checked += 1
    assert checked > 3000 * len(SHAPES) // 2, f"only {checked} products were checked"
    dut._log.info(f"{checked} products checked on {len(SHAPES)} shapes")


@pytest.mark.sim
def test_sd_mul_ecp5_matches_generic():
    from tb.harness import run_cocotb
    run_cocotb(equivalence_top, SDConfig(), test_module=__name__, name="mul_equiv",
               toplevel="mul_equiv", timeout_s=300)


# ------------------------------------------------------------------ yosys netlists
def _synth(tmp_path: Path, text: str, script: str) -> dict:
    """JSON netlist of ``text`` (top ``mul_top``) after ``script``."""
    (tmp_path / "mul.v").write_text(text)
    proc = subprocess.run([*find_tool("yosys"), "-q", "-p",
                           f"read_verilog -sv mul.v; {script}; write_json net.json"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "net.json").read_text())["modules"]["mul_top"]


_WRAP = """
module mul_top(input wire clk, input wire ce, input wire [16:0] w, input wire [7:0] x,
               input wire [16:0] lo, input wire [15:0] hi, input wire [15:0] m,
               output wire [24:0] p, output wire [32:0] pl, output wire [32:0] ph);
    sd_mul #(.A_WIDTH(17), .A_SIGNED(1), .B_WIDTH(8), .B_SIGNED(1), .P_WIDTH(25))
        u0 (.clk(clk), .ce(ce), .a(w), .b(x), .p(p));
    sd_mul #(.A_WIDTH(17), .A_SIGNED(0), .B_WIDTH(16), .B_SIGNED(0), .P_WIDTH(33))
        u1 (.clk(clk), .ce(ce), .a(lo), .b(m), .p(pl));
    sd_mul #(.A_WIDTH(16), .A_SIGNED(1), .B_WIDTH(16), .B_SIGNED(0), .P_WIDTH(33))
        u2 (.clk(clk), .ce(ce), .a(hi), .b(m), .p(ph));
endmodule
"""


def test_ecp5_text_maps_to_registered_mult18x18d(tmp_path):
    cells = _synth(tmp_path, SD_MUL_ECP5_VERILOG + _WRAP, "synth_ecp5 -top mul_top")["cells"]
    mults = [c for c in cells.values() if c["type"] == "MULT18X18D"]
    assert len(mults) == 3, sorted({c["type"] for c in cells.values()})
    for c in mults:
        prm = c["parameters"]
        for reg in ("REG_INPUTA_CLK", "REG_INPUTB_CLK", "REG_OUTPUT_CLK"):
            assert prm[reg] == "CLK0", f"{reg} = {prm[reg]!r}"
        assert prm["REG_PIPELINE_CLK"] == "NONE" and prm["GSR"] == "DISABLED"
    # every register is inside the DSP blocks: no fabric flip-flop, no LUT
    assert not [c for c in cells.values() if c["type"] in ("TRELLIS_FF", "LUT4")], \
        sorted(c["type"] for c in cells.values())


def test_generic_text_maps_to_dsp_blocks_on_ice40(tmp_path):
    cells = _synth(tmp_path, SD_MUL_VERILOG + _WRAP, "synth_ice40 -dsp -top mul_top")["cells"]
    kinds = [c["type"] for c in cells.values()]
    assert kinds.count("SB_MAC16") >= 3, sorted(set(kinds))

"""Registered multiplier ``sd_mul``: the MAC lanes' DSP blocks, one Verilog module per family.

``p = a_q * b_q`` one cycle after the input registers ``a_q``/``b_q`` load ``a``/``b``:
input registers, a multiply and an output register, all enabled by ``ce`` (no reset: the
data is qualified by valid flags that travel beside it).  Two cycles from ``a``/``b`` to
``p``, and no logic between a register and the multiplier, which is how every FPGA's DSP
block wants to be used.

Two texts of the same module ``sd_mul`` (same parameters, ports and behaviour):

* `SD_MUL_VERILOG` (``sd_mul.v``): behavioural and vendor-neutral.  Verilator simulates
  it; Vivado, Quartus and yosys' iCE40 flow infer a DSP block and absorb the registers.
* `SD_MUL_ECP5_VERILOG` (``sd_mul_ecp5.v``): a ``MULT18X18D`` instance with its A/B input
  and output registers on ``CLK0``.  yosys' ECP5 mapping turns a behavioural multiply into
  a *combinational* ``MULT18X18D`` and leaves the registers in the fabric, so
  nextpnr-ecp5 times flip-flop -> routing -> multiplier -> routing -> flip-flop as one
  path; with the block's own registers the multiplier sits between two registers inside
  the block.  Operands wider than one 18 x 18 block fall back to the behavioural code.

The open-source ECP5 flow (`fpga.flow`) reads the ECP5 text in place of ``sd_mul.v``
(`family_variant`); other flows read the generic text.  `RegisteredMul` instantiates the
module from Amaranth, or (``instance=False``) builds the same registers in Amaranth for
the Amaranth simulator, which cannot run Verilog.
"""

from __future__ import annotations

import textwrap

from amaranth import ClockSignal, Instance, Module, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["RegisteredMul", "SD_MUL_VERILOG", "SD_MUL_ECP5_VERILOG", "SD_MUL_FILE",
           "FAMILY_VARIANTS", "family_variant", "mul_shape", "DSP_WIDTH"]

#: Operand width of one ECP5 ``MULT18X18D`` (signed 18 x 18 -> 36).
DSP_WIDTH = 18

#: File name of the generic module in generated folders.
SD_MUL_FILE = "sd_mul.v"

#: Parameters and ports of ``sd_mul``, the same in every text of the module.
_SD_MUL_HEADER = r"""module sd_mul #(
    parameter integer A_WIDTH = 18,
    parameter integer A_SIGNED = 1,
    parameter integer B_WIDTH = 18,
    parameter integer B_SIGNED = 1,
    parameter integer P_WIDTH = 36
) (
    input  wire               clk,
    input  wire               ce,
    input  wire [A_WIDTH-1:0] a,
    input  wire [B_WIDTH-1:0] b,
    output wire [P_WIDTH-1:0] p
);
    localparam integer AX = A_WIDTH + (A_SIGNED ? 0 : 1);
    localparam integer BX = B_WIDTH + (B_SIGNED ? 0 : 1);
"""

#: The behavioural registers and multiply: the whole generic module, and the ECP5 text's
#: fallback for operands wider than one block.
_SD_MUL_BEHAVIOURAL = r"""reg  [A_WIDTH-1:0] a_q;
reg  [B_WIDTH-1:0] b_q;
reg  [P_WIDTH-1:0] p_q;
wire signed [AX-1:0] a_x;
wire signed [BX-1:0] b_x;
if (A_SIGNED) begin : g_a
    assign a_x = a_q;
end else begin : g_a
    assign a_x = {1'b0, a_q};
end
if (B_SIGNED) begin : g_b
    assign b_x = b_q;
end else begin : g_b
    assign b_x = {1'b0, b_q};
end
wire signed [AX+BX-1:0] full = a_x * b_x;
always @(posedge clk) begin
    if (ce) begin
        a_q <= a;
        b_q <= b;
        p_q <= full[P_WIDTH-1:0];
    end
end
assign p = p_q;
"""

SD_MUL_VERILOG = r"""// sd_mul: registered multiplier p = a_q * b_q (two cycles from a/b to p).
// Input registers a_q/b_q, a multiply, an output register; all enabled by ce; no reset.
// Unsigned operands are zero-extended by one bit, so every product is signed x signed.
// Behavioural and vendor-neutral: synthesis tools map it to a DSP block with its input
// and output registers.  sd_mul_ecp5.v is the same module built on ECP5's MULT18X18D.
""" + _SD_MUL_HEADER + textwrap.indent(_SD_MUL_BEHAVIOURAL, " " * 4) + "endmodule\n"

SD_MUL_ECP5_VERILOG = r"""// sd_mul for Lattice ECP5: the same module as sd_mul.v (parameters, ports, behaviour),
// built on one MULT18X18D with its A/B input registers and its output register clocked
// by CLK0 = clk and enabled by CE0 = ce (RST0 = 0, no pipeline register, GSR off), so
// p = a_q * b_q two cycles after a/b, and nextpnr times the block register to register.
// Operands are extended to 18 bits and multiplied signed x signed; operands that do not
// fit (an unsigned 18-bit operand or anything wider) use the behavioural registers.
""" + _SD_MUL_HEADER + r"""    generate
        if (AX <= 18 && BX <= 18 && P_WIDTH <= 36) begin : g_dsp
            // sign- (signed) or zero- (unsigned) extension to the block's 18 bits
            wire [17:0] ax;
            wire [17:0] bx;
            wire [A_WIDTH+17:0] ae = {{18{A_SIGNED ? a[A_WIDTH-1] : 1'b0}}, a};
            wire [B_WIDTH+17:0] be = {{18{B_SIGNED ? b[B_WIDTH-1] : 1'b0}}, b};
            assign ax = ae[17:0];
            assign bx = be[17:0];
            wire [35:0] px;
            MULT18X18D #(
                .REG_INPUTA_CLK("CLK0"), .REG_INPUTA_CE("CE0"), .REG_INPUTA_RST("RST0"),
                .REG_INPUTB_CLK("CLK0"), .REG_INPUTB_CE("CE0"), .REG_INPUTB_RST("RST0"),
                .REG_INPUTC_CLK("NONE"),
                .REG_PIPELINE_CLK("NONE"),
                .REG_OUTPUT_CLK("CLK0"), .REG_OUTPUT_CE("CE0"), .REG_OUTPUT_RST("RST0"),
                .CLK0_DIV("ENABLED"), .HIGHSPEED_CLK("NONE"), .GSR("DISABLED"),
                .CAS_MATCH_REG("FALSE"), .SOURCEB_MODE("B_SHIFT"),
                .MULT_BYPASS("DISABLED"), .RESETMODE("SYNC")
            ) mult (
                .A0(ax[0]), .A1(ax[1]), .A2(ax[2]), .A3(ax[3]), .A4(ax[4]), .A5(ax[5]),
                .A6(ax[6]), .A7(ax[7]), .A8(ax[8]), .A9(ax[9]), .A10(ax[10]), .A11(ax[11]),
                .A12(ax[12]), .A13(ax[13]), .A14(ax[14]), .A15(ax[15]), .A16(ax[16]),
                .A17(ax[17]),
                .B0(bx[0]), .B1(bx[1]), .B2(bx[2]), .B3(bx[3]), .B4(bx[4]), .B5(bx[5]),
                .B6(bx[6]), .B7(bx[7]), .B8(bx[8]), .B9(bx[9]), .B10(bx[10]), .B11(bx[11]),
                .B12(bx[12]), .B13(bx[13]), .B14(bx[14]), .B15(bx[15]), .B16(bx[16]),
                .B17(bx[17]),
                .C0(1'b0), .C1(1'b0), .C2(1'b0), .C3(1'b0), .C4(1'b0), .C5(1'b0),
                .C6(1'b0), .C7(1'b0), .C8(1'b0), .C9(1'b0), .C10(1'b0), .C11(1'b0),
                .C12(1'b0), .C13(1'b0), .C14(1'b0), .C15(1'b0), .C16(1'b0), .C17(1'b0),
                .SIGNEDA(1'b1), .SIGNEDB(1'b1), .SOURCEA(1'b0), .SOURCEB(1'b0),
                // CLK1-3, CE1-3, RST1-3 and the shift inputs SRIA/SRIB stay unconnected,
                // like yosys' own MULT18X18D mapping: every tied pin is a route from the
                // constant net, and 20 blocks of tied pins make nextpnr's router fail.
                .CLK0(clk), .CE0(ce), .RST0(1'b0),
                .P0(px[0]), .P1(px[1]), .P2(px[2]), .P3(px[3]), .P4(px[4]), .P5(px[5]),
                .P6(px[6]), .P7(px[7]), .P8(px[8]), .P9(px[9]), .P10(px[10]), .P11(px[11]),
                .P12(px[12]), .P13(px[13]), .P14(px[14]), .P15(px[15]), .P16(px[16]),
                .P17(px[17]), .P18(px[18]), .P19(px[19]), .P20(px[20]), .P21(px[21]),
                .P22(px[22]), .P23(px[23]), .P24(px[24]), .P25(px[25]), .P26(px[26]),
                .P27(px[27]), .P28(px[28]), .P29(px[29]), .P30(px[30]), .P31(px[31]),
                .P32(px[32]), .P33(px[33]), .P34(px[34]), .P35(px[35])
            );
            assign p = px[P_WIDTH-1:0];
        end else begin : g_wide
""" + textwrap.indent(_SD_MUL_BEHAVIOURAL, " " * 12) + r"""        end
    endgenerate
endmodule
"""

#: Family-specific texts of hand-written modules: family -> {generic file name:
#: (variant file name, variant text)}.  A flow for ``family`` reads the variant in place
#: of a generic file whose text is the generic module (`family_variant`).
FAMILY_VARIANTS: dict[str, dict[str, tuple[str, str]]] = {
    "ecp5": {SD_MUL_FILE: ("sd_mul_ecp5.v", SD_MUL_ECP5_VERILOG)},
}

_GENERIC_TEXT = {SD_MUL_FILE: SD_MUL_VERILOG}


def family_variant(name: str, text: str, family: str) -> "tuple[str, str] | None":
    """``(file name, text)`` to read instead of file ``name`` (content ``text``) for ``family``.

    ``None`` when the file has no variant for the family, or when its text is not the
    generic module this package writes (an edited file is used as it is).
    """
    variant = FAMILY_VARIANTS.get(family, {}).get(name)
    if variant is None or text != _GENERIC_TEXT.get(name):
        return None
    return variant


class RegisteredMul(wiring.Component):
    """``p = a_q * b_q``: input registers, multiply, output register (`SD_MUL_VERILOG`).

    Parameters
    ----------
    a_shape, b_shape : Shape
        Operand shapes (``signed(n)`` or ``unsigned(n)``).
    p_shape : Shape
        Product shape; the exact product is truncated to its width.
    instance : bool
        True: an instance of the Verilog module ``sd_mul`` (synthesis and Verilator; the
        design needs `verilog_sources`).  False: the same registers in Amaranth (for the
        Amaranth simulator).

    Attributes
    ----------
    a, b : In
        Operands, loaded into the input registers on a cycle with ``ce``.
    ce : In(1)
        Enable of all three registers.
    p : Out(p_shape)
        Product of the operands loaded at the previous enabled edge, registered.
    """

    def __init__(self, a_shape, b_shape, p_shape, *, instance: bool = True):
        from amaranth.hdl import Shape
        self.a_shape, self.b_shape, self.p_shape = (Shape.cast(a_shape), Shape.cast(b_shape),
                                                    Shape.cast(p_shape))
        for what, s in (("a_shape", self.a_shape), ("b_shape", self.b_shape),
                        ("p_shape", self.p_shape)):
            if s.width < 1:
                raise ValueError(f"RegisteredMul: {what} must be at least 1 bit wide, got {s!r}")
        self.instance = bool(instance)
        super().__init__({"a": In(self.a_shape), "b": In(self.b_shape), "ce": In(1),
                          "p": Out(self.p_shape)})

    @property
    def verilog_sources(self) -> dict[str, str]:
        """``{"sd_mul.v": text}`` when the multiplier is the Verilog module, else ``{}``."""
        return {SD_MUL_FILE: SD_MUL_VERILOG} if self.instance else {}

    def elaborate(self, platform):
        m = Module()
        if self.instance:
            m.submodules.mul = Instance(
                "sd_mul",
                p_A_WIDTH=self.a_shape.width, p_A_SIGNED=int(self.a_shape.signed),
                p_B_WIDTH=self.b_shape.width, p_B_SIGNED=int(self.b_shape.signed),
                p_P_WIDTH=self.p_shape.width,
                i_clk=ClockSignal(), i_ce=self.ce, i_a=self.a, i_b=self.b, o_p=self.p)
            return m
        # Like the Verilog module: no reset (reset_less), everything enabled by ce.
        a_q = Signal(self.a_shape, reset_less=True)
        b_q = Signal(self.b_shape, reset_less=True)
        p_q = Signal(self.p_shape, reset_less=True)
        with m.If(self.ce):
            m.d.sync += [a_q.eq(self.a), b_q.eq(self.b), p_q.eq(a_q * b_q)]
        m.d.comb += self.p.eq(p_q)
        return m


def mul_shape(a_shape, b_shape):
    """Exact product shape of two operand shapes (Amaranth's rule for ``a * b``)."""
    from amaranth.hdl import Shape
    a, b = Shape.cast(a_shape), Shape.cast(b_shape)
    if a.signed or b.signed:
        return signed(a.width + (0 if a.signed else 1) + b.width + (0 if b.signed else 1))
    return unsigned(a.width + b.width)

"""Memory wrappers of the accelerator: one read port, one write port, three ways to fill.

Every memory of the accelerator is a `SyncRAM`: a synchronous single-read, single-write
RAM (the simple dual-port block RAM every FPGA has).  Its contents come from one of

1. **baked** — ``init=[...]``: the words become the ``initial`` block of the generated
   Verilog (an Amaranth ``lib.memory.Memory``);
2. **file** — ``init_file="ce.hex"``: the RAM is a small hand-written Verilog module
   (`SD_RAM_VERILOG`, module ``sd_ram``) that Amaranth instantiates with the file name as
   the ``INIT_FILE`` parameter; the module calls ``$readmemh`` at elaboration, so new
   weights need a new ``.hex`` file, never new Verilog;
3. **run time** — the write port, always present, which the host interface drives.

Both implementations read the *old* word when reading and writing one address in the
same cycle, read with one cycle of latency (``r_data`` is valid the cycle after
``r_en``) and hold ``r_data`` while ``r_en`` is low, so a design behaves the same with
either.  Unwritten words read as 0 in both.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from amaranth import ClockSignal, Instance, Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SyncRAM", "ReadStreamer", "SD_RAM_VERILOG", "addr_bits", "collect_verilog_sources"]


def addr_bits(depth: int) -> int:
    """Address width of a memory of ``depth`` words (at least 1)."""
    return max(1, (depth - 1).bit_length())


#: Storage, zero fill, ``$readmemh`` and ports of ``sd_ram``; each branch of its
#: ``generate`` has one copy (a Verilog attribute cannot depend on a parameter, so the
#: ``no_rw_check`` memory needs a branch of its own).
_SD_RAM_STORAGE = r"""{attr}reg [WIDTH-1:0] mem [0:DEPTH-1];
initial begin
    for (i = 0; i < DEPTH; i = i + 1)
        mem[i] = {{WIDTH{{1'b0}}}};
    if (INIT_FILE != "")
        $readmemh(INIT_FILE, mem);
end
always @(posedge clk) begin
    if (r_en)
        r_data <= mem[r_addr];
    for (i = 0; i < WIDTH / GRAN; i = i + 1)
        if (w_en[i])
            mem[w_addr][i * GRAN +: GRAN] <= w_data[i * GRAN +: GRAN];
end
"""


def _sd_ram_storage(attr: str) -> str:
    return textwrap.indent(_SD_RAM_STORAGE.format(attr=attr), " " * 8)


#: Verilog source of the file-initialised RAM (module ``sd_ram``).  Pass it to the
#: simulator or synthesis tool next to the generated design (`SyncRAM.verilog_sources`).
SD_RAM_VERILOG = r"""// sd_ram: 1R1W synchronous RAM, contents from a $readmemh file parameter.
// Generated designs instantiate it with INIT_FILE set; replacing the file changes the
// weights without regenerating any Verilog.  One cycle read latency, r_data held while
// r_en is low (like Amaranth's lib.memory).
// COLLISION_FREE = 0: read-old-data when one cycle reads and writes the same address.
//   Block RAMs without that guarantee (ECP5 DP16KD in pseudo-dual-port mode) need
//   synthesis to emulate it with a delayed write and a bypass after the RAM output.
// COLLISION_FREE = 1: the user guarantees that no cycle reads and writes the same
//   address (no_rw_check: no emulation logic); a simulator stops with an error naming
//   the memory and the address if that ever happens.
module sd_ram #(
    parameter integer WIDTH = 8,
    parameter integer DEPTH = 16,
    parameter integer ABITS = 4,
    parameter integer GRAN = 8,
    parameter INIT_FILE = "",
    parameter integer COLLISION_FREE = 0
) (
    input  wire                   clk,
    input  wire [ABITS-1:0]       r_addr,
    input  wire                   r_en,
    output reg  [WIDTH-1:0]       r_data,
    input  wire [ABITS-1:0]       w_addr,
    input  wire [WIDTH-1:0]       w_data,
    input  wire [WIDTH/GRAN-1:0]  w_en
);
    integer i;
    initial r_data = {WIDTH{1'b0}};
    generate if (COLLISION_FREE) begin : nc
""" + _sd_ram_storage("(* no_rw_check *) ") + r"""`ifndef SYNTHESIS
        // synthesis translate_off
        always @(posedge clk)
            if (r_en && (|w_en) && r_addr == w_addr)
                $fatal(1, "sd_ram %m (COLLISION_FREE): address %0d read and written in one cycle",
                       r_addr);
        // synthesis translate_on
`endif
    end else begin : rf
""" + _sd_ram_storage("") + r"""    end endgenerate
endmodule
"""


class SyncRAM(wiring.Component):
    """Synchronous 1-read / 1-write RAM, baked, file-initialised or empty.

    Parameters
    ----------
    width : int
        Word width in bits.
    depth : int
        Number of words.
    granularity : int, optional
        Write-enable granularity in bits (``width`` must be a multiple); default ``width``
        (one enable bit).
    init : sequence of int, optional
        Words baked into the design (at most ``depth``; the rest are 0).
    init_file : str, optional
        ``$readmemh`` file name given to the ``sd_ram`` Verilog module (relative names are
        resolved by the simulator / synthesis tool from its working directory).
        Exclusive with ``init``.  A design using it cannot run in the Amaranth simulator.
    name : str
        Name used in error messages.
    collision_free : bool
        The user of the RAM never reads and writes one address in the same cycle (the
        activation banks: a layer reads its input region and writes its output region,
        which the compiler places apart).  Synthesis then needs no logic to emulate
        read-old-data on a collision (on ECP5 a delayed write and a bypass behind the
        block RAM output, the slowest path of the accelerator); a simulation stops with an
        error if the promise is broken.  Only for the ``sd_ram`` form (no ``init``).

    Attributes
    ----------
    r_addr, r_en : In
        Read address and enable; ``r_data`` shows ``mem[r_addr]`` from the next cycle and
        holds while ``r_en`` is low.
    r_data : Out(width)
    w_addr, w_data : In
    w_en : In(width // granularity)
        One enable bit per ``granularity`` bits of the word.
    """

    def __init__(self, width: int, depth: int, *, granularity: int | None = None,
                 init: Sequence[int] | None = None, init_file: str | None = None,
                 name: str = "ram", collision_free: bool = False):
        for key, value in (("width", width), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {key} must be a positive int, got {value!r}")
        gran = width if granularity is None else granularity
        if isinstance(gran, bool) or not isinstance(gran, int) or gran < 1 or width % gran:
            raise ValueError(f"{name}: granularity must divide the width {width}, "
                             f"got {granularity!r}")
        if init is not None and init_file is not None:
            raise ValueError(f"{name}: give init or init_file, not both")
        if init is not None:
            init = [int(w) for w in init]
            if len(init) > depth:
                raise ValueError(f"{name}: {len(init)} initial words do not fit the depth "
                                 f"{depth}")
            for a, w in enumerate(init):
                if not 0 <= w < (1 << width):
                    raise ValueError(f"{name}: initial word {a} = {w:#x} does not fit "
                                     f"{width} bits")
        if init_file is not None and (not isinstance(init_file, str) or not init_file
                                      or '"' in init_file):
            raise ValueError(f"{name}: init_file must be a non-empty file name without "
                             f"quotes, got {init_file!r}")
        if collision_free and init is not None:
            raise ValueError(f"{name}: collision_free needs the sd_ram form (no baked init)")
        self.collision_free = bool(collision_free)
        self.width, self.depth, self.granularity = width, depth, gran
        self.init, self.init_file, self.name = init, init_file, name
        abits = addr_bits(depth)
        super().__init__({
            "r_addr": In(abits), "r_en": In(1), "r_data": Out(width),
            "w_addr": In(abits), "w_data": In(width), "w_en": In(width // gran),
        })

    @property
    def verilog_sources(self) -> dict[str, str]:
        """Extra Verilog files this memory needs: ``{"sd_ram.v": text}`` or ``{}``."""
        return {"sd_ram.v": SD_RAM_VERILOG} if self.uses_sd_ram else {}

    @property
    def uses_sd_ram(self) -> bool:
        """True when the RAM is the ``sd_ram`` Verilog module (file or empty init).

        An empty memory is the Verilog module too: its zero fill is one loop, where an
        Amaranth memory lists every word in an ``initial`` block, which makes large
        empty memories slow to compile under Verilator.
        """
        return self.init is None

    def elaborate(self, platform):
        m = Module()
        if self.uses_sd_ram:
            m.submodules.ram = Instance(
                "sd_ram",
                p_WIDTH=self.width, p_DEPTH=self.depth, p_ABITS=addr_bits(self.depth),
                p_GRAN=self.granularity, p_INIT_FILE=self.init_file or "",
                p_COLLISION_FREE=int(self.collision_free),
                i_clk=ClockSignal(), i_r_addr=self.r_addr, i_r_en=self.r_en,
                o_r_data=self.r_data, i_w_addr=self.w_addr, i_w_data=self.w_data,
                i_w_en=self.w_en)
            return m
        m.submodules.mem = mem = memory.Memory(shape=self.width, depth=self.depth,
                                               init=self.init)
        rd = mem.read_port()
        wr = mem.write_port(granularity=None if self.granularity == self.width
                            else self.granularity)
        m.d.comb += [
            rd.addr.eq(self.r_addr), rd.en.eq(self.r_en), self.r_data.eq(rd.data),
            wr.addr.eq(self.w_addr), wr.data.eq(self.w_data), wr.en.eq(self.w_en),
        ]
        return m


def collect_verilog_sources(*components) -> dict[str, str]:
    """Union of the `SyncRAM.verilog_sources` of ``components`` (others are ignored)."""
    out: dict[str, str] = {}
    for c in components:
        out.update(getattr(c, "verilog_sources", {}) or {})
    return out


class ReadStreamer(wiring.Component):
    """Turns a stream of read addresses into a stream of words, at one word per cycle.

    Sits between a producer of addresses and a `SyncRAM` read port.  A request carries an
    address and a ``tag`` that comes back with its word (a ``last`` flag, a lane index).
    A read is issued only when the three-entry output buffer is sure to have room for it,
    so back-pressure on ``resp`` never loses a word and a free-flowing ``resp`` gets one
    word per cycle.

    ``resp.valid`` and ``resp.payload`` come straight from flip-flops (the head register
    of the buffer), so consumers never decode a RAM output or a LUT-RAM read; and
    ``req.ready`` depends on registers only (not on ``resp.ready``), so no combinational
    path runs from the consumer back into the address producer.  The third entry is
    what lets the issue decision ignore this cycle's pop and still stream one word per
    cycle.

    Parameters
    ----------
    addr_width, data_width : int
        Address and word widths of the RAM.
    tag_shape : shape
        Payload travelling with each request (``unsigned(1)`` for a plain flag).

    Attributes
    ----------
    req : In(stream.Signature({addr, tag}))
    resp : Out(stream.Signature({data, tag}))
    r_addr, r_en : Out; r_data : In
        To the RAM's read port.
    count : Out(1)
        High in a cycle in which a read is issued (for the energy counters).

    Notes
    -----
    Latency: a request accepted in cycle ``n`` is on ``resp`` from cycle ``n + 2``.
    """

    #: Words the buffer holds (head register + two queued words).
    DEPTH = 3

    def __init__(self, addr_width: int, data_width: int, tag_shape=unsigned(1)):
        self._tag_shape = tag_shape
        self._data_width = data_width
        super().__init__({
            "req": In(stream.Signature(data.StructLayout({"addr": addr_width,
                                                          "tag": tag_shape}))),
            "resp": Out(stream.Signature(data.StructLayout({"data": data_width,
                                                            "tag": tag_shape}))),
            "r_addr": Out(addr_width), "r_en": Out(1), "r_data": In(data_width),
            "count": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        layout = data.StructLayout({"data": self._data_width, "tag": self._tag_shape})
        # Fmax: every wide enable / mux select below is one LUT of flip-flops with a
        # small fanout.  Control bits that drive a whole word (74 flip-flops) therefore
        # get their own copy, kept *inverted* (``*_e`` = empty) so that Yosys does not
        # merge it with the original; the data registers have no reset (their valid
        # bits say what counts), so the reset does not join their enables.
        inflight = Signal()                 # a read issued last cycle: its word is on r_data
        inflight_e = Signal(init=1)         # ~inflight, the enable of q1
        tag_d = Signal(self._tag_shape, reset_less=True)
        # Buffer in arrival order: head (= resp) first, then q0, q1.
        head_v = self.resp.valid            # for the consumer only
        head_e = Signal(init=1)             # ~head_v, for the enables here
        head = Signal(layout, reset_less=True)
        m.d.comb += self.resp.payload.eq(head)
        q0_v, q1_v = Signal(name="q0_v"), Signal(name="q1_v")
        q0_e, q1_e = Signal(name="q0_e", init=1), Signal(name="q1_e", init=1)  # selects
        q0 = Signal(layout, name="q0", reset_less=True)
        q1 = Signal(layout, name="q1", reset_less=True)
        incoming = Signal(layout)
        m.d.comb += [incoming.data.eq(self.r_data), incoming.tag.eq(tag_d)]

        # Issue only while every word already stored or in flight, plus this one, fits:
        # a function of registers alone (this cycle's pop is not counted).
        room = Signal()
        m.d.comb += room.eq(~head_e + q0_v + q1_v + inflight < self.DEPTH)
        issue = Signal()
        m.d.comb += [
            self.req.ready.eq(room),
            issue.eq(self.req.valid & room),
            self.r_addr.eq(self.req.payload.addr),
            self.r_en.eq(issue),
            self.count.eq(issue),
        ]
        m.d.sync += [inflight.eq(issue), inflight_e.eq(~issue)]
        with m.If(issue):
            m.d.sync += tag_d.eq(self.req.payload.tag)

        # The head takes the oldest word whenever it is empty or being read.  q1 only
        # ever holds the incoming word (with q1 full nothing is in flight), q0 the
        # incoming one or q1's.  q1 is full only while q0 is, so "q0 and q1 full" is
        # q1_v alone.
        load = Signal()
        m.d.comb += load.eq(head_e | self.resp.ready)
        nxt_h, nxt_0, nxt_1 = Signal(), Signal(), Signal()
        with m.If(load):
            m.d.comb += [nxt_h.eq(q0_v | inflight), nxt_0.eq(q0_v & (q1_v | inflight)),
                         nxt_1.eq(0)]
        with m.Else():
            m.d.comb += [nxt_h.eq(~head_e), nxt_0.eq(q0_v | inflight),
                         nxt_1.eq(q1_v | (q0_v & inflight))]
        m.d.sync += [head_v.eq(nxt_h), head_e.eq(~nxt_h), q0_v.eq(nxt_0), q0_e.eq(~nxt_0),
                     q1_v.eq(nxt_1), q1_e.eq(~nxt_1)]
        with m.If(head_e | self.resp.ready):
            m.d.sync += head.eq(Mux(q0_e, incoming, q0))
        with m.If(q0_e | head_e | self.resp.ready):
            m.d.sync += q0.eq(Mux(q1_e, incoming, q1))
        with m.If(~inflight_e):
            m.d.sync += q1.eq(incoming)
        return m

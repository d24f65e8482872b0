"""Host interface: AXI4-Lite register block, AXI4-Stream memory loader and result reader.

Port names follow the AXI conventions FPGA tools infer interfaces from
(``s_axil_awaddr`` ... ``s_axil_rready``, ``s_axis_tdata/tvalid/tready/tlast``,
``m_axis_tdata/tvalid/tready/tlast``); they are top-level members of the accelerator
component, so the generated Verilog has exactly these names.  The register map and the
stream protocol are documented in ``docs/architecture.md`` and encoded once here
(`Reg`, `StreamCmd`, `StreamError`, `header_word`), so the Python driver
(``tb/accel_driver.py``) uses the same constants.

Stream protocol (32-bit beats on ``s_axis``):

* beat 0: ``cmd << 28 | mem << 24 | address`` (`header_word`);
* beat 1: word count ``n``;
* ``cmd == WRITE``: ``n`` words follow, each ``ceil(width / 32)`` beats, least
  significant beat first; ``tlast`` on the final beat;
* ``cmd == READ``: ``tlast`` on beat 1; the ``n`` words come back on ``m_axis`` in the
  same beat format, ``tlast`` on the final beat.

Memory loads and reads are accepted only while the accelerator is idle (``tready`` low
while it runs; a read in progress pauses).  AXI4-Lite writes are whole 32-bit words
(``wstrb`` is ignored) and every access answers OKAY; unmapped addresses read 0.  A malformed frame sets ``STATUS.STREAM_ERROR`` and the code in
``STREAM_ERR``; the rest of the frame up to ``tlast`` is dropped.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from hw.config import SDConfig
from hw.descriptor import DESC_SLOT_WORDS, FIELDS
from hw.memories import addr_bits

__all__ = ["Reg", "StreamCmd", "StreamError", "MemId", "Counter", "HostInterface",
           "header_word", "AXIL_ADDR_BITS", "DESC_BASE", "LAYER_CYCLES_BASE", "ID_SD",
           "ID_DENSE", "beats_per_word"]

AXIL_ADDR_BITS = 16
ID_SD = 0x5DAC_0001        #: ID register of the SD accelerator
ID_DENSE = 0x5DAC_0101     #: ID register of the dense baseline
LAYER_CYCLES_BASE = 0x0100
DESC_BASE = 0x8000


class Reg(enum.IntEnum):
    """Byte addresses of the AXI4-Lite registers."""

    ID = 0x00            #: RO  `ID_SD` or `ID_DENSE`
    CTRL = 0x04          #: WO  bit0 START, bit1 ABORT, bit2 CLEAR_COUNTERS, bit3 CLEAR_STREAM_ERROR
    STATUS = 0x08        #: RO  bit0 BUSY, bit1 DONE, bit2 ERROR, bit3 STREAM_ERROR,
    #:                          [15:8] ERROR_CODE, [23:16] ERROR_LAYER, [31:24] LAYER
    N_LAYERS = 0x0C      #: RW  layers run by START
    CYCLES_LO = 0x10     #: RO  cycles of the current / last run
    CYCLES_HI = 0x14
    ERR_COUNT = 0x18     #: RO  runs ended by an error since reset / CLEAR_COUNTERS
    WATCHDOG = 0x1C      #: RW  cycles without progress before a WATCHDOG error (0: off)
    CONFIG_ID = 0x20     #: RO  first 8 hex digits of SDConfig.fingerprint() (its high 32 bits)
    PARAMS0 = 0x24       #: RO  S | lanes << 8 | act_bits << 16 | terms << 24
    PARAMS1 = 0x28       #: RO  max_layers | DESC_SLOT_WORDS << 8 | fields << 16
    STREAM_ERR = 0x2C    #: RO  `StreamError` of the first bad frame
    COUNTERS = 0x40      #: RO  `Counter` values of the current / last run, 4 bytes each


class Counter(enum.IntEnum):
    """Event counters (cleared by START and CLEAR_COUNTERS), at ``COUNTERS + 4*i``."""

    WEIGHT_READS = 0     #: Ce (or dense) weight-memory words read
    BASIS_READS = 1      #: basis words read
    QUANT_READS = 2      #: quant words read
    ACT_READS = 3        #: activation bank words read
    ACT_WRITES = 4       #: activation write cycles (one word or one scattered element)
    ROWS = 5             #: weight rows delivered (rebuilt rows for SD)
    MAC_OPS = 6          #: ops (each lanes x S multiply-accumulates)
    RESULTS = 7          #: output positions x groups written
    STALLS = 8           #: cycles with a row held but no op issued


CTRL_START, CTRL_ABORT, CTRL_CLEAR_COUNTERS, CTRL_CLEAR_STREAM_ERROR = 1, 2, 4, 8


class StreamCmd(enum.IntEnum):
    WRITE = 1
    READ = 2


class MemId(enum.IntEnum):
    """Memory selector of the stream header."""

    WEIGHTS = 0     #: Ce memory (SD) or dense weight memory
    BASIS = 1       #: SD only
    QUANT = 2
    ACT = 3         #: address = bank << ACT_BANK_SHIFT | word (see the top's ``act_bank_shift``)


class StreamError(enum.IntEnum):
    NONE = 0
    BAD_COMMAND = 1
    BAD_MEMORY = 2
    RANGE = 3           #: address + count beyond the memory
    EARLY_LAST = 4      #: tlast before the frame's final beat
    MISSING_LAST = 5    #: no tlast on the frame's final beat


def header_word(cmd: int, mem: int, address: int) -> int:
    """Beat 0 of a stream frame."""
    if not 0 <= address < 1 << 24:
        raise ValueError(f"stream address {address} does not fit 24 bits")
    return (int(cmd) << 28) | (int(mem) << 24) | address


def beats_per_word(width: int) -> int:
    """32-bit stream beats per memory word of ``width`` bits."""
    return -(-width // 32)


class HostInterface(wiring.Component):
    """AXI4-Lite slave + AXI4-Stream slave/master, and the glue to controller and memories.

    Parameters
    ----------
    config : SDConfig
    mems : mapping ``MemId -> (width, depth)``
        The memories the stream may address.
    ident : int
        Value of the ID register.
    max_layers : int
    n_counters : int

    Attributes
    ----------
    s_axil_* , s_axis_*, m_axis_*, irq
        External ports (``irq`` = DONE or ERROR).
    start, abort, clear_counters : Out(1) pulses; n_layers : Out(8); watchdog : Out(32)
    busy, done, error : In(1); error_code, error_layer, layer : In(8); cycles : In(64)
    err_count : In(32); layer_cycles : In(array); counters : In(array of 32)
    desc_w_addr, desc_w_data, desc_w_en : Out — descriptor RAM write port
    desc_r_addr, desc_r_en : Out; desc_r_data : In — second descriptor RAM read port
    mem_w_id, mem_w_addr, mem_w_data, mem_w_en : Out — one memory write
    mem_r_id, mem_r_addr, mem_r_en : Out; mem_r_data : In — one memory read (data two cycles
        after ``mem_r_en``: the block RAM output is registered before the select)
    """

    def __init__(self, config: SDConfig, mems: Mapping[int, tuple[int, int]], ident: int,
                 max_layers: int, n_counters: int = len(Counter),
                 watchdog_default: int = 1 << 16):
        if max_layers * DESC_SLOT_WORDS * 4 > (1 << AXIL_ADDR_BITS) - DESC_BASE:
            raise ValueError(f"max_layers={max_layers} descriptors do not fit the register "
                             f"map (at most {((1 << AXIL_ADDR_BITS) - DESC_BASE) // (4 * DESC_SLOT_WORDS)})")
        self.config = config
        self.mems = {int(k): (int(w), int(dp)) for k, (w, dp) in mems.items()}
        self.ident = ident
        self.max_layers = max_layers
        self.n_counters = n_counters
        self.watchdog_default = watchdog_default
        self.max_width = max(w for w, _ in self.mems.values())
        aw = AXIL_ADDR_BITS
        sig = {
            # AXI4-Lite slave
            "s_axil_awaddr": In(aw), "s_axil_awprot": In(3), "s_axil_awvalid": In(1),
            "s_axil_awready": Out(1),
            "s_axil_wdata": In(32), "s_axil_wstrb": In(4), "s_axil_wvalid": In(1),
            "s_axil_wready": Out(1),
            "s_axil_bresp": Out(2), "s_axil_bvalid": Out(1), "s_axil_bready": In(1),
            "s_axil_araddr": In(aw), "s_axil_arprot": In(3), "s_axil_arvalid": In(1),
            "s_axil_arready": Out(1),
            "s_axil_rdata": Out(32), "s_axil_rresp": Out(2), "s_axil_rvalid": Out(1),
            "s_axil_rready": In(1),
            # AXI4-Stream slave (memory loads, read commands) and master (read data)
            "s_axis_tdata": In(32), "s_axis_tvalid": In(1), "s_axis_tready": Out(1),
            "s_axis_tlast": In(1),
            "m_axis_tdata": Out(32), "m_axis_tvalid": Out(1), "m_axis_tready": In(1),
            "m_axis_tlast": Out(1),
            "irq": Out(1),
            # to the controller
            "start": Out(1), "abort": Out(1), "clear_counters": Out(1),
            "n_layers": Out(8), "watchdog": Out(32),
            "busy": In(1), "done": In(1), "error": In(1),
            "error_code": In(8), "error_layer": In(8), "layer": In(8), "cycles": In(64),
            "err_count": In(32),
            "layer_cycles": In(data.ArrayLayout(32, max_layers)),
            "counters": In(data.ArrayLayout(32, n_counters)),
            # descriptor RAM
            "desc_w_addr": Out(addr_bits(max_layers * DESC_SLOT_WORDS)),
            "desc_w_data": Out(32), "desc_w_en": Out(1),
            "desc_r_addr": Out(addr_bits(max_layers * DESC_SLOT_WORDS)),
            "desc_r_en": Out(1), "desc_r_data": In(32),
            # memories
            "mem_w_id": Out(4), "mem_w_addr": Out(24), "mem_w_data": Out(self.max_width),
            "mem_w_en": Out(1),
            "mem_r_id": Out(4), "mem_r_addr": Out(24), "mem_r_en": Out(1),
            "mem_r_data": In(self.max_width),
        }
        super().__init__(sig)

    # --------------------------------------------------------------------- elaborate
    def elaborate(self, platform):
        m = Module()
        self._stream_err_code = Signal(8)
        self._clear_stream_err = Signal()
        self._axil(m)
        self._stream(m)
        return m

    def _axil(self, m):
        cfg = self.config
        n_layers = Signal(8)
        watchdog = Signal(32, init=self.watchdog_default)
        m.d.comb += [self.n_layers.eq(n_layers), self.watchdog.eq(watchdog),
                     self.irq.eq(self.done | self.error)]

        # ---- writes: address and data together, one at a time ---------------------------
        # The response leaves two cycles after the handshake (``wr_ack`` in between):
        # the CTRL pulses are registered (they fan out into the controller, so they start
        # at a flip-flop), and DONE/ERROR (and irq) must be clear when the response
        # reaches the host.
        do_write = Signal()
        wr_ack = Signal()
        m.d.comb += [
            do_write.eq(self.s_axil_awvalid & self.s_axil_wvalid & ~self.s_axil_bvalid
                        & ~wr_ack),
            self.s_axil_awready.eq(do_write), self.s_axil_wready.eq(do_write),
            self.s_axil_bresp.eq(0),
        ]
        m.d.sync += [wr_ack.eq(do_write), self.start.eq(0), self.abort.eq(0),
                     self.clear_counters.eq(0), self._clear_stream_err.eq(0)]
        with m.If(wr_ack):
            m.d.sync += self.s_axil_bvalid.eq(1)
        with m.If(self.s_axil_bvalid & self.s_axil_bready):
            m.d.sync += self.s_axil_bvalid.eq(0)
        waddr = self.s_axil_awaddr
        wdata = self.s_axil_wdata
        word_index = Signal(AXIL_ADDR_BITS - 2)
        m.d.comb += word_index.eq(waddr[2:])
        m.d.comb += [self.desc_w_addr.eq(waddr[2:]), self.desc_w_data.eq(wdata)]
        with m.If(do_write):
            with m.If(waddr >= DESC_BASE):
                m.d.comb += self.desc_w_en.eq(
                    (waddr - DESC_BASE) < self.max_layers * DESC_SLOT_WORDS * 4)
                m.d.comb += self.desc_w_addr.eq((waddr - DESC_BASE)[2:])
            with m.Elif(waddr[:8] == Reg.CTRL):
                # pulses in the cycle after the handshake (the controller clears
                # DONE/ERROR then, before the response leaves)
                m.d.sync += [self.start.eq(wdata[0]), self.abort.eq(wdata[1]),
                             self.clear_counters.eq(wdata[2]),
                             self._clear_stream_err.eq(wdata[3])]
            with m.Elif(waddr[:8] == Reg.N_LAYERS):
                m.d.sync += n_layers.eq(wdata)
            with m.Elif(waddr[:8] == Reg.WATCHDOG):
                m.d.sync += watchdog.eq(wdata)

        # ---- reads: one cycle to latch the address (and read the descriptor RAM), one to
        # decode it and pick the word of each source (``rd_pending``), one to choose the
        # source (``rd_sel``): every stage starts at flip-flops ------------------------
        rd_addr = Signal(AXIL_ADDR_BITS)
        rd_pending = Signal()
        rd_sel = Signal()
        take_ar = Signal()
        m.d.comb += [take_ar.eq(self.s_axil_arvalid & ~rd_pending & ~rd_sel
                                & ~self.s_axil_rvalid),
                     self.s_axil_arready.eq(take_ar), self.s_axil_rresp.eq(0),
                     self.desc_r_addr.eq((self.s_axil_araddr - DESC_BASE)[2:]),
                     self.desc_r_en.eq(take_ar)]
        with m.If(take_ar):
            m.d.sync += [rd_addr.eq(self.s_axil_araddr), rd_pending.eq(1)]
        with m.If(self.s_axil_rvalid & self.s_axil_rready):
            m.d.sync += self.s_axil_rvalid.eq(0)
        status = Cat(self.busy, self.done, self.error, self._stream_err_flag(m),
                     Const(0, 4), self.error_code, self.error_layer, self.layer)
        regs = {
            Reg.ID: Const(self.ident, 32), Reg.STATUS: status, Reg.N_LAYERS: n_layers,
            Reg.CYCLES_LO: self.cycles[:32], Reg.CYCLES_HI: self.cycles[32:],
            Reg.ERR_COUNT: self.err_count, Reg.WATCHDOG: watchdog,
            Reg.CONFIG_ID: Const(int(cfg.fingerprint()[:8], 16), 32),
            Reg.PARAMS0: Const(cfg.basis_size | cfg.lanes << 8 | cfg.act_bits << 16
                               | cfg.terms << 24, 32),
            Reg.PARAMS1: Const(self.max_layers | DESC_SLOT_WORDS << 8 | len(FIELDS) << 16, 32),
            Reg.STREAM_ERR: self._stream_err_code,
        }
        # stage 2: the source, and its word (the descriptor RAM holds its data: no
        # read is taken until the response is accepted)
        is_desc, is_lc, is_cnt = Signal(), Signal(), Signal()
        lc_word, cnt_word, reg_word = Signal(32), Signal(32), Signal(32)
        desc_word = Signal(32)
        lc_idx = (rd_addr - LAYER_CYCLES_BASE)[2:]
        cnt_idx = (rd_addr - Reg.COUNTERS)[2:]
        reg_value = Signal(32)
        with m.Switch(rd_addr[:8]):
            for reg, v in regs.items():
                with m.Case(int(reg)):
                    m.d.comb += reg_value.eq(v)
        with m.If(rd_pending):
            m.d.sync += [
                rd_pending.eq(0), rd_sel.eq(1),
                is_desc.eq(rd_addr >= DESC_BASE),
                is_lc.eq((rd_addr >= LAYER_CYCLES_BASE)
                         & (rd_addr < LAYER_CYCLES_BASE + 4 * self.max_layers)),
                is_cnt.eq((rd_addr >= Reg.COUNTERS)
                          & (rd_addr < Reg.COUNTERS + 4 * self.n_counters)),
                lc_word.eq(self.layer_cycles.as_value().word_select(
                    lc_idx[:max(1, (self.max_layers - 1).bit_length())], 32)),
                cnt_word.eq(self.counters.as_value().word_select(
                    cnt_idx[:max(1, (self.n_counters - 1).bit_length())], 32)),
                reg_word.eq(reg_value),
                # the descriptor RAM's output straight into a register (block RAM data
                # arrives late: no select in front of it)
                desc_word.eq(self.desc_r_data),
            ]
        # stage 3: the response
        with m.If(rd_sel):
            m.d.sync += [rd_sel.eq(0), self.s_axil_rvalid.eq(1),
                         self.s_axil_rdata.eq(Mux(is_desc, desc_word,
                                                  Mux(is_lc, lc_word,
                                                      Mux(is_cnt, cnt_word, reg_word))))]

    def _stream_err_flag(self, m):
        flag = Signal()
        m.d.comb += flag.eq(self._stream_err_code != 0)
        return flag

    def _stream(self, m):
        err = self._stream_err_code
        mems = self.mems
        W = self.max_width
        max_beats = max(beats_per_word(w) for w, _ in mems.values())
        tdata, tlast = self.s_axis_tdata, self.s_axis_tlast
        cmd = Signal(4)
        mem = Signal(4)
        addr = Signal(24)
        count = Signal(32)
        hdr_last = Signal()                           # tlast of beat 1
        over = Signal()                               # addr + count beyond the memory
        # count == 0 (valid in CHECK, like `over`), and count == 1 / 2 kept one step
        # ahead, so no 32-bit compare sits in front of the state machine
        c0, c1, c2 = Signal(), Signal(), Signal()
        beat = Signal(range(max_beats + 1))
        word = Signal(W)
        beats = Signal(range(max_beats + 1))          # beats per word of `mem`
        depth = Signal(25)
        known = Signal()
        with m.Switch(mem):
            for k, (w, dp) in mems.items():
                with m.Case(k):
                    m.d.comb += [beats.eq(beats_per_word(w)), depth.eq(dp), known.eq(1)]

        # the range check in two steps, one carry chain each: room = depth - addr from
        # the registers of beat 0 (valid from SUM), then over = count > room (valid in CHECK)
        room = Signal(signed(26))
        m.d.sync += [room.eq(depth - addr), over.eq(count > room), c0.eq(count == 0)]

        take = Signal()
        m.d.comb += take.eq(self.s_axis_tvalid & self.s_axis_tready)

        def set_err(code):
            with m.If(err == 0):
                m.d.sync += err.eq(code)

        with m.If(self._clear_stream_err):
            m.d.sync += err.eq(0)

        out_beat = Signal(range(max_beats + 1))
        out_word = Signal(max_beats * 32)
        with m.FSM():
            with m.State("HDR0"):
                m.d.comb += self.s_axis_tready.eq(~self.busy)
                with m.If(take):
                    m.d.sync += [cmd.eq(tdata[28:32]), mem.eq(tdata[24:28]),
                                 addr.eq(tdata[:24])]
                    with m.If(tlast):
                        set_err(StreamError.EARLY_LAST)
                    with m.Else():
                        m.next = "HDR1"
            with m.State("HDR1"):
                m.d.comb += self.s_axis_tready.eq(~self.busy)
                with m.If(take):
                    m.d.sync += [count.eq(tdata), hdr_last.eq(tlast), beat.eq(0), word.eq(0),
                                 c1.eq(tdata == 1), c2.eq(tdata == 2)]
                    m.next = "SUM"
            with m.State("SUM"):
                # the range check (a 32-bit add and compare) gets a cycle of its own
                m.next = "CHECK"
            with m.State("CHECK"):
                # the frame header is checked from registers
                with m.If((cmd != StreamCmd.WRITE) & (cmd != StreamCmd.READ)):
                    set_err(StreamError.BAD_COMMAND)
                    m.next = "HDR0"
                    with m.If(~hdr_last):
                        m.next = "DRAIN"
                with m.Elif(~known):
                    set_err(StreamError.BAD_MEMORY)
                    m.next = "HDR0"
                    with m.If(~hdr_last):
                        m.next = "DRAIN"
                with m.Elif(over):
                    set_err(StreamError.RANGE)
                    m.next = "HDR0"
                    with m.If(~hdr_last):
                        m.next = "DRAIN"
                with m.Elif(cmd == StreamCmd.READ):
                    with m.If(~hdr_last):
                        set_err(StreamError.MISSING_LAST)
                        m.next = "DRAIN"
                    with m.Elif(c0):
                        m.next = "HDR0"
                    with m.Else():
                        m.next = "RD_ISSUE"
                with m.Else():      # WRITE
                    with m.If(c0):
                        m.next = "HDR0"
                        with m.If(~hdr_last):
                            set_err(StreamError.MISSING_LAST)
                            m.next = "DRAIN"
                    with m.Elif(hdr_last):
                        set_err(StreamError.EARLY_LAST)
                        m.next = "HDR0"
                    with m.Else():
                        m.next = "DATA"
            with m.State("DATA"):
                m.d.comb += self.s_axis_tready.eq(~self.busy)
                full = Signal(W)
                m.d.comb += full.eq(word | (tdata << (beat * 32)))
                final_beat = Signal()
                m.d.comb += final_beat.eq(beat + 1 == beats)
                with m.If(take):
                    with m.If(final_beat):
                        m.d.comb += [self.mem_w_en.eq(1)]
                        m.d.sync += [beat.eq(0), word.eq(0), addr.eq(addr + 1),
                                     count.eq(count - 1), c1.eq(c2), c2.eq(count == 3)]
                        with m.If(c1):
                            m.next = "HDR0"
                            with m.If(~tlast):
                                set_err(StreamError.MISSING_LAST)
                                m.next = "DRAIN"
                        with m.Elif(tlast):
                            set_err(StreamError.EARLY_LAST)
                            m.next = "HDR0"
                    with m.Else():
                        m.d.sync += [beat.eq(beat + 1), word.eq(full)]
                        with m.If(tlast):
                            set_err(StreamError.EARLY_LAST)
                            m.next = "HDR0"
                m.d.comb += [self.mem_w_id.eq(mem), self.mem_w_addr.eq(addr),
                             self.mem_w_data.eq(full)]
            with m.State("DRAIN"):
                m.d.comb += self.s_axis_tready.eq(1)
                with m.If(take & tlast):
                    m.next = "HDR0"
            with m.State("RD_ISSUE"):
                # the memories' read ports belong to the datapath while it runs
                with m.If(~self.busy):
                    m.d.comb += self.mem_r_en.eq(1)
                    m.next = "RD_WAIT"
            with m.State("RD_WAIT"):
                # the block RAM outputs are registered once before the select
                m.next = "RD_LATCH"
            with m.State("RD_LATCH"):
                m.d.sync += [out_word.eq(self.mem_r_data), out_beat.eq(0)]
                m.next = "RD_SEND"
            with m.State("RD_SEND"):
                last_beat = Signal()
                m.d.comb += [last_beat.eq(out_beat + 1 == beats),
                             self.m_axis_tvalid.eq(1),
                             self.m_axis_tdata.eq(out_word.word_select(out_beat, 32)),
                             self.m_axis_tlast.eq(last_beat & c1)]
                with m.If(self.m_axis_tready):
                    m.d.sync += out_beat.eq(out_beat + 1)
                    with m.If(last_beat):
                        m.d.sync += [addr.eq(addr + 1), count.eq(count - 1), c1.eq(c2),
                                     c2.eq(count == 3)]
                        m.next = "HDR0"
                        with m.If(~c1):
                            m.next = "RD_ISSUE"
        m.d.comb += [self.mem_r_id.eq(mem), self.mem_r_addr.eq(addr)]

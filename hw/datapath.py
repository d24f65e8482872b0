"""The layer datapath: weight feed, row rebuild, window generator, MAC lanes, writer.

SD path::

    Ce RAM -> WordFeeder -> SparseDecoder -+-> row FIFO -> BasisArray -+
                                           |        basis RAM -> BasisLoader
                                           +-> (group, block) requests -^
                                           +-> RowAddress -> info FIFO --+
                                                                         v
    quant RAM -> QuantLoader ----------------------------------> RowSequencer -> MacLanes
                                 activation banks (read) -------^                  |
                                 activation banks (write) <- ResultWriter <--------+

Dense baseline: ``dense RAM -> WordFeeder -> DenseRowReader -+-> weights FIFO`` and
``+-> RowAddress``, the rest identical.

The fork after the decoder lets the basis loader see a new block's first row as soon as
it is decoded, up to ``row_fifo`` rows before the basis array needs it, so bank swaps
cost no bubble (the double-buffered basis is filled while the previous block runs).
Memories live outside (`hw.top`), so the datapath can be reset by the controller's
``flush`` without touching their contents.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.arith import mul_const
from hw.basis_array import BasisArray
from hw.config import SDConfig
from hw.controller import CtrlError
from hw.decoder import SparseDecoder
from hw.dense import DenseRowReader
from hw.descriptor import FLAG_PRELOAD, descriptor_layout, geometry
from hw.layouts import decoded_row_layout, quant_layout, weights_row_layout
from hw.loaders import BasisLoader, QuantLoader, WordFeeder, basis_request_layout
from hw.mac import MacLanes
from hw.sequencer import RowAddress, RowSequencer, row_info_layout
from hw.writer import ResultWriter

__all__ = ["LayerDatapath", "SkidBuffer", "DENSE_WEIGHT_BITS", "dense_word_bits",
           "weight_word_bits"]

#: Results that may be on their way to the writer FIFO when the sequencer sees its fill:
#: `RowSequencer.LATENCY`, `MacLanes.LATENCY`, the registered fill and one spare.
CREDIT_SLACK = RowSequencer.LATENCY + MacLanes.LATENCY + 3

#: Weight width of the dense int8 baseline.
DENSE_WEIGHT_BITS = 8


def dense_word_bits(config: SDConfig) -> int:
    """Word width of the dense baseline's weight memory: ``lanes x S`` int8 weights."""
    return config.lanes * config.basis_size * DENSE_WEIGHT_BITS


def weight_word_bits(config: SDConfig, kind: str) -> int:
    """Weight memory word width of accelerator ``kind`` (``"sd"`` or ``"dense"``)."""
    return config.ce_word_width if kind == "sd" else dense_word_bits(config)


class SkidBuffer(wiring.Component):
    """Two-entry stream buffer with registered ``o.valid``, ``o.payload`` and ``i.ready``.

    Rows pass straight into the output register while it is free or being taken; a row
    that arrives while the output is held waits in the skid register, and ``i.ready``
    (``~skid_valid``) drops.  One row per cycle, one cycle of latency, and after the
    consumer's ``o.ready`` only one LUT level reaches any register (no level counter).

    Parameters
    ----------
    width : int
    """

    def __init__(self, width: int):
        self.width = width
        super().__init__({"i": In(stream.Signature(width)), "o": Out(stream.Signature(width))})

    def elaborate(self, platform):
        m = Module()
        s_valid = Signal()
        s_data = Signal(self.width)
        take_in = Signal()
        free = Signal()             # the output register is empty or taken this cycle
        m.d.comb += [self.i.ready.eq(~s_valid), take_in.eq(self.i.valid & ~s_valid),
                     free.eq(~self.o.valid | self.o.ready)]
        with m.If(free):
            m.d.sync += [self.o.valid.eq(s_valid | take_in),
                         self.o.payload.eq(Mux(s_valid, s_data, self.i.payload)),
                         s_valid.eq(0)]
        with m.Elif(take_in):
            m.d.sync += [s_data.eq(self.i.payload), s_valid.eq(1)]
        return m


class LayerDatapath(wiring.Component):
    """All blocks that run one layer; memories are reached through ports.

    Parameters
    ----------
    config : SDConfig
    kind : {"sd", "dense"}
    row_fifo : int
        Decoded rows buffered between the decoder and the basis array (lookahead of the
        basis loader).
    result_fifo : int
        Results buffered in front of the writer.  The MAC lanes never stall: the
        sequencer issues an op only while the FIFO has room for every result that may
        be in flight (`CREDIT_SLACK`), so no ready signal runs back through the lanes.

    Attributes
    ----------
    desc_w, w_start : In
        Descriptor and start pulse of the *weight side* (weight feed, decoder, basis and
        quant loaders, row-address unit), which may run one layer ahead.
    w_idle : Out(1)
        The weight side has delivered everything of its layer (it may take the next).
    desc_a, a_start : In
        Descriptor and start pulse of the *activation side* (sequencer, writer).
    w_r_addr, w_r_en, w_r_data : weight memory read port (Ce or dense)
    b_r_addr, b_r_en, b_r_data : basis memory read port (SD only)
    q_r_addr, q_r_en, q_r_data : quant memory read port
    act_rd_addr, act_rd_en, act_rd_data : activation bank read ports
    act_wr_addr, act_wr_data, act_wr_en : activation bank write ports
    layer_done, error : Out(1) pulses; error_code : Out(8)
    progress : Out(1)
    events : Out(ArrayLayout(1, 9))
        One bit per `hw.host.Counter` event this cycle (ACT_READS counts ``S`` words).
    """

    def __init__(self, config: SDConfig, kind: str = "sd", *, row_fifo: int = 16,
                 result_fifo: int = 48):
        if kind not in ("sd", "dense"):
            raise ValueError(f"kind must be 'sd' or 'dense', got {kind!r}")
        self.config, self.kind = config, kind
        self.row_fifo, self.result_fifo = row_fifo, result_fifo
        g = geometry(config)
        S, L = config.basis_size, config.lanes
        ww = weight_word_bits(config, kind)
        sig = {
            "desc_w": In(descriptor_layout(config)), "w_start": In(1), "w_idle": Out(1),
            "desc_a": In(descriptor_layout(config)), "a_start": In(1),
            "w_r_addr": Out(g.ce), "w_r_en": Out(1), "w_r_data": In(ww),
            "q_r_addr": Out(g.quant), "q_r_en": Out(1), "q_r_data": In(config.quant_word_bits),
            "act_rd_addr": Out(data.ArrayLayout(unsigned(g.act), S)), "act_rd_en": Out(1),
            "act_rd_data": In(data.ArrayLayout(unsigned(L * config.act_bits), S)),
            "act_wr_addr": Out(data.ArrayLayout(unsigned(g.act), S)),
            "act_wr_data": Out(data.ArrayLayout(unsigned(L * config.act_bits), S)),
            "act_wr_en": Out(data.ArrayLayout(unsigned(L), S)),
            "layer_done": Out(1), "error": Out(1), "error_code": Out(8),
            "progress": Out(1), "events": Out(9),
        }
        if kind == "sd":
            sig.update({"b_r_addr": Out(g.basis), "b_r_en": Out(1),
                        "b_r_data": In(config.basis_word_bits)})
        super().__init__(sig)

    def elaborate(self, platform):
        cfg = self.config
        m = Module()
        sd = self.kind == "sd"
        wbits = None if sd else DENSE_WEIGHT_BITS
        wl = weights_row_layout(cfg, wbits)

        m.submodules.feeder = feeder = WordFeeder(cfg, weight_word_bits(cfg, self.kind))
        m.submodules.quant = quant = QuantLoader(cfg)
        m.submodules.rowaddr = ra = RowAddress(cfg)
        m.submodules.seq = seq = RowSequencer(cfg, wbits)
        m.submodules.mac = mac = MacLanes(cfg, wbits, dsp_instances=True)   # sd_mul DSPs
        m.submodules.writer = writer = ResultWriter(cfg, self.result_fifo)
        # The row-address unit never stalls (its ``info.ready`` is tied high, so its 600
        # stage registers need no enable): a row enters it only while the info FIFO's
        # level, seen one cycle late, leaves room for every row in its pipeline.  The
        # FIFO's output goes through a `SkidBuffer` (the sequencer's take decodes its
        # ``valid``, and the FIFO's level logic sees the skid's registered ready).
        info_depth = self.row_fifo + 2 * ra.latency + 6
        # the rows it may still receive: those in the pipeline, the one entering and
        # the level's lag (one spare)
        info_room = info_depth - ra.latency - 3
        m.submodules.info_fifo = info_fifo = fifo.SyncFIFO(
            width=row_info_layout(cfg).size, depth=info_depth)
        m.submodules.info_skid = info_skid = SkidBuffer(row_info_layout(cfg).size)
        info_ok = Signal()
        m.d.sync += info_ok.eq(info_fifo.w_level <= info_room)

        for blk in (feeder, quant, ra):
            m.d.comb += blk.desc.eq(self.desc_w)
        for blk in (feeder, quant):
            m.d.comb += blk.layer_start.eq(self.w_start)
        for blk in (seq, writer):
            m.d.comb += [blk.desc.eq(self.desc_a), blk.layer_start.eq(self.a_start)]

        # memory ports
        m.d.comb += [self.w_r_addr.eq(feeder.r_addr), self.w_r_en.eq(feeder.r_en),
                     feeder.r_data.eq(self.w_r_data),
                     self.q_r_addr.eq(quant.r_addr), self.q_r_en.eq(quant.r_en),
                     quant.r_data.eq(self.q_r_data)]
        S = cfg.basis_size
        for j in range(S):
            m.d.comb += [self.act_rd_addr[j].eq(seq.rd_addr[j]),
                         seq.rd_data[j].eq(self.act_rd_data[j]),
                         self.act_wr_addr[j].eq(writer.wr_addr[j]),
                         self.act_wr_data[j].eq(writer.wr_data[j]),
                         self.act_wr_en[j].eq(writer.wr_en[j])]
        m.d.comb += self.act_rd_en.eq(seq.rd_en)

        # row source and the fork
        if sd:
            m.submodules.decoder = dec = SparseDecoder(cfg)
            m.submodules.basis_array = ba = BasisArray(cfg)
            m.submodules.basis = bl = BasisLoader(cfg)
            m.submodules.row_fifo = rf = fifo.SyncFIFO(
                width=decoded_row_layout(cfg).size, depth=self.row_fifo)
            m.submodules.req_fifo = qf = fifo.SyncFIFO(
                width=basis_request_layout(cfg).size, depth=self.row_fifo + 4)
            # Room flags of the fork's FIFOs from registers (level seen one cycle late,
            # so one entry stays spare): the fork's ready runs back into the decoder
            # and the weight feed, and a level comparison there cost two LUT levels.
            rf_ok, qf_ok = Signal(), Signal()
            m.d.sync += [rf_ok.eq(rf.w_level <= rf.depth - 2),
                         qf_ok.eq(qf.w_level <= qf.depth - 2)]
            m.d.comb += [self.b_r_addr.eq(bl.r_addr), self.b_r_en.eq(bl.r_en),
                         bl.r_data.eq(self.b_r_data)]
            src = dec.rows
            need_req = src.payload.new_block
            all_ready = Signal()
            m.d.comb += all_ready.eq(rf_ok & info_ok & (qf_ok | ~need_req))
            xfer = Signal()
            m.d.comb += [xfer.eq(src.valid & all_ready), src.ready.eq(all_ready),
                         rf.w_en.eq(xfer), rf.w_data.eq(src.payload),
                         ra.rows.valid.eq(xfer), ra.rows.payload.row.eq(src.payload.row)]
            # Preload: the basis of (group 0, block 0) is requested at layer start (the
            # request FIFO is empty then), and the decoder's own first request dropped.
            # Requests carry the basis address, computed with the row's own descriptor,
            # so requests of one layer may still wait while the next layer starts.
            dw = self.desc_w
            preload = Signal()
            drop_first = Signal()
            m.d.comb += preload.eq(self.w_start & ((dw.FLAGS & FLAG_PRELOAD) != 0))
            req = Signal(basis_request_layout(cfg))
            # Basis address BASIS_BASE + (group * N_BLOCKS + block) * lanes without a
            # multiplier: every group emits at least one row (an empty group one empty
            # row) and its first row starts a block, so groups arrive in order 0, 1, ...
            # (once per position tile) and the group's base address steps by
            # BASIS_GSTEP at each group change.
            gbase = Signal(cfg.basis_depth.bit_length() + 1)
            gbase_step = Signal(len(gbase))         # gbase + BASIS_GSTEP, kept with it
            last_group = Signal(cfg.group_bits)
            step = Signal()
            m.d.comb += step.eq(src.payload.group != last_group)
            this_base = Signal(len(gbase))
            m.d.comb += this_base.eq(Mux(src.payload.group == 0, dw.BASIS_BASE,
                                         Mux(step, gbase_step, gbase)))
            with m.If(xfer & need_req):
                m.d.sync += [gbase.eq(this_base), gbase_step.eq(this_base + dw.BASIS_GSTEP),
                             last_group.eq(src.payload.group)]
            with m.If(preload):
                m.d.comb += [req.addr.eq(dw.BASIS_BASE), qf.w_data.eq(req), qf.w_en.eq(1)]
                m.d.sync += drop_first.eq(1)
            with m.Else():
                m.d.comb += [req.addr.eq(this_base + mul_const(src.payload.block, cfg.lanes)),
                             qf.w_data.eq(req), qf.w_en.eq(xfer & need_req & ~drop_first)]
                with m.If(xfer & need_req):
                    m.d.sync += drop_first.eq(0)
            # request FIFO -> basis loader -> basis array shadow bank
            m.d.comb += [bl.requests.valid.eq(qf.r_rdy), bl.requests.payload.eq(qf.r_data),
                         qf.r_en.eq(bl.requests.ready)]
            wiring.connect(m, bl.basis, ba.basis)
            m.d.comb += [ba.rows.valid.eq(rf.r_rdy), ba.rows.payload.eq(rf.r_data),
                         rf.r_en.eq(ba.rows.ready)]
            wsrc = ba.weights
            ctl = dec
            basis_reads = bl.reads
        else:
            m.submodules.reader = rd = DenseRowReader(cfg, DENSE_WEIGHT_BITS)
            # FIFO, then a skid buffer: the sequencer's take decodes ``valid`` and
            # ``first`` from registers, and the FIFO's level logic sees a registered ready
            m.submodules.weights_fifo = wf = fifo.SyncFIFO(width=wl.size, depth=self.row_fifo)
            m.submodules.weights_skid = wskid = SkidBuffer(wl.size)
            src = rd.rows
            all_ready = Signal()
            xfer = Signal()
            wf_ok = Signal()
            m.d.sync += wf_ok.eq(wf.w_level <= wf.depth - 2)
            m.d.comb += [all_ready.eq(wf_ok & info_ok),
                         xfer.eq(src.valid & all_ready), src.ready.eq(all_ready),
                         wf.w_en.eq(xfer), wf.w_data.eq(src.payload),
                         ra.rows.valid.eq(xfer), ra.rows.payload.row.eq(src.payload.row)]
            m.d.comb += [wskid.i.valid.eq(wf.r_rdy), wskid.i.payload.eq(wf.r_data),
                         wf.r_en.eq(wskid.i.ready)]
            ctl = rd
            basis_reads = 0

        # weight words into the row source
        m.d.comb += [ctl.start.eq(feeder.dec_start), ctl.n_groups.eq(self.desc_w.N_GROUPS),
                     ctl.n_rows.eq(self.desc_w.N_ROWS), feeder.dec_busy.eq(ctl.busy),
                     ctl.words.valid.eq(feeder.words.valid),
                     ctl.words.payload.data.eq(feeder.words.payload.data),
                     ctl.words.payload.last.eq(feeder.words.payload.last),
                     feeder.words.ready.eq(ctl.words.ready)]

        # row address unit -> info FIFO -> sequencer
        m.d.comb += [info_fifo.w_en.eq(ra.info.valid), info_fifo.w_data.eq(ra.info.payload),
                     ra.info.ready.eq(1),
                     info_skid.i.valid.eq(info_fifo.r_rdy),
                     info_skid.i.payload.eq(info_fifo.r_data),
                     info_fifo.r_en.eq(info_skid.i.ready),
                     seq.info.valid.eq(info_skid.o.valid),
                     seq.info.payload.eq(info_skid.o.payload),
                     info_skid.o.ready.eq(seq.info.ready)]
        if sd:
            # Skid buffer: the sequencer's take (row end, pairing) does not chain through
            # the basis array's ready into the basis loader, its ``valid`` / ``first``
            # come from registers (a LUT RAM read drove the quant bundle's 216 enables),
            # and the basis array's ready (the enable of its ~2000 pipeline registers)
            # is a register.
            m.submodules.weights_buf = wb = SkidBuffer(wl.size)
            m.d.comb += [wb.i.valid.eq(wsrc.valid), wb.i.payload.eq(wsrc.payload),
                         wsrc.ready.eq(wb.i.ready),
                         seq.weights.valid.eq(wb.o.valid), seq.weights.payload.eq(wb.o.payload),
                         wb.o.ready.eq(seq.weights.ready)]
            rows_in = Signal()
            m.d.comb += rows_in.eq(wsrc.valid & wsrc.ready)
        else:
            m.d.comb += [seq.weights.valid.eq(wskid.o.valid),
                         seq.weights.payload.eq(wskid.o.payload),
                         wskid.o.ready.eq(seq.weights.ready)]
            rows_in = Signal()
            m.d.comb += rows_in.eq(wskid.o.valid & seq.weights.ready)
        # One-bundle register between the quant loader and the sequencer: the loader's
        # payload enables see a registered ready, not the sequencer's take (a bundle
        # takes ``lanes`` reads to form, so half rate is enough).
        m.submodules.quant_buf = qb = fifo.SyncFIFOBuffered(
            width=quant_layout(cfg).size, depth=1)
        m.d.comb += [qb.w_en.eq(quant.bundles.valid), qb.w_data.eq(quant.bundles.payload),
                     quant.bundles.ready.eq(qb.w_rdy),
                     seq.quant.valid.eq(qb.r_rdy), seq.quant.payload.eq(qb.r_data),
                     qb.r_en.eq(seq.quant.ready)]
        wiring.connect(m, seq.ops, mac.ops)
        m.d.comb += mac.quant.eq(seq.op_quant)
        # Results flow into the writer's FIFO without back-pressure; the sequencer holds
        # while the FIFO (level seen one cycle late) lacks room for all ops in flight.
        if self.result_fifo <= CREDIT_SLACK:
            raise ValueError(f"result_fifo must exceed {CREDIT_SLACK} (ops in flight), "
                             f"got {self.result_fifo}")
        m.d.comb += [writer.results.valid.eq(mac.results.valid),
                     writer.results.payload.eq(mac.results.payload),
                     mac.results.ready.eq(1)]
        hold = Signal()
        m.d.sync += hold.eq(writer.fill > self.result_fifo - CREDIT_SLACK)
        m.d.comb += seq.hold.eq(hold)
        overflow = Signal()
        m.d.comb += overflow.eq(mac.results.valid & ~writer.results.ready)

        # The weight side is done with its layer once every word was fed, every row
        # left the decoder and the row-address unit, and every quant bundle was formed.
        m.d.comb += self.w_idle.eq(feeder.idle & ~ctl.busy & ~src.valid & ra.idle
                                   & quant.idle)

        # status
        op_xfer = Signal()
        res_xfer = Signal()
        m.d.comb += [op_xfer.eq(mac.ops.valid & mac.ops.ready),
                     res_xfer.eq(mac.results.valid & mac.results.ready),
                     self.layer_done.eq(writer.done),
                     self.progress.eq(op_xfer | res_xfer | feeder.reads | writer.writes)]
        with m.If(ctl.error):
            m.d.comb += [self.error.eq(1), self.error_code.eq(ctl.error_code)]
        with m.Elif(writer.error | overflow):
            m.d.comb += [self.error.eq(1), self.error_code.eq(CtrlError.WRITER_SYNC)]
        # events in hw.host.Counter order (STALLS is added by the top)
        m.d.comb += [self.events[0].eq(feeder.reads), self.events[1].eq(basis_reads),
                     self.events[2].eq(quant.reads), self.events[3].eq(seq.rd_en),
                     self.events[4].eq(writer.writes), self.events[5].eq(rows_in),
                     self.events[6].eq(op_xfer), self.events[7].eq(res_xfer)]
        return m

"""Memory-to-stream loaders of the layer datapath: weight words, bases, quant bundles.

All three read a `SyncRAM` through a `ReadStreamer` (one word per cycle, back-pressure
safe) and know from the descriptor which words a layer needs:

* `WordFeeder` — the layer's Ce (or dense) words, once per position tile, with
  ``last`` on the final word; it pulses the decoder's ``start`` before each pass.
* `BasisLoader` — for every ``(group, block)`` request (taken from the decoder output
  where a row has ``new_block``), the ``lanes`` basis words into the basis array's
  shadow bank.
* `QuantLoader` — per (tile, group) the ``lanes`` quant words as one bundle for the
  sequencer; lanes beyond ``COUT`` get zeros.  A bundle is collected in a register and
  moves to the output register in the cycle after its final word, when that one is
  empty (a bundle taken in back-to-back cycles costs one bubble: at most one cycle per
  group, never per row).
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import SDConfig
from hw.descriptor import FLAG_RELU, descriptor_layout, geometry
from hw.layouts import basis_word_layout, lane_quant_layout, quant_layout
from hw.memories import ReadStreamer

__all__ = ["WordFeeder", "BasisLoader", "QuantLoader", "basis_request_layout"]


class WordFeeder(wiring.Component):
    """Streams ``CE_WORDS`` words from ``CE_BASE`` once per tile into a row decoder.

    Attributes
    ----------
    desc, layer_start : In
    dec_start : Out(1)
        Pulse to the decoder before each pass.
    dec_busy : In(1)
        The decoder's ``busy``; the next pass starts once it is low.
    words : Out(stream.Signature({data, last}))
    r_addr, r_en : Out; r_data : In
        Read port of the weight memory.
    reads : Out(1)
        High in a cycle with a memory read (energy counter).
    idle : Out(1)
        Every pass of the layer has been fed and decoded.
    """

    def __init__(self, config: SDConfig, word_width: int):
        self.config = config
        self.word_width = word_width
        g = geometry(config)
        super().__init__({
            "desc": In(descriptor_layout(config)),
            "layer_start": In(1),
            "dec_start": Out(1),
            "dec_busy": In(1),
            "words": Out(stream.Signature(data.StructLayout({"data": word_width,
                                                             "last": 1}))),
            "r_addr": Out(g.ce), "r_en": Out(1), "r_data": In(word_width),
            "reads": Out(1), "idle": Out(1),
        })

    def elaborate(self, platform):
        cfg, d = self.config, self.desc
        g = geometry(cfg)
        m = Module()
        m.submodules.rs = rs = ReadStreamer(g.ce, self.word_width)
        m.d.comb += [self.r_addr.eq(rs.r_addr), self.r_en.eq(rs.r_en),
                     rs.r_data.eq(self.r_data), self.reads.eq(rs.count),
                     self.words.valid.eq(rs.resp.valid),
                     self.words.payload.data.eq(rs.resp.payload.data),
                     self.words.payload.last.eq(rs.resp.payload.tag),
                     rs.resp.ready.eq(self.words.ready)]
        idx = Signal(g.ce + 1)
        tile = Signal(g.dim)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.idle.eq(~self.layer_start)
                # A layer starts only after the previous one was fed (or a flush).
                with m.If(self.layer_start):
                    m.d.sync += tile.eq(0)
                    m.next = "START"
            with m.State("START"):
                # The decoder takes no word in its start cycle, but the read issued now
                # arrives two cycles later.
                m.d.comb += [self.dec_start.eq(1), rs.req.valid.eq(1),
                             rs.req.payload.addr.eq(d.CE_BASE),
                             rs.req.payload.tag.eq(d.CE_WORDS == 1)]
                m.d.sync += idx.eq(rs.req.ready)
                with m.If(rs.req.ready & (d.CE_WORDS == 1)):
                    m.next = "WAIT"
                with m.Else():
                    m.next = "ISSUE"
            with m.State("ISSUE"):
                m.d.comb += [rs.req.valid.eq(1), rs.req.payload.addr.eq(d.CE_BASE + idx),
                             rs.req.payload.tag.eq(idx + 1 == d.CE_WORDS)]
                with m.If(rs.req.ready):
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(idx + 1 == d.CE_WORDS):
                        m.next = "WAIT"
            with m.State("WAIT"):
                # The decoder is busy from the cycle after its start until it has
                # decoded the final slot (its last row may still sit in its output).
                with m.If(~self.dec_busy & ~rs.resp.valid):
                    with m.If(tile + 1 == d.N_TILES):
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += tile.eq(tile + 1)
                        m.next = "START"
        return m


def basis_request_layout(config: SDConfig) -> data.StructLayout:
    """A basis load request: address of lane 0's word of the (group, block) to load."""
    return data.StructLayout({"addr": unsigned(geometry(config).basis + 1)})


class BasisLoader(wiring.Component):
    """Loads the ``lanes`` basis words of each requested ``(group, block)`` in order.

    Attributes
    ----------
    requests : In(stream.Signature(basis_request_layout(config)))
    basis : Out(stream.Signature(basis_word_layout(config)))
        To `BasisArray.basis` (it holds ``ready`` low while its shadow bank is full).
    r_addr, r_en : Out; r_data : In
    reads : Out(1)
    """

    def __init__(self, config: SDConfig):
        self.config = config
        g = geometry(config)
        super().__init__({
            "requests": In(stream.Signature(basis_request_layout(config))),
            "basis": Out(stream.Signature(basis_word_layout(config))),
            "r_addr": Out(g.basis), "r_en": Out(1), "r_data": In(config.basis_word_bits),
            "reads": Out(1),
        })

    def elaborate(self, platform):
        cfg = self.config
        g = geometry(cfg)
        L = cfg.lanes
        m = Module()
        m.submodules.rs = rs = ReadStreamer(g.basis, cfg.basis_word_bits,
                                            unsigned(cfg.lane_bits))
        m.d.comb += [self.r_addr.eq(rs.r_addr), self.r_en.eq(rs.r_en),
                     rs.r_data.eq(self.r_data), self.reads.eq(rs.count),
                     self.basis.valid.eq(rs.resp.valid),
                     self.basis.payload.data.eq(rs.resp.payload.data),
                     self.basis.payload.lane.eq(rs.resp.payload.tag),
                     rs.resp.ready.eq(self.basis.ready)]
        lane = Signal(range(L + 1))
        m.d.comb += [rs.req.valid.eq(self.requests.valid),
                     rs.req.payload.addr.eq(self.requests.payload.addr + lane),
                     rs.req.payload.tag.eq(lane)]
        with m.If(self.requests.valid & rs.req.ready):
            with m.If(lane == L - 1):
                m.d.sync += lane.eq(0)
                m.d.comb += self.requests.ready.eq(1)
            with m.Else():
                m.d.sync += lane.eq(lane + 1)
        return m


class QuantLoader(wiring.Component):
    """One quant bundle (``lanes`` channels) per group per tile, in processing order.

    Attributes
    ----------
    desc, layer_start : In
    bundles : Out(stream.Signature(quant_layout(config)))
        ``relu`` from the descriptor's flags; channels ``>= COUT`` are zero.
    r_addr, r_en : Out; r_data : In
    reads : Out(1)
    idle : Out(1)
        Every bundle of the layer is formed (the last may still wait on ``bundles``).
    """

    def __init__(self, config: SDConfig):
        self.config = config
        g = geometry(config)
        super().__init__({
            "desc": In(descriptor_layout(config)),
            "layer_start": In(1),
            "bundles": Out(stream.Signature(quant_layout(config))),
            "r_addr": Out(g.quant), "r_en": Out(1), "r_data": In(config.quant_word_bits),
            "reads": Out(1), "idle": Out(1),
        })

    def elaborate(self, platform):
        cfg, d = self.config, self.desc
        g = geometry(cfg)
        L = cfg.lanes
        m = Module()
        # Each word carries its lane and whether it is the bundle's final read.
        tag = data.StructLayout({"lane": unsigned(cfg.lane_bits), "last": 1})
        m.submodules.rs = rs = ReadStreamer(g.quant, cfg.quant_word_bits, tag)
        m.d.comb += [self.r_addr.eq(rs.r_addr), self.r_en.eq(rs.r_en),
                     rs.r_data.eq(self.r_data), self.reads.eq(rs.count)]
        active = Signal()
        group = Signal(cfg.group_bits)
        tile = Signal(g.dim)
        lane = Signal(range(L + 1))
        chan = Signal(range(cfg.quant_depth + L + 1))      # group * lanes + lane
        # Issue side: the channels < COUT of one bundle (every group has at least one:
        # N_GROUPS = ceil(COUT / lanes)); the lanes above are zero-filled.  The next
        # bundle is issued once this one has moved to `bundles`.
        pending = Signal()                      # issue of this bundle finished
        zero_from = Signal(range(L + 1))        # first lane that is zero-filled
        last_word = Signal()
        m.d.comb += [last_word.eq((lane == L - 1) | (chan + 1 >= d.COUT)),
                     rs.req.valid.eq(active & ~pending),
                     rs.req.payload.addr.eq(d.QUANT_BASE + chan),
                     rs.req.payload.tag.lane.eq(lane),
                     rs.req.payload.tag.last.eq(last_word)]
        with m.If(rs.req.valid & rs.req.ready):
            with m.If(last_word):
                m.d.sync += [lane.eq(0), pending.eq(1), zero_from.eq(lane + 1)]
                with m.If(group + 1 == d.N_GROUPS):
                    m.d.sync += [group.eq(0), chan.eq(0)]
                    with m.If(tile + 1 == d.N_TILES):
                        m.d.sync += active.eq(0)
                    with m.Else():
                        m.d.sync += tile.eq(tile + 1)
                with m.Else():
                    m.d.sync += [group.eq(group + 1), chan.eq(chan + 1)]
            with m.Else():
                m.d.sync += [lane.eq(lane + 1), chan.eq(chan + 1)]

        # Collect side: every enable below is a function of registers only (the
        # streamer's outputs are flip-flops), so the wide bundle registers never wait
        # on the sequencer's ready: a full bundle moves to `bundles` in the cycle after
        # its final word, once `bundles` is empty.
        bundle = Signal(data.ArrayLayout(lane_quant_layout(cfg), L))
        full = Signal()                         # every read lane of `bundle` arrived
        resp, out = rs.resp, self.bundles
        m.d.comb += resp.ready.eq(1)     # only words of the pending bundle are in flight
        for l in range(L):
            with m.If(resp.valid & (resp.payload.tag.lane == l)):
                m.d.sync += bundle[l].as_value().eq(resp.payload.data)
        with m.If(resp.valid & resp.payload.tag.last):
            m.d.sync += full.eq(1)
        with m.If(out.valid & out.ready):
            m.d.sync += out.valid.eq(0)
        with m.If(full & ~out.valid):
            m.d.sync += [out.valid.eq(1), out.payload.relu.eq((d.FLAGS & FLAG_RELU) != 0),
                         full.eq(0), pending.eq(0)]
            for l in range(L):
                m.d.sync += out.payload.lanes[l].as_value().eq(
                    Mux(l < zero_from, bundle[l].as_value(), 0))

        m.d.comb += self.idle.eq(~active & ~pending & ~self.layer_start)
        # The previous layer's last bundle may still wait in `out`: it is kept.
        with m.If(self.layer_start):
            m.d.sync += [active.eq(1), group.eq(0), tile.eq(0), lane.eq(0), chan.eq(0),
                         full.eq(0), pending.eq(0)]
        return m

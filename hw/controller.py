"""Layer controller: runs a list of layer descriptors from one start, no host in the loop.

The host writes one descriptor per layer into the descriptor RAM (``hw/descriptor.py``),
sets the number of layers and pulses ``start``.  The controller then, per layer:

1. has the descriptor in its shadow registers (the first one is fetched after ``start``,
   every later one is prefetched while the previous layer runs, so a layer change costs
   no descriptor fetch);
2. hands it to the datapath's *weight side* (``desc_w``, ``w_start``: weight feed,
   decoder, basis and quant loaders) as soon as that side has delivered everything of
   the previous layer (``w_idle``) — so the next layer's weights are fetched, decoded and
   its first basis loaded while the previous layer still drains;
3. hands it to the *activation side* (``desc_a``, ``a_start``: window sequencer,
   writer) when the result writer reports the previous layer done (``layer_done``; the
   next layer reads what it wrote), and records the layer's cycle count.

Activation buffers are ping-ponged by the descriptors themselves (each names its input
and output bank addresses), so the next layer reads what the previous one wrote.

Timing: every wide register bank (the two descriptors, ``layer_cycles``, ``err_count``,
the descriptor shadow) loads under a registered strobe or one-hot enable, never under
the decoded state or a datapath handshake: the state machine decides in one cycle and
the load happens in the next (one cycle per layer start), and the descriptor RAM's read
data is registered before it reaches the shadow.  ``progress`` and the watchdog compare
are registered too, so a watchdog error comes two cycles after the limit is reached.

Errors end the run: a decoder error (the `DecodeError` code), a result out of order
(`CtrlError.WRITER_SYNC`), a descriptor the datapath cannot run (`BAD_DESCRIPTOR`),
no progress for ``watchdog`` cycles (`WATCHDOG`).  The controller then pulses ``flush``
(a synchronous reset of every datapath block; memories keep their contents), sets the
sticky ``error`` with its code and layer, counts it in ``err_count`` and goes idle, so
the host can reload and start again.  ``abort`` does the same without flagging an error.
"""

from __future__ import annotations

import enum

from amaranth import Cat, Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.config import SDConfig
from hw.descriptor import DESC_SLOT_WORDS, FIELDS, descriptor_layout
from hw.memories import addr_bits

__all__ = ["LayerController", "CtrlError", "DEFAULT_MAX_LAYERS", "DEFAULT_WATCHDOG"]

DEFAULT_MAX_LAYERS = 16
DEFAULT_WATCHDOG = 1 << 16


class CtrlError(enum.IntEnum):
    """Controller error codes; 1 ... 15 are the decoder's `DecodeError` codes."""

    NONE = 0
    WRITER_SYNC = 0x10      #: a result arrived for an unexpected position
    BAD_DESCRIPTOR = 0x11   #: N_GROUPS, N_ROWS, TILE or N_TILES is zero
    WATCHDOG = 0x12         #: no datapath progress for WATCHDOG cycles
    NO_LAYERS = 0x13        #: start with N_LAYERS == 0 or > max_layers


class LayerController(wiring.Component):
    """Descriptor fetch, layer sequencing, cycle counting and error handling.

    Parameters
    ----------
    config : SDConfig
    max_layers : int
        Descriptor slots (``DESC_SLOT_WORDS`` words each in the descriptor RAM).

    Attributes
    ----------
    start, abort : In(1)
        Host pulses.
    n_layers : In(8)
    watchdog : In(32)
        Cycles without datapath progress before `CtrlError.WATCHDOG` (0: off).
    desc_r_addr, desc_r_en : Out; desc_r_data : In(32)
        Read port of the descriptor RAM (the controller has priority over the host).
    desc_w, desc_a : Out(descriptor_layout(config))
        Descriptors of the weight side and of the activation side.
    w_start, a_start : Out(1)
        Pulses in the cycle the corresponding descriptor is new.
    w_idle : In(1)
        The weight side has delivered its layer.
    layer_done, progress : In(1)
        From the result writer; any datapath progress (for the watchdog).
    dp_error : In(1); dp_error_code : In(8)
    flush : Out(1)
        Synchronous reset pulse for the datapath.
    busy, done, error : Out(1)
        ``done`` / ``error`` are sticky until the next ``start`` or ``abort``.
    error_code, error_layer, layer : Out(8)
    cycles : Out(64)
        Cycles of the current / last run (from ``start`` to ``done``).
    layer_cycles : Out(ArrayLayout(32, max_layers))
    err_count : Out(32)
    """

    def __init__(self, config: SDConfig, max_layers: int = DEFAULT_MAX_LAYERS):
        if not 1 <= max_layers <= 255:
            raise ValueError(f"max_layers must be in [1, 255], got {max_layers!r}")
        self.config = config
        self.max_layers = max_layers
        from amaranth.lib import data
        super().__init__({
            "start": In(1), "abort": In(1), "n_layers": In(8), "watchdog": In(32),
            "desc_r_addr": Out(addr_bits(max_layers * DESC_SLOT_WORDS)),
            "desc_r_en": Out(1), "desc_r_data": In(32),
            "desc_w": Out(descriptor_layout(config)), "w_start": Out(1), "w_idle": In(1),
            "desc_a": Out(descriptor_layout(config)), "a_start": Out(1),
            "layer_done": In(1), "progress": In(1),
            "dp_error": In(1), "dp_error_code": In(8),
            "flush": Out(1),
            "busy": Out(1), "done": Out(1), "error": Out(1),
            "error_code": Out(8), "error_layer": Out(8), "layer": Out(8),
            "cycles": Out(64),
            "layer_cycles": Out(data.ArrayLayout(32, max_layers)),
            "err_count": Out(32),
        })

    def elaborate(self, platform):
        cfg = self.config
        m = Module()
        layout = descriptor_layout(cfg)
        shadow = Signal(layout)
        n_fields = len(FIELDS)

        # ---- descriptor prefetch engine: one RAM word per cycle into the shadow --------
        # The RAM's read data (a block RAM output, late in the cycle) is registered
        # before it is written into the shadow, and the field it belongs to travels as a
        # registered one-hot enable: each shadow field loads a register under a register.
        pf_busy = Signal()
        pf_start = Signal()
        pf_layer = Signal(8)
        pf_idx = Signal(range(n_fields + 1))
        rd_oh = Signal(n_fields)              # field of the word on desc_r_data
        wr_oh = Signal(n_fields)              # field of the word in wr_data
        rd_v, wr_v = Signal(), Signal()       # a word on desc_r_data / in wr_data
        wr_data = Signal(32)
        m.d.comb += [self.desc_r_addr.eq(pf_layer * DESC_SLOT_WORDS + pf_idx),
                     self.desc_r_en.eq(pf_busy & (pf_idx < n_fields))]
        m.d.sync += [rd_oh.eq(Cat(*[self.desc_r_en & (pf_idx == i)
                                    for i in range(n_fields)])),
                     wr_oh.eq(rd_oh), wr_data.eq(self.desc_r_data),
                     rd_v.eq(self.desc_r_en), wr_v.eq(rd_v)]
        with m.If(pf_busy):
            with m.If(pf_idx < n_fields):
                m.d.sync += pf_idx.eq(pf_idx + 1)
            with m.Elif(~rd_v & ~wr_v):
                m.d.sync += pf_busy.eq(0)
        for i, (name, _, _) in enumerate(FIELDS):
            field = getattr(shadow, name)
            with m.If(wr_oh[i]):
                m.d.sync += field.eq(wr_data[:len(Value.cast(field))])
        with m.If(pf_start):
            m.d.sync += [pf_busy.eq(1), pf_idx.eq(0)]
        # Checked one cycle after the shadow changes: the fetch ends (pf_busy low) at
        # least a cycle after its last write.
        bad_desc = Signal()
        m.d.sync += bad_desc.eq((shadow.N_GROUPS == 0) | (shadow.N_ROWS == 0)
                                | (shadow.TILE == 0) | (shadow.N_TILES == 0)
                                | (shadow.LAST_TILE == 0))

        # ---- registered strobes: every wide load is enabled by a flip-flop ------------
        # The run state machine decides in one cycle, the descriptors (hundreds of
        # flip-flops), the layer's cycle count and the counters change in the next.
        ld_w = Signal()          # desc_w <- shadow, w_start
        ld_a_next = Signal()     # ld_a_w in the next cycle (after a launch's ld_w)
        ld_a_w = Signal()        # desc_a <- desc_w, a_start
        rec = Signal()           # layer_cycles[rec_layer] <- lc
        lc = Signal(32)          # cycles of the running layer
        rec_layer = Signal(8)
        err_inc = Signal()
        # desc_a is only ever loaded from desc_w (a launch loads desc_w first), so
        # neither descriptor has a multiplexer in front of it.
        m.d.sync += [ld_w.eq(0), ld_a_next.eq(0), ld_a_w.eq(ld_a_next), rec.eq(0),
                     err_inc.eq(0), self.flush.eq(0)]
        m.d.sync += [self.w_start.eq(ld_w), self.a_start.eq(ld_a_w)]
        with m.If(ld_w):
            m.d.sync += self.desc_w.eq(shadow)
        with m.If(ld_a_w):
            m.d.sync += self.desc_a.eq(self.desc_w)
        with m.If(rec):
            with m.Switch(rec_layer):
                for i in range(self.max_layers):
                    with m.Case(i):
                        m.d.sync += self.layer_cycles[i].eq(lc)
        with m.If(err_inc):
            m.d.sync += self.err_count.eq(self.err_count + 1)

        # ---- run state machine -------------------------------------------------------------
        wd = Signal(32)                       # cycles since the last progress
        progress = Signal()                   # registered: the datapath's is a deep path
        wd_hit = Signal()                     # registered watchdog compare
        w_layer = Signal(8)          # layer the weight side works on
        last_layer = Signal()        # layer + 1 == n_layers
        m.d.sync += [progress.eq(self.progress),
                     wd_hit.eq((self.watchdog != 0) & (wd >= self.watchdog))]

        def fail(code):
            # Decoder errors (codes below 0x10) belong to the weight side's layer.
            m.d.sync += [self.error.eq(1), self.error_code.eq(code),
                         self.error_layer.eq(Mux(code < 0x10, w_layer, self.layer)),
                         self.flush.eq(1), self.busy.eq(0), err_inc.eq(1),
                         ld_a_w.eq(0)]
            # (a pending ld_w / ld_a_w strobe starts its side in the flush cycle, so
            # the flush cancels it; a launch's ld_a_w due after the flush is dropped here)
            m.next = "IDLE"

        # lc counts the cycles of the running layer from its a_start (0 there).
        with m.If(self.busy):
            m.d.sync += [self.cycles.eq(self.cycles + 1),
                         lc.eq(Mux(ld_a_w, 0, lc + 1))]
            with m.If(progress):
                m.d.sync += wd.eq(0)
            with m.Else():
                m.d.sync += wd.eq(wd + 1)

        def prefetch(layer):
            with m.If(layer < self.n_layers):
                m.d.sync += pf_layer.eq(layer)
                m.d.comb += pf_start.eq(1)

        def on_abort():
            m.d.sync += [self.busy.eq(0), self.done.eq(0), self.error.eq(0),
                         self.error_code.eq(0), self.flush.eq(1), pf_busy.eq(0),
                         ld_w.eq(0), ld_a_next.eq(0), ld_a_w.eq(0)]
            m.next = "IDLE"

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.abort):
                    on_abort()
                with m.Elif(self.start):
                    m.d.sync += [self.done.eq(0), self.error.eq(0), self.error_code.eq(0),
                                 self.error_layer.eq(0), self.layer.eq(0),
                                 last_layer.eq(self.n_layers == 1),
                                 self.cycles.eq(0), wd.eq(0)]
                    with m.If((self.n_layers == 0) | (self.n_layers > self.max_layers)):
                        fail(CtrlError.NO_LAYERS)
                    with m.Else():
                        m.d.sync += [self.busy.eq(1), pf_layer.eq(0)]
                        m.d.comb += pf_start.eq(1)
                        m.next = "FETCH"
            with m.State("FETCH"):
                with m.If(self.abort):
                    on_abort()
                with m.Elif(~pf_busy):
                    m.next = "LAUNCH"
            with m.State("LAUNCH"):
                # both sides start the layer (first layer, or the weight side was late)
                with m.If(self.abort):
                    on_abort()
                with m.Elif(bad_desc):
                    fail(CtrlError.BAD_DESCRIPTOR)
                with m.Else():
                    m.d.sync += [ld_w.eq(1), ld_a_next.eq(1), w_layer.eq(self.layer),
                                 wd.eq(0), wd_hit.eq(0)]
                    prefetch(self.layer + 1)
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(self.abort):
                    on_abort()
                with m.Elif(self.dp_error):
                    fail(self.dp_error_code)
                with m.Elif(wd_hit):
                    fail(CtrlError.WATCHDOG)
                with m.Elif(self.layer_done):
                    m.d.sync += [rec.eq(1), rec_layer.eq(self.layer)]
                    with m.If(last_layer):
                        m.d.sync += [self.busy.eq(0), self.done.eq(1)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [self.layer.eq(self.layer + 1),
                                     last_layer.eq(self.layer + 2 == self.n_layers)]
                        with m.If(w_layer == self.layer + 1):
                            # the weight side is already on the next layer
                            m.d.sync += ld_a_w.eq(1)
                        with m.Else():
                            m.next = "FETCH"
                with m.Elif((w_layer == self.layer) & ~last_layer & self.w_idle
                            & ~ld_w & ~self.w_start & ~pf_busy & ~bad_desc):
                    # weight side done with this layer: start it on the next one
                    m.d.sync += [ld_w.eq(1), w_layer.eq(self.layer + 1)]
                    prefetch(self.layer + 2)
        return m

"""Basis-multiply array: rebuilds ``lanes x S`` weights per cycle by shifts and adds.

For a decoded coefficient row ``Ce[l, r, :]`` of lane ``l`` the rebuilt integer weights
are (``docs/format.md``)::

    w[l, i] = sum_j sum_t (-1)**sign[l, j, t] * (B[l, j, i] << shift[l, j, t])

Every term is `hw.shifter.ones_term` built stage by stage (the sign as a one's
complement folded into a logarithmic shifter, the zero code gated once) and the
``S * terms`` terms of a weight plus their ``+1`` carries are summed by levels of
`hw.shifter.carry_level`, whose adders absorb the carries.  There is no multiplier and no
per-term negation; a register follows every mux and adder level.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import SDConfig
from hw.layouts import basis_word_layout, decoded_row_layout, row_tag_fields, weights_row_layout
from hw.shifter import (carry_level, carry_levels, level_reach, ones_flip, shift_level,
                        shift_levels)

__all__ = ["BasisArray", "adder_tree"]


def adder_tree(values):
    """Sum ``values`` pairwise (a balanced tree of adders; Amaranth widens every sum)."""
    values = list(values)
    if not values:
        raise ValueError("adder_tree needs at least one value")
    while len(values) > 1:
        nxt = []
        for a, b in zip(values[0::2], values[1::2]):
            nxt.append(a + b)
        if len(values) % 2:
            nxt.append(values[-1])
        values = nxt
    return values[0]


class BasisArray(wiring.Component):
    """Per-lane ``S x S`` basis (shadow + current registers) and the shift-and-add rebuild.

    Parameters
    ----------
    config : SDConfig
        Supplies ``lanes``, ``basis_size`` (``S``), ``terms``, ``basis_bits`` and the
        shift widths.

    Attributes
    ----------
    basis : In(stream.Signature(basis_word_layout(config)))
        Basis words for the *shadow* registers, one per lane (``lane``, ``data``: entry
        ``B[j][i]`` at bit ``(j * S + i) * basis_bits``).  The shadow bank counts as full
        once the word of lane ``lanes - 1`` is written (lanes are written in order
        ``0 ... lanes - 1``); ``basis.ready`` (a register) is low while it is full, up to
        and including the cycle in which a row copies it into the current basis.
    rows : In(stream.Signature(decoded_row_layout(config)))
        Decoded coefficient rows.  A row with ``new_block`` copies the shadow bank into
        the *current* basis (the shadow is then free for the next block); such a row
        waits in the input buffer until the shadow bank is full.  Rows without
        ``new_block`` use the current basis.
    weights : Out(stream.Signature(weights_row_layout(config)))
        The row's tag fields unchanged plus ``weights[l][i]``, signed
        ``rebuilt_weight_bits``, exact.

    Notes
    -----
    Latency `latency` (config) cycles, 7 for the default preset: a row transferred on
    ``rows`` in cycle ``n`` is presented on ``weights`` from cycle ``n + latency``.
    A two-slot input buffer takes the row (``rows.ready`` is a register: it is low only
    while both slots are full), so the take, the bank swap and the enables of the
    ``current`` bank decode flip-flops, not the row source's read data.  Stage 0
    registers the row taken from the buffer and, on ``new_block``, copies shadow to
    current, so the shifters read only registers (no bank select or handshake in front
    of them); then one stage per shifter mux level (3 for ``max_shift`` 4 ... 7) and one
    per adder-tree level (2 for ``S * terms == 3``), the last of which is the output
    register.  Throughput one row per cycle: all stages advance together whenever the
    output register is empty or being read; a row with ``new_block`` waits in the buffer
    until the shadow bank is full.  A bank swap costs no bubble if the shadow bank was
    loaded in time: with one basis word per cycle that holds whenever every block has
    more than ``lanes`` rows.  The copy happens on the clock edge that takes the row, so
    the shadow bank takes the next block's first word from the cycle after the swap on.
    """


    def __init__(self, config: SDConfig):
        if not isinstance(config, SDConfig):
            raise TypeError(f"config must be an SDConfig, got {type(config).__name__}: "
                            f"{config!r}")
        self.config = config
        super().__init__({
            "basis": In(stream.Signature(basis_word_layout(config))),
            "rows": In(stream.Signature(decoded_row_layout(config))),
            "weights": Out(stream.Signature(weights_row_layout(config))),
        })

    def elaborate(self, platform):
        cfg = self.config
        S, L, T = cfg.basis_size, cfg.lanes, cfg.terms
        n_terms = S * T
        bb = cfg.basis_bits
        m = Module()

        # --- basis registers ------------------------------------------------------------
        # `shadow` takes the words of the next block; a row with `new_block` copies it
        # into `current`, which the shifters read.  The shifters therefore never see a
        # bank select, and the row that swaps is registered first (stage 0), so the copy
        # and that row reach the shifters together.
        entry = data.ArrayLayout(data.ArrayLayout(signed(bb), S), S)        # [j][i]
        shadow = [Signal(entry, name=f"shadow_l{l}", reset_less=True) for l in range(L)]
        current = [Signal(entry, name=f"current_l{l}") for l in range(L)]
        shadow_full = Signal()

        # --- input buffer: two registered slots ---------------------------------------
        # A row is taken into one of two slots whenever one is free (`rows.ready` is a
        # register), so the swap decision below (the row's `new_block`, the shadow
        # state, `advance`) reads flip-flops only, not the row source's read data; the
        # enable of the `current` bank (all its bits) stays a short function.
        mem = [Signal(decoded_row_layout(cfg), name=f"in{k}") for k in range(2)]
        wptr, rptr = Signal(), Signal()
        count = Signal(range(3))
        nonempty, full = Signal(), Signal()       # registered views of `count`
        push = Signal()
        m.d.comb += [self.rows.ready.eq(~full), push.eq(self.rows.valid & ~full)]
        for k in range(2):
            with m.If(push & (wptr == k)):
                m.d.sync += mem[k].eq(self.rows.payload)
        with m.If(push):
            m.d.sync += wptr.eq(~wptr)
        row = Signal(decoded_row_layout(cfg))
        m.d.comb += row.eq(Mux(rptr, mem[1], mem[0]))

        # --- pipeline control: every stage advances together, stalled only by a full
        # output register (so the take needs no per-stage bookkeeping) -----------------
        advance = Signal()
        m.d.comb += advance.eq(~self.weights.valid | self.weights.ready)
        take = Signal()
        swap = Signal()
        m.d.comb += [
            take.eq(nonempty & advance & (~row.new_block | shadow_full)),
            swap.eq(take & row.new_block),
        ]
        nxt = Signal(range(3))
        m.d.comb += nxt.eq(count + push - take)
        m.d.sync += [count.eq(nxt), nonempty.eq(nxt != 0), full.eq(nxt == 2)]
        with m.If(take):
            m.d.sync += rptr.eq(~rptr)

        # --- shadow fill ------------------------------------------------------------------
        # `basis.ready` is the register `~shadow_full`: the shadow's enables (all its
        # bits) are then a gate or two on flip-flops, never the row handshake.  The swap
        # empties the shadow, so the next block's first word is taken from the cycle
        # after the swap on.
        # `shadow_free` is an inverted copy of `shadow_full` (Yosys keeps it apart): it
        # serves the loader's ready and the shadow enables, so these do not share the
        # fanout of `shadow_full` in the take / swap logic.
        shadow_free = Signal(init=1)
        write = Signal()
        filled = Signal()
        m.d.comb += [
            self.basis.ready.eq(shadow_free),
            write.eq(self.basis.valid & shadow_free),
            filled.eq(write & (self.basis.payload.lane == L - 1)),
        ]
        for l in range(L):
            with m.If(write & (self.basis.payload.lane == l)):
                m.d.sync += shadow[l].as_value().eq(self.basis.payload.data)
        with m.If(swap):
            m.d.sync += [current[l].eq(shadow[l]) for l in range(L)]
            m.d.sync += [shadow_full.eq(0), shadow_free.eq(1)]
        with m.Elif(filled):
            m.d.sync += [shadow_full.eq(1), shadow_free.eq(0)]

        # --- stage 0: the taken row -----------------------------------------------------
        # Registers load on `advance` whether or not a row is taken: the valid bits
        # say what counts, and a flip-flop enable is free where a data mux is not.
        row0 = Signal(decoded_row_layout(cfg))
        valid0 = Signal()
        with m.If(advance):
            m.d.sync += [valid0.eq(take), row0.eq(row)]

        # --- shifter stages: one mux level each ---------------------------------------
        # A negative term is formed as ~(b << k) (`ones_flip`, then ones shifted in) and
        # its +1 kept as a carry bit per lane and term, which the adder stages absorb.
        # One register after every mux level and every adder level: no stage is more
        # than one LUT level or one carry chain deep, so the block is fast and Yosys/ABC
        # maps the shifters for area (with the three mux levels in one stage it maps
        # them for delay, at about 70 % more LUTs).  The enable gates the last level.
        tag_layout = data.StructLayout(row_tag_fields(cfg))
        code_layout = data.StructLayout({"shift": cfg.shift_code_bits, "enable": 1,
                                         "carry": 1})
        tag, valid = row0, valid0
        codes = [[{"shift": row0.shift[l][k], "enable": row0.mask[l][k],
                   "carry": row0.sign[l][k] & row0.mask[l][k]} for k in range(n_terms)]
                 for l in range(L)]
        vals = [[[ones_flip(current[l][k // T][i], codes[l][k]["carry"])
                  for k in range(n_terms)] for i in range(S)] for l in range(L)]
        levels = list(zip(shift_levels(cfg.max_shift), level_reach(cfg.max_shift)))
        for n_level, (b, reach) in enumerate(levels or [(None, 0)]):
            last = n_level == max(0, len(levels) - 1)
            stage = f"s{n_level}"
            nvals = [[[Signal(signed(bb + reach), name=f"{stage}_l{l}_i{i}_k{k}")
                       for k in range(n_terms)] for i in range(S)] for l in range(L)]
            ncodes = [[Signal(code_layout, name=f"{stage}_code_l{l}_k{k}")
                       for k in range(n_terms)] for l in range(L)]
            tag, valid = self._stage(m, advance, tag, valid, tag_layout, stage)
            with m.If(advance):
                for l in range(L):
                    for k in range(n_terms):
                        c = codes[l][k]
                        m.d.sync += [ncodes[l][k].shift.eq(c["shift"]),
                                     ncodes[l][k].enable.eq(c["enable"]),
                                     ncodes[l][k].carry.eq(c["carry"])]
                        for i in range(S):
                            v = vals[l][i][k]
                            if b is not None:
                                v = shift_level(v, c["shift"][b], c["carry"], b, reach, bb)
                            if last:
                                v = Mux(c["enable"], v, 0)
                            m.d.sync += nvals[l][i][k].eq(v)
            vals = nvals
            codes = [[{"shift": c.shift, "enable": c.enable, "carry": c.carry}
                      for c in lane] for lane in ncodes]

        # --- adder stages: one tree level each, the carries absorbed -------------------
        items = vals                                    # [l][i] -> list of values
        carries = [[c["carry"] for c in lane] for lane in codes]   # [l] -> shared by i
        n_level = 0
        while len(items[0][0]) > 1 or carries[0]:
            stage = f"a{n_level}"
            tag, valid = self._stage(m, advance, tag, valid, tag_layout, stage)
            nitems, ncarries = [], []
            for l in range(L):
                lane_items = []
                for i in range(S):
                    if len(items[l][i]) > 1:
                        nxt, left = carry_level(items[l][i], carries[l])
                    else:           # leftover carries (a power-of-two tree): increments
                        nxt, left = [sum(carries[l], items[l][i][0])], []
                    regs = [Signal(signed(len(v)), name=f"{stage}_l{l}_i{i}_{n}")
                            for n, v in enumerate(nxt)]
                    with m.If(advance):
                        m.d.sync += [r.eq(v) for r, v in zip(regs, nxt)]
                    lane_items.append(regs)
                cregs = [Signal(name=f"{stage}_carry_l{l}_{n}") for n in range(len(left))]
                with m.If(advance):
                    m.d.sync += [r.eq(c) for r, c in zip(cregs, left)]
                nitems.append(lane_items)
                ncarries.append(cregs)
            items, carries = nitems, ncarries
            n_level += 1

        # --- output: the last adder stage's registers (held while `advance` is low) ----
        out = self.weights.payload
        m.d.comb += self.weights.valid.eq(valid)
        m.d.comb += [getattr(out, f).eq(getattr(tag, f)) for f in tag_layout.members]
        for l in range(L):
            for i in range(S):
                m.d.comb += out.weights[l][i].eq(items[l][i][0])
        return m

    @staticmethod
    def _stage(m, advance, tag, valid, tag_layout, name):
        """Registers carrying the row's tag and valid bit through one pipeline stage."""
        ntag = Signal(tag_layout, name=f"{name}_tag")
        nvalid = Signal(name=f"{name}_valid")
        with m.If(advance):
            m.d.sync += nvalid.eq(valid)
            m.d.sync += [getattr(ntag, f).eq(getattr(tag, f)) for f in tag_layout.members]
        return ntag, nvalid

    @classmethod
    def latency(cls, config: SDConfig) -> int:
        """Cycles from a row's transfer on ``rows`` to its weights on ``weights``."""
        n_terms = config.basis_size * config.terms
        return (2 + max(1, len(shift_levels(config.max_shift)))
                + carry_levels(n_terms, n_terms))

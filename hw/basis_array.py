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


def _select(values, index):
    """``values[index]`` as a balanced tree of 2:1 muxes on the bits of ``index``
    (indices ``>= len(values)`` never occur); for four values one LUT4 pair and a PFUMX."""
    values = list(values)
    bit = 0
    while len(values) > 1:
        nxt = [Mux(index[bit], b, a) for a, b in zip(values[0::2], values[1::2])]
        if len(values) % 2:
            nxt.append(values[-1])
        values, bit = nxt, bit + 1
    return values[0]


class BasisArray(wiring.Component):
    """Per-lane ``S x S`` basis (shadow + current registers) and the shift-and-add rebuild.

    Parameters
    ----------
    config : SDConfig
        Supplies ``lanes``, ``basis_size`` (``S``), ``terms``, ``basis_bits``, the shift
        widths and ``rebuild_cycles`` (``k``: cycles spent per row).

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
    while both slots are full; one slot when ``rebuild_cycles > 1``), so the take, the
    bank swap and the enables of the ``current`` bank decode flip-flops, not the row
    source's read data.  Stage 0
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

    With ``rebuild_cycles`` ``k > 1`` the array is time-multiplexed: one set of shifters
    and adder trees for ``lanes // k`` lanes.  Stage 0 holds the taken row for ``k``
    cycles and presents lane group ``g`` (lanes ``g * lanes // k ... (g + 1) * lanes //
    k - 1``) in its ``g``-th cycle; a select stage (one mux level on a registered group
    count) copies that group's codes and current basis into the registers the shifters
    read, which adds one cycle of latency.  The last adder level writes one register set
    per group, which together are the output row, so the row (tag fields included) is
    presented whole once its last group is in.  Throughput one row per ``k`` cycles;
    `latency` is ``k`` cycles longer than at full rate (11 for the default preset with
    ``k == 4``).  The next row is taken, and with ``new_block`` the banks are swapped, on
    the edge that moves the previous row's last group into the select stage, so every
    group of a row reads the same bank.  The buffer and shadow rules above are the same.
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
        K = cfg.rebuild_cycles
        P = L // K                      # lanes through the shared shifters per cycle
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
        # With K > 1 one slot suffices (it refills in two cycles, a row takes K), which
        # saves the slot-select mux over the whole row.
        n_slots = 2 if K == 1 else 1
        mem = [Signal(decoded_row_layout(cfg), name=f"in{k}") for k in range(n_slots)]
        wptr, rptr = Signal(), Signal()
        count = Signal(range(n_slots + 1))
        nonempty, full = Signal(), Signal()       # registered views of `count`
        push = Signal()
        m.d.comb += [self.rows.ready.eq(~full), push.eq(self.rows.valid & ~full)]
        row = Signal(decoded_row_layout(cfg))
        if K == 1:
            for k in range(2):
                with m.If(push & (wptr == k)):
                    m.d.sync += mem[k].eq(self.rows.payload)
            with m.If(push):
                m.d.sync += wptr.eq(~wptr)
            m.d.comb += row.eq(Mux(rptr, mem[1], mem[0]))
        else:
            with m.If(push):
                m.d.sync += mem[0].eq(self.rows.payload)
            m.d.comb += row.eq(mem[0])

        # --- pipeline control: every stage advances together, stalled only by a full
        # output register (so the take needs no per-stage bookkeeping) -----------------
        advance = Signal()
        m.d.comb += advance.eq(~self.weights.valid | self.weights.ready)
        take = Signal()
        swap = Signal()
        if K == 1:
            m.d.comb += take.eq(nonempty & advance & (~row.new_block | shadow_full))
        else:
            # Stage 0 holds a row for K cycles; it takes the next one on the edge that
            # moves its last lane group on (`free`, registers only).  The bank swap
            # happens on that edge too, so the previous row's last group still reads
            # the old bank and the new row's first group the new one.
            grp0 = Signal(K, init=1)            # one-hot: lane group stage 0 presents
            gidx0 = Signal(range(K))            # the same as a count: the select mux
            valid0 = Signal()
            free = Signal()
            m.d.comb += [free.eq(~valid0 | grp0[K - 1]),
                         take.eq(nonempty & advance & free & (~row.new_block | shadow_full))]
        m.d.comb += swap.eq(take & row.new_block)
        nxt = Signal(range(n_slots + 1))
        m.d.comb += nxt.eq(count + push - take)
        m.d.sync += [count.eq(nxt), nonempty.eq(nxt != 0), full.eq(nxt == n_slots)]
        if K == 1:
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
        tag_fields = row_tag_fields(cfg)
        if K == 1:
            valid0 = Signal()
            with m.If(advance):
                m.d.sync += [valid0.eq(take), row0.eq(row)]
            tag_layout = data.StructLayout(tag_fields)
            tag, valid = row0, valid0
            codes = [[{"shift": row0.shift[l][k], "enable": row0.mask[l][k],
                       "carry": row0.sign[l][k] & row0.mask[l][k]} for k in range(n_terms)]
                     for l in range(L)]
            basis = current
        else:
            with m.If(advance):
                with m.If(free):
                    m.d.sync += [valid0.eq(take), row0.eq(row), grp0.eq(1), gidx0.eq(0)]
                with m.Else():
                    m.d.sync += [grp0.eq(grp0.rotate_left(1)), gidx0.eq(gidx0 + 1)]
            # --- select stage: lane group `gidx0` of the row and of the current bank
            # into the registers the shared shifters read (one mux level; the group
            # count comes from a register).  The tag carries the group (one-hot) on.
            tag_layout = data.StructLayout({**tag_fields, "grp": K})
            tag = Signal(tag_layout, name="x_tag")
            valid = Signal(name="x_valid")
            code_layout = data.StructLayout({"shift": cfg.shift_code_bits, "enable": 1,
                                             "carry": 1})
            sel_codes = [[Signal(code_layout, name=f"x_code_l{p}_k{k}")
                          for k in range(n_terms)] for p in range(P)]
            basis = [Signal(entry, name=f"x_basis_l{p}", reset_less=True) for p in range(P)]
            with m.If(advance):
                m.d.sync += [valid.eq(valid0), tag.grp.eq(grp0)]
                m.d.sync += [getattr(tag, f).eq(getattr(row0, f)) for f in tag_fields]
                for p in range(P):
                    lanes = [g * P + p for g in range(K)]
                    m.d.sync += basis[p].as_value().eq(
                        _select([current[l].as_value() for l in lanes], gidx0))
                    for k in range(n_terms):
                        shift = _select([row0.shift[l][k] for l in lanes], gidx0)
                        mask = _select([row0.mask[l][k] for l in lanes], gidx0)
                        sign = _select([row0.sign[l][k] for l in lanes], gidx0)
                        m.d.sync += [sel_codes[p][k].shift.eq(shift),
                                     sel_codes[p][k].enable.eq(mask),
                                     sel_codes[p][k].carry.eq(sign & mask)]
            codes = [[{"shift": c.shift, "enable": c.enable, "carry": c.carry}
                      for c in lane] for lane in sel_codes]

        # --- shifter stages: one mux level each ---------------------------------------
        # A negative term is formed as ~(b << k) (`ones_flip`, then ones shifted in) and
        # its +1 kept as a carry bit per lane and term, which the adder stages absorb.
        # One register after every mux level and every adder level: no stage is more
        # than one LUT level or one carry chain deep, so the block is fast and Yosys/ABC
        # maps the shifters for area (with the three mux levels in one stage it maps
        # them for delay, at about 70 % more LUTs).  The enable gates the last level.
        # `P` lanes go through (all lanes when K == 1, one lane group otherwise).
        code_layout = data.StructLayout({"shift": cfg.shift_code_bits, "enable": 1,
                                         "carry": 1})
        vals = [[[ones_flip(basis[l][k // T][i], codes[l][k]["carry"])
                  for k in range(n_terms)] for i in range(S)] for l in range(P)]
        levels = list(zip(shift_levels(cfg.max_shift), level_reach(cfg.max_shift)))
        for n_level, (b, reach) in enumerate(levels or [(None, 0)]):
            last = n_level == max(0, len(levels) - 1)
            stage = f"s{n_level}"
            nvals = [[[Signal(signed(bb + reach), name=f"{stage}_l{l}_i{i}_k{k}")
                       for k in range(n_terms)] for i in range(S)] for l in range(P)]
            ncodes = [[Signal(code_layout, name=f"{stage}_code_l{l}_k{k}")
                       for k in range(n_terms)] for l in range(P)]
            tag, valid = self._stage(m, advance, tag, valid, tag_layout, stage)
            with m.If(advance):
                for l in range(P):
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
        # With K > 1 the last level's registers are the output row itself: one set per
        # lane group, each loaded when its group leaves the tree, so the row is
        # assembled with no extra stage; the row is valid once its last group is in.
        items = vals                                    # [l][i] -> list of values
        carries = [[c["carry"] for c in lane] for lane in codes]   # [l] -> shared by i
        n_levels = carry_levels(n_terms, n_terms)
        for n_level in range(n_levels):
            stage = f"a{n_level}"
            final = K > 1 and n_level == n_levels - 1
            if final:
                loads = [Signal(name=f"{stage}_load_g{g}") for g in range(K)]
                m.d.comb += [ld.eq(advance & valid & tag.grp[g]) for g, ld in enumerate(loads)]
                tag, valid = self._stage(m, advance, tag, valid & tag.grp[K - 1], tag_layout,
                                         stage)
            else:
                tag, valid = self._stage(m, advance, tag, valid, tag_layout, stage)
            nitems, ncarries = [], []
            for l in range(P):
                lane_items = []
                for i in range(S):
                    if len(items[l][i]) > 1:
                        nxt, left = carry_level(items[l][i], carries[l])
                    else:           # leftover carries (a power-of-two tree): increments
                        nxt, left = [sum(carries[l], items[l][i][0])], []
                    if final:
                        assert len(nxt) == 1 and not left
                        regs = [Signal(signed(len(nxt[0])), name=f"{stage}_l{g * P + l}_i{i}")
                                for g in range(K)]
                        for g, r in enumerate(regs):
                            with m.If(loads[g]):
                                m.d.sync += r.eq(nxt[0])
                        lane_items.append(regs)
                        continue
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
        if K > 1:                       # [p][i][g] -> [lane][i] list, lane = g * P + p
            items = [[[items[l % P][i][l // P]] for i in range(S)] for l in range(L)]

        # --- output: the last adder stage's registers (held while `advance` is low) ----
        out = self.weights.payload
        m.d.comb += self.weights.valid.eq(valid)
        m.d.comb += [getattr(out, f).eq(getattr(tag, f)) for f in tag_fields]
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
        """Cycles from a row's transfer on ``rows`` to its weights on ``weights`` when the
        array is idle: for ``rebuild_cycles`` ``k > 1`` the select stage and the ``k - 1``
        cycles of the row's later lane groups come on top of the full-rate pipeline."""
        n_terms = config.basis_size * config.terms
        full_rate = (2 + max(1, len(shift_levels(config.max_shift)))
                     + carry_levels(n_terms, n_terms))
        k = config.rebuild_cycles
        return full_rate if k == 1 else full_rate + k

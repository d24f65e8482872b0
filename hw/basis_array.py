"""Basis-multiply array: rebuilds ``lanes x S`` weights per cycle by shifts and adds.

For a decoded coefficient row ``Ce[l, r, :]`` of lane ``l`` the rebuilt integer weights
are (``docs/format.md``)::

    w[l, i] = sum_j sum_t (-1)**sign[l, j, t] * (B[l, j, i] << shift[l, j, t])

Every term is a `hw.shifter.ones_term` (the sign as a one's complement folded into a
logarithmic shifter, the zero code gated once) and the ``S * terms`` terms of a weight
plus their ``+1`` carries are summed by `hw.shifter.carry_sum`, whose adders absorb the
carries.  There is no multiplier and no per-term negation.
"""

from __future__ import annotations

from amaranth import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import SDConfig
from hw.layouts import basis_word_layout, decoded_row_layout, row_tag_fields, weights_row_layout
from hw.shifter import carry_sum, ones_term

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
        ``0 ... lanes - 1``); ``basis.ready`` is low while it is full, except in the
        cycle a row copies it into the current basis (it takes a word at once).
    rows : In(stream.Signature(decoded_row_layout(config)))
        Decoded coefficient rows.  A row with ``new_block`` copies the shadow bank into
        the *current* basis (the shadow is then free for the next block); such a row
        waits (``rows.ready`` low) until the shadow bank is full.  Rows without
        ``new_block`` use the current basis.
    weights : Out(stream.Signature(weights_row_layout(config)))
        The row's tag fields unchanged plus ``weights[l][i]``, signed
        ``rebuilt_weight_bits``, exact.

    Notes
    -----
    Latency `LATENCY` = 3 cycles: a row transferred on ``rows`` in cycle ``n`` is
    presented on ``weights`` from cycle ``n + 3`` (stage 0 registers the row and, on
    ``new_block``, copies shadow to current; stage 1 the shifted terms; stage 2 their
    sums).  The shifters read only registers, so no bank select or handshake sits in
    front of them (timing).  Throughput one row per cycle: the pipeline advances whenever
    the output register is empty or being read (``rows.ready`` depends combinationally
    on ``weights.ready`` and on ``rows.payload.new_block``; ``basis.ready`` on the row
    handshake).  A bank swap costs no bubble if the shadow bank was loaded in time: with
    one basis word per cycle that holds whenever every block has at least ``lanes``
    rows.  The copy happens on the clock edge that accepts the row, so the shadow bank
    takes the next block's first word from the cycle of the swap on.
    """

    LATENCY = 3

    @classmethod
    def latency(cls, config: SDConfig) -> int:
        """Cycles from a row's transfer on ``rows`` to its weights on ``weights`` (any
        configuration: one shift stage and one adder-tree stage after the row register)."""
        return cls.LATENCY

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
        shadow = [Signal(entry, name=f"shadow_l{l}") for l in range(L)]
        current = [Signal(entry, name=f"current_l{l}") for l in range(L)]
        shadow_full = Signal()

        # --- pipeline control: every stage advances together, stalled only by a full
        # output register (so `rows.ready` needs no per-stage bookkeeping) -------------
        advance = Signal()
        m.d.comb += advance.eq(~self.weights.valid | self.weights.ready)
        row = self.rows.payload
        take = Signal()
        swap = Signal()
        m.d.comb += [
            self.rows.ready.eq(advance & (~row.new_block | shadow_full)),
            take.eq(self.rows.valid & self.rows.ready),
            swap.eq(take & row.new_block),
        ]

        # --- shadow fill ------------------------------------------------------------------
        # The copy into `current` happens on the swap's clock edge, so the shadow may
        # take the next block's first word in that very cycle.
        write = Signal()
        filled = Signal()
        m.d.comb += [
            self.basis.ready.eq(~shadow_full | swap),
            write.eq(self.basis.valid & self.basis.ready),
            filled.eq(write & (self.basis.payload.lane == L - 1)),
        ]
        for l in range(L):
            with m.If(write & (self.basis.payload.lane == l)):
                m.d.sync += shadow[l].as_value().eq(self.basis.payload.data)
        with m.If(swap):
            m.d.sync += [current[l].eq(shadow[l]) for l in range(L)]
            m.d.sync += shadow_full.eq(filled)
        with m.Elif(filled):
            m.d.sync += shadow_full.eq(1)

        # --- stage 0: the accepted row --------------------------------------------------
        # Registers load on `advance` whether or not a transfer is valid: the valid bits
        # say what counts, and a flip-flop enable is free where a data mux is not.
        row0 = Signal(decoded_row_layout(cfg))
        valid0 = Signal()
        with m.If(advance):
            m.d.sync += [valid0.eq(take), row0.eq(row)]

        # --- stage 1: one's-complement terms and their carries ---------------------
        # A negative term is held as ~(b << k) and its +1 as a carry bit, shared by the
        # S terms of the same coefficient (one per lane and term); stage 2 adds the carries
        # inside its adder tree (`carry_sum`).  A term needs basis_bits + max_shift bits.
        tag_layout = data.StructLayout(row_tag_fields(cfg))
        tag1 = Signal(tag_layout)
        valid1 = Signal()
        term_shape = signed(bb + cfg.max_shift)
        terms1 = [[[Signal(term_shape, name=f"term_l{l}_i{i}_k{k}") for k in range(n_terms)]
                   for i in range(S)] for l in range(L)]
        carries1 = [[Signal(name=f"carry_l{l}_k{k}") for k in range(n_terms)]
                    for l in range(L)]
        with m.If(advance):
            m.d.sync += valid1.eq(valid0)
            m.d.sync += [getattr(tag1, f).eq(getattr(row0, f)) for f in tag_layout.members]
            for l in range(L):
                for k in range(n_terms):
                    j = k // T
                    for i in range(S):
                        term, carry = ones_term(current[l][j][i], row0.sign[l][k],
                                                row0.shift[l][k], row0.mask[l][k],
                                                cfg.max_shift)
                        m.d.sync += terms1[l][i][k].eq(term)
                    m.d.sync += carries1[l][k].eq(carry)

        # --- stage 2: sums (output register) -------------------------------------------
        # The whole tree in one stage.  Splitting it (or the shifters) over more stages
        # was measured: the block alone then synthesizes with ~70 % more LUTs, because
        # ABC maps the shifters for delay once they hold the critical path.
        out = self.weights.payload
        with m.If(advance):
            m.d.sync += self.weights.valid.eq(valid1)
            m.d.sync += [getattr(out, f).eq(getattr(tag1, f)) for f in tag_layout.members]
            for l in range(L):
                for i in range(S):
                    m.d.sync += out.weights[l][i].eq(carry_sum(terms1[l][i], carries1[l]))
        return m

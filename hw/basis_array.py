"""Basis-multiply array: rebuilds ``lanes x S`` weights per cycle by shifts and adds.

For a decoded coefficient row ``Ce[l, r, :]`` of lane ``l`` the rebuilt integer weights
are (``docs/format.md``)::

    w[l, i] = sum_j sum_t (-1)**sign[l, j, t] * (B[l, j, i] << shift[l, j, t])

Every term goes through a `Pow2Shift` (barrel shift + conditional negation), and the
``S * terms`` terms of a weight are summed by an adder tree.  There is no multiplier.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import SDConfig
from hw.layouts import basis_word_layout, decoded_row_layout, row_tag_fields, weights_row_layout
from hw.shifter import Pow2Shift

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
    """Per-lane ``S x S`` basis, double-buffered, and the shift-and-add weight rebuild.

    Parameters
    ----------
    config : SDConfig
        Supplies ``lanes``, ``basis_size`` (``S``), ``terms``, ``basis_bits`` and the
        shift widths.

    Attributes
    ----------
    basis : In(stream.Signature(basis_word_layout(config)))
        Basis words for the *shadow* bank, one per lane (``lane``, ``data``: entry
        ``B[j][i]`` at bit ``(j * S + i) * basis_bits``).  The shadow bank counts as full
        once the word of lane ``lanes - 1`` is written (lanes are written in order
        ``0 ... lanes - 1``); ``basis.ready`` is low while it is full, except in the
        cycle a row swaps the banks (the freed bank takes a word at once).
    rows : In(stream.Signature(decoded_row_layout(config)))
        Decoded coefficient rows.  A row with ``new_block`` swaps the shadow bank in
        (it becomes the active bank and the old active bank the new shadow); such a row
        waits (``rows.ready`` low) until the shadow bank is full.  Rows without
        ``new_block`` use the active bank.
    weights : Out(stream.Signature(weights_row_layout(config)))
        The row's tag fields unchanged plus ``weights[l][i]``, signed
        ``rebuilt_weight_bits``, exact.

    Notes
    -----
    Latency `LATENCY` = 2 cycles: a row transferred on ``rows`` in cycle ``n`` is
    presented on ``weights`` from cycle ``n + 2`` (stage 1 registers the shifted terms,
    stage 2 their sums).  Throughput one row per cycle: the pipeline advances whenever
    the output register is empty or being read (``rows.ready`` depends combinationally
    on ``weights.ready`` and on ``rows.payload.new_block``; ``basis.ready`` on the row
    handshake).  A bank swap costs no bubble if the shadow bank was loaded in time: with
    one basis word per cycle that holds whenever every block has at least ``lanes``
    rows.  The basis is read when the row is accepted, so the old active bank is
    refilled from the cycle of the swap on.
    """

    LATENCY = 2

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
        entry = data.ArrayLayout(data.ArrayLayout(signed(cfg.basis_bits), S), S)  # [j][i]
        m = Module()

        # Two banks of L basis words; `active` selects the bank in use.
        banks = [[Signal(entry, name=f"bank{b}_lane{l}") for l in range(L)] for b in range(2)]
        active = Signal()
        shadow_full = Signal()

        # --- pipeline control: global advance, stalled only by a full output --------
        advance = Signal()
        m.d.comb += advance.eq(~self.weights.valid | self.weights.ready)
        row = self.rows.payload
        can_take = Signal()
        m.d.comb += [
            can_take.eq(~row.new_block | shadow_full),
            self.rows.ready.eq(advance & can_take),
        ]
        take = Signal()
        swap = Signal()
        m.d.comb += [take.eq(self.rows.valid & self.rows.ready),
                     swap.eq(take & row.new_block)]

        # --- shadow bank fill ------------------------------------------------------
        # On a swap the old active bank becomes the shadow bank and may take its first
        # word in the same cycle (the swapping row reads the other bank), so a block of
        # `lanes` rows is enough to hide the next bank's load.
        target = Signal()
        write = Signal()
        m.d.comb += [
            self.basis.ready.eq(~shadow_full | swap),
            target.eq(~active ^ swap),
            write.eq(self.basis.valid & self.basis.ready),
        ]
        with m.If(write):
            for b in range(2):
                for l in range(L):
                    with m.If((target == b) & (self.basis.payload.lane == l)):
                        m.d.sync += banks[b][l].as_value().eq(self.basis.payload.data)
        filled = Signal()
        m.d.comb += filled.eq(write & (self.basis.payload.lane == L - 1))
        with m.If(swap):
            m.d.sync += [active.eq(~active), shadow_full.eq(filled)]
        with m.Elif(filled):
            m.d.sync += shadow_full.eq(1)

        # Bank used by the incoming row: the shadow one if it swaps it in.
        sel = Signal()
        m.d.comb += sel.eq(active ^ row.new_block)

        # --- stage 1: shifted terms ---------------------------------------------------
        n_terms = S * T
        term_shape = signed(cfg.shifted_bits)
        tag_layout = data.StructLayout(row_tag_fields(cfg))
        tag1 = Signal(tag_layout)
        valid1 = Signal()
        terms1 = [[[Signal(term_shape, name=f"term_l{l}_i{i}_k{k}") for k in range(n_terms)]
                   for i in range(S)] for l in range(L)]
        with m.If(advance):
            m.d.sync += valid1.eq(take)
            with m.If(take):
                m.d.sync += [getattr(tag1, f).eq(getattr(row, f)) for f in tag_layout.members]
        for l in range(L):
            basis_l = Signal(entry, name=f"basis_sel_l{l}")
            m.d.comb += basis_l.eq(Mux(sel, banks[1][l], banks[0][l]))
            for j in range(S):
                for t in range(T):
                    k = j * T + t
                    for i in range(S):
                        sh = Pow2Shift(cfg)
                        m.submodules[f"shift_l{l}_j{j}_t{t}_i{i}"] = sh
                        m.d.comb += [
                            sh.value.eq(basis_l[j][i]),
                            sh.sign.eq(row.sign[l][k]),
                            sh.shift.eq(row.shift[l][k]),
                            sh.enable.eq(row.mask[l][k]),
                        ]
                        with m.If(advance & take):
                            m.d.sync += terms1[l][i][k].eq(sh.result)

        # --- stage 2: sums (output register) -------------------------------------------
        out = self.weights.payload
        with m.If(advance):
            m.d.sync += self.weights.valid.eq(valid1)
            with m.If(valid1):
                m.d.sync += [getattr(out, f).eq(getattr(tag1, f)) for f in tag_layout.members]
                for l in range(L):
                    for i in range(S):
                        m.d.sync += out.weights[l][i].eq(
                            adder_tree(terms1[l][i]))
        return m

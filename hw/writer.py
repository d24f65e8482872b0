"""Result writer: MAC-lane results into the activation banks, in the next layer's layout.

Results arrive one output position at a time with the ``lanes`` channels of the current
group.  Two layouts (``docs/architecture.md``):

* **feature map** (default): the ``lanes`` values are one bank word — channel group
  ``g``, line ``oy``, column ``ox`` go to bank ``ox % S``, address
  ``OUT_BASE + b*OUT_PITCH + g*OUT_CGP + oy*OUT_WQ + ox // S``.  One write per result,
  so the writer keeps up with the MAC lanes.
* **scatter** (``FLAG_SCATTER``, the layer feeds a fully connected one): channel ``c``
  of position ``p`` is element ``f = c*OUT_HW + p`` of the flattened output (PyTorch
  order), stored as the next layer reads its input — row ``f // S`` is channel
  ``f // S`` of a ``1 x S`` line: bank ``f % S``, address ``OUT_BASE + b*OUT_PITCH +
  (f // S) // lanes``, lane ``(f // S) % lanes``.  One element per cycle.  The writer
  keeps ``f`` as its digits ``(q, l, s)`` with ``f = (q*lanes + l)*S + s`` and steps them
  with mixed-radix adds of host-computed digit steps (``HW_*``, ``GHW_*``), so it needs
  no divider and no multiplier.

Position counters mirror the sequencer's, so the writer needs no address from the MAC
lanes; it checks that the result's accumulator address is the one it expects and raises
``error`` if not (a datapath bug, never expected).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.arith import mixed_add, mixed_layout
from hw.config import SDConfig
from hw.descriptor import FLAG_SCATTER, descriptor_layout, geometry
from hw.layouts import results_layout

__all__ = ["ResultWriter"]


class ResultWriter(wiring.Component):
    """Writes every result of a layer; pulses ``done`` after the final one.

    Parameters
    ----------
    config : SDConfig
    fifo_depth : int
        Results buffered in front of the writer, so the MAC lanes do not wait while a
        scatter layer writes element by element.

    Attributes
    ----------
    desc : In(descriptor_layout(config)); layer_start : In(1)
    results : In(stream.Signature(results_layout(config)))
    wr_addr : Out(ArrayLayout(act bank address, S))
    wr_data : Out(ArrayLayout(lanes * act_bits, S))
    wr_en : Out(ArrayLayout(lanes, S))
        Per bank, one enable bit per lane.
    done : Out(1)
        Pulse in the cycle after the layer's final write.
    error : Out(1)
        Pulse: a result's ``addr`` differed from the expected position.
    writes : Out(1)
        High in a cycle with a write (energy counter).
    fill : Out(range(fifo_depth + 1))
        Results in the FIFO (the datapath issues ops only while it has room for all
        results in flight, see `hw.datapath.LayerDatapath`).
    """

    def __init__(self, config: SDConfig, fifo_depth: int = 32):
        self.config = config
        self.fifo_depth = fifo_depth
        g = geometry(config)
        S, L = config.basis_size, config.lanes
        super().__init__({
            "desc": In(descriptor_layout(config)),
            "layer_start": In(1),
            "results": In(stream.Signature(results_layout(config))),
            "wr_addr": Out(data.ArrayLayout(unsigned(g.act), S)),
            "wr_data": Out(data.ArrayLayout(unsigned(L * config.act_bits), S)),
            "wr_en": Out(data.ArrayLayout(unsigned(L), S)),
            "done": Out(1),
            "error": Out(1),
            "writes": Out(1),
            "fill": Out(range(fifo_depth + 1)),
        })

    def elaborate(self, platform):
        cfg, d = self.config, self.desc
        S, L, ab = cfg.basis_size, cfg.lanes, cfg.act_bits
        g = geometry(cfg)
        m = Module()
        rl = results_layout(cfg)
        m.submodules.buf = buf = fifo.SyncFIFO(width=rl.size, depth=self.fifo_depth)
        # ready is the FIFO's "not full" kept as a flip-flop (equal to buf.w_rdy, a compare
        # of its level): the datapath's overflow check reads it
        notfull = Signal(init=1)
        m.d.comb += [buf.w_data.eq(self.results.payload), buf.w_en.eq(self.results.valid),
                     self.results.ready.eq(notfull)]
        res = Signal(rl)
        m.d.comb += [res.eq(buf.r_data), self.fill.eq(buf.level)]

        a = g.act + 2
        pos = data.StructLayout({
            "b": unsigned(g.dim), "oy": unsigned(g.dim), "ox": unsigned(g.dim),
            "oxm": unsigned(g.s_bits),
            # ox / oy is the line's / item's last (ox + 1 >= OUT_W, oy + 1 >= OUT_H), kept
            # as flags so no compare sits between the counters and their next values
            "oxl": unsigned(1), "oyl": unsigned(1),
            # bank-word addresses kept as running sums, so a write adds one term:
            # item OUT_BASE + b*OUT_PITCH, its line + oy*OUT_WQ, the word + ox // S
            "iw": unsigned(a + g.dim), "lw": unsigned(a + g.dim), "wbase": unsigned(a + g.dim),
        })
        cur, snap, nxt = Signal(pos, name="cur"), Signal(pos, name="snap"), Signal(pos, name="nxt")
        w1, h1 = Signal(name="w1"), Signal(name="h1")   # OUT_W <= 1, OUT_H <= 1 (set at layer start)
        t = Signal(range(cfg.acc_depth + 1))
        tile = Signal(g.dim)
        tile_size = Signal(g.tile)
        group = Signal(cfg.group_bits)
        grp_off = Signal(a + g.dim)           # group * OUT_CGP
        # channels of the next group and the one after, kept one group ahead so a group
        # step loads registers (no chain of adders and compares behind lane_last):
        # nl_n / ll_n: lanes of the next group, and that count <= 1; left_nn = COUT -
        # (group + 2) * lanes, stepped by one subtract; *_c: the same for group 1 / 2,
        # restored at every tile start (per-layer constants)
        cw = len(d.COUT) + 2
        nl_n, nl_c, nl0 = (Signal(range(L + 1), name=n) for n in ("nl_n", "nl_c", "nl0"))
        ll_n, ll_c = Signal(name="ll_n"), Signal(name="ll_c")
        left_nn, left_c = Signal(signed(cw), name="left_nn"), Signal(signed(cw), name="left_c")
        left1 = Signal(signed(cw))            # COUT - lanes (set at the layer start)
        ng2 = Signal(len(d.N_GROUPS) + 1)     # N_GROUPS - 2 (wrapped value never matches)
        running = Signal()
        lidx = Signal(range(L + 1))
        # scatter element counters as digits (see the module notes):
        ml = mixed_layout(g.dim + 1, cfg.lane_bits, g.s_bits)
        f0 = Signal(ml)       # element of lane 0 at the current position: gb + pm
        fcur = Signal(ml)     # element of lane lidx (f0 while lidx == 0)
        fsnap = Signal(ml)    # f0 at the tile's first position: gb + pm_snap
        gb = Signal(ml)       # group * lanes * OUT_HW
        pm = Signal(ml)       # position inside the item (PyTorch flatten order)
        pm_snap = Signal(ml)

        scatter = Signal()
        m.d.comb += scatter.eq((d.FLAGS & FLAG_SCATTER) != 0)

        # ---- next position ---------------------------------------------------------------
        # ox + 2 >= OUT_W with ox < OUT_W - 1 (the line's last not reached) is ox == OUT_W - 2:
        # an equality with a per-layer constant (wrapped values never match), same for oy
        ow2 = Signal(len(d.OUT_W) + 1, name="ow2")
        oh2 = Signal(len(d.OUT_H) + 1, name="oh2")
        m.d.comb += nxt.eq(cur)
        with m.If(~cur.oxl):
            m.d.comb += [nxt.ox.eq(cur.ox + 1), nxt.oxl.eq(cur.ox == ow2)]
            with m.If(cur.oxm == S - 1):
                m.d.comb += [nxt.oxm.eq(0), nxt.wbase.eq(cur.wbase + 1)]
            with m.Else():
                m.d.comb += nxt.oxm.eq(cur.oxm + 1)
        with m.Else():
            m.d.comb += [nxt.ox.eq(0), nxt.oxm.eq(0), nxt.oxl.eq(w1)]
            with m.If(~cur.oyl):
                m.d.comb += [nxt.oy.eq(cur.oy + 1), nxt.oyl.eq(cur.oy == oh2),
                             nxt.lw.eq(cur.lw + d.OUT_WQ), nxt.wbase.eq(cur.lw + d.OUT_WQ)]
            with m.Else():
                m.d.comb += [nxt.oy.eq(0), nxt.oyl.eq(h1), nxt.b.eq(cur.b + 1),
                             nxt.iw.eq(cur.iw + d.OUT_PITCH), nxt.lw.eq(cur.iw + d.OUT_PITCH),
                             nxt.wbase.eq(cur.iw + d.OUT_PITCH)]
        img_wrap = Signal()       # the next position starts a new batch item
        m.d.comb += img_wrap.eq(cur.oxl & cur.oyl)

        def digits(sig, q, l, s_):
            return [sig.q.eq(q), sig.l.eq(l), sig.s.eq(s_)]

        # digit steps with a per-layer constant: the q digit picks one of two sums (step
        # and step + 1, the latter's constant registered at the layer start) by the carry
        # of the low digits, so one carry chain, not two in series, feeds the q register
        hw_q1 = Signal(len(d.HW_Q) + 1)
        ghw_q1 = Signal(len(d.GHW_Q) + 1)

        def step(a, dq, dq1, dl, ds):
            _, l_new, s_new = mixed_add(a, 0, dl, ds, L, S)
            c2 = (a.l + dl + ((a.s + ds) >= S)) >= L
            return Mux(c2, a.q + dq1, a.q + dq), l_new, s_new

        pm_next = Signal(ml)
        f0_next = Signal(ml)
        g_next = Signal(ml)       # fsnap + one group step
        with m.If(img_wrap):
            m.d.comb += [pm_next.eq(0), f0_next.eq(gb)]
        with m.Else():
            m.d.comb += digits(pm_next, *mixed_add(pm, 0, 0, 1, L, S))
            m.d.comb += digits(f0_next, *mixed_add(f0, 0, 0, 1, L, S))
        m.d.comb += digits(g_next, *step(fsnap, d.GHW_Q, ghw_q1, d.GHW_L, d.GHW_S))
        gb_step = Signal(ml)
        m.d.comb += digits(gb_step, *step(gb, d.GHW_Q, ghw_q1, d.GHW_L, d.GHW_S))

        # ---- one result: feature-map word, or the scatter of its lanes --------------------
        # Registered end-of-count flags keep the compares off the path from the FIFO head
        # to the counters' enables: t is the tile's final position, group the final
        # group, tile the final tile; n_lanes is the channels of the current group.
        t_last, grp_last, tile_last = (Signal(name=n) for n in ("t_last", "grp_last", "tile_last"))
        n_lanes = Signal(range(L + 1))
        # ... and the compares behind their next values, one step ahead: the next tile is
        # the final one, the current tile has one position, lane lidx is the group's last;
        # tile1 / last1 / nl1: TILE == 1, LAST_TILE == 1, the first group has one channel
        tile_nlast, ts1, lane_last, tile1, last1, nl1 = (
            Signal(name=n) for n in ("tile_nlast", "ts1", "lane_last", "tile1", "last1", "nl1"))
        # the ends as equality compares with per-layer constants (N_TILES - 3, TILE - 2,
        # LAST_TILE - 2; wrapped values never match) instead of adds and compares
        ntw = len(d.N_TILES) + 1
        nt3 = Signal(ntw)
        ts2, tile_m2, last_m2 = (Signal(g.tile + 1, name=n) for n in ("ts2", "tile_m2", "last_m2"))

        def le1(left):
            # min(left, lanes) <= 1 for the channels left: always true with one lane
            return (left <= 1) | (L <= 1)

        def lanes_from(c):
            left = d.COUT - c
            return Mux(left < L, left, L)
        # The FIFO's "not empty" kept as a flip-flop (equal to buf.r_rdy, which is a
        # compare of its level): `finish` enables every counter of the writer, so it is
        # one LUT after registers.
        nonempty = Signal()
        pushed, popped = buf.w_en & buf.w_rdy, buf.r_en & buf.r_rdy
        m.d.sync += nonempty.eq(pushed | (buf.level >= 2) | ((buf.level == 1) & ~popped))
        depth = self.fifo_depth
        m.d.sync += notfull.eq(popped | (buf.level <= depth - 2)
                               | ((buf.level == depth - 1) & ~pushed))
        have = Signal()
        m.d.comb += have.eq(nonempty & running)
        finish = Signal()                     # the result at the FIFO head is complete
        m.d.comb += finish.eq(have & (~scatter | lane_last))
        m.d.comb += [buf.r_en.eq(finish), self.writes.eq(have)]

        # feature map
        fm_addr = Signal(a + g.dim + 2)
        m.d.comb += fm_addr.eq(cur.wbase + grp_off)
        # scatter: element f of the flattened output
        f = fcur
        bank, lane = f.s, f.l
        sc_addr = Signal(a + g.dim + 2)
        m.d.comb += sc_addr.eq(cur.iw + f.q)
        value = Signal(ab)
        m.d.comb += value.eq(res.values.as_value().word_select(lidx[:max(1, (L - 1).bit_length())]
                                                               if L > 1 else 0, ab))
        for j in range(S):
            with m.If(have):
                with m.If(scatter):
                    m.d.comb += [self.wr_addr[j].eq(sc_addr), self.wr_data[j].eq(
                        Cat(*[value] * L)), self.wr_en[j].eq(Mux(bank == j, 1 << lane, 0))]
                with m.Else():
                    m.d.comb += [self.wr_addr[j].eq(fm_addr),
                                 self.wr_data[j].eq(res.values.as_value()),
                                 self.wr_en[j].eq(Mux(cur.oxm == j, (1 << L) - 1, 0))]
        with m.If(have & scatter):
            with m.If(finish):
                m.d.sync += lidx.eq(0)
            with m.Else():
                m.d.sync += [lidx.eq(lidx + 1), lane_last.eq(lidx + 2 >= n_lanes),
                             *digits(fcur, *step(f, d.HW_Q, hw_q1, d.HW_L, d.HW_S))]

        # ---- counters after a finished result ------------------------------------------------
        m.d.sync += [self.done.eq(0), self.error.eq(0)]
        with m.If(finish):
            with m.If(res.addr != t):
                m.d.sync += self.error.eq(1)
            m.d.sync += lane_last.eq(n_lanes <= 1)
            with m.If(t_last):
                m.d.sync += t.eq(0)
                with m.If(grp_last):
                    new_size = Mux(tile_nlast, d.LAST_TILE, d.TILE)
                    new_1 = Mux(tile_nlast, last1, tile1)
                    m.d.sync += [t_last.eq(new_1), ts1.eq(new_1), grp_last.eq(d.N_GROUPS == 1),
                                 tile_last.eq(tile_nlast), tile_nlast.eq(tile == nt3),
                                 ts2.eq(Mux(tile_nlast, last_m2, tile_m2)),
                                 n_lanes.eq(nl0), lane_last.eq(nl1),
                                 nl_n.eq(nl_c), ll_n.eq(ll_c), left_nn.eq(left_c)]
                    m.d.sync += [group.eq(0), grp_off.eq(0),
                                 gb.eq(0), pm.eq(pm_next), pm_snap.eq(pm_next),
                                 f0.eq(pm_next), fcur.eq(pm_next), fsnap.eq(pm_next),
                                 cur.eq(nxt), snap.eq(nxt), tile.eq(tile + 1),
                                 tile_size.eq(new_size)]
                    with m.If(tile_last):
                        m.d.sync += [running.eq(0), self.done.eq(1)]
                with m.Else():
                    m.d.sync += [t_last.eq(ts1), grp_last.eq(group == ng2),
                                 n_lanes.eq(nl_n), lane_last.eq(ll_n),
                                 nl_n.eq(Mux(left_nn < L, left_nn, L)), ll_n.eq(le1(left_nn)),
                                 left_nn.eq(left_nn - L)]
                    m.d.sync += [group.eq(group + 1), grp_off.eq(grp_off + d.OUT_CGP),
                                 cur.eq(snap),
                                 gb.eq(gb_step), pm.eq(pm_snap), f0.eq(g_next),
                                 fcur.eq(g_next), fsnap.eq(g_next)]
            with m.Else():
                m.d.sync += [t.eq(t + 1), cur.eq(nxt), pm.eq(pm_next), f0.eq(f0_next),
                             fcur.eq(f0_next),
                             t_last.eq(t == ts2)]

        # group 1's lane count from the registered COUT - lanes, the cycle after the start
        # (the first result, and so the first group step, comes many cycles later)
        ls1 = Signal()
        m.d.sync += ls1.eq(self.layer_start)
        with m.If(ls1):
            m.d.sync += [nl_n.eq(Mux(left1 < L, left1, L)), ll_n.eq(le1(left1)),
                         nl_c.eq(Mux(left1 < L, left1, L)), ll_c.eq(le1(left1))]
        with m.If(self.layer_start):
            first_size = Mux(d.N_TILES == 1, d.LAST_TILE, d.TILE)
            first_1 = Mux(d.N_TILES == 1, d.LAST_TILE == 1, d.TILE == 1)
            m.d.sync += [cur.eq(0), snap.eq(0), t.eq(0), tile.eq(0), group.eq(0),
                         grp_off.eq(0), lidx.eq(0), f0.eq(0), fcur.eq(0),
                         fsnap.eq(0), gb.eq(0), pm.eq(0), pm_snap.eq(0),
                         tile_size.eq(first_size), t_last.eq(first_1), ts1.eq(first_1),
                         ts2.eq(Mux(d.N_TILES == 1, d.LAST_TILE - 2, d.TILE - 2)),
                         tile_m2.eq(d.TILE - 2), last_m2.eq(d.LAST_TILE - 2),
                         nt3.eq(d.N_TILES - 3),
                         tile1.eq(d.TILE == 1),
                         last1.eq(d.LAST_TILE == 1), tile_nlast.eq(d.N_TILES == 2),
                         grp_last.eq(d.N_GROUPS == 1), tile_last.eq(d.N_TILES == 1),
                         n_lanes.eq(lanes_from(0)), nl1.eq(lanes_from(0) <= 1),
                         nl0.eq(lanes_from(0)), ng2.eq(d.N_GROUPS - 2),
                         left1.eq(d.COUT - L),
                         hw_q1.eq(d.HW_Q + 1), ghw_q1.eq(d.GHW_Q + 1),
                         ow2.eq(d.OUT_W - 2), oh2.eq(d.OUT_H - 2),
                         left_nn.eq(d.COUT - 2 * L), left_c.eq(d.COUT - 2 * L),
                         lane_last.eq(lanes_from(0) <= 1), running.eq(1),
                         w1.eq(d.OUT_W <= 1), h1.eq(d.OUT_H <= 1)]
            for p in (cur, snap):
                m.d.sync += [p.iw.eq(d.OUT_BASE), p.lw.eq(d.OUT_BASE), p.wbase.eq(d.OUT_BASE),
                             p.oxl.eq(d.OUT_W <= 1), p.oyl.eq(d.OUT_H <= 1)]
        return m

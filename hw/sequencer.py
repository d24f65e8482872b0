"""Row sequencer: holds one rebuilt weight row and streams the tile's activation rows past it.

This is the on-chip window generator.  For every weight row ``r`` of a group it reads,
for each output position ``p`` of the current tile, the ``S`` activations that row ``r``
multiplies — element ``r*S + i`` of the flattened ``(cin, ky, kx)`` window of ``p`` —
straight from the activation banks, with zeros for padding, and hands ``weights x acts``
to the MAC lanes as one op per cycle.

Activation layout (``docs/architecture.md``): ``S`` banks of ``lanes``-element words.
Element ``(c, y, x)`` of an input item ``b`` lives in bank ``x % S`` at address
``IN_BASE + b*IN_PITCH + (c // lanes)*IN_CGP + y*IN_WQ + x // S``, lane ``c % lanes``.
With ``kw`` a multiple of ``S`` a weight row covers ``S`` consecutive ``x`` of one
``(cin, ky)``, which sit in ``S`` different banks, so a window row is one read of every
bank.  A fully connected layer reads its input as ``R`` channels of one ``1 x S`` line.

`RowAddress` splits a row index into ``(channel group, lane, ky, kx)`` by pipelined long
division (``hw/arith.py``; no multiplier), one row per cycle.  `RowSequencer` pairs its output
with the weight rows, walks the positions with incremental counters (no multiplier per
position) and restarts them from the tile's first position for every row.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.arith import div_step, mul_const
from hw.config import SDConfig
from hw.descriptor import descriptor_layout, geometry
from hw.layouts import mac_op_layout, quant_layout, row_tag_fields, weights_row_layout

__all__ = ["RowAddress", "RowSequencer", "row_info_layout", "row_ref_layout"]


def row_ref_layout(config: SDConfig) -> data.StructLayout:
    """What `RowAddress` needs of a decoded row: its index (the other tags ride along)."""
    return data.StructLayout({"row": unsigned(config.row_bits)})


def row_info_layout(config: SDConfig) -> data.StructLayout:
    """Per-row addressing facts: bank-address offset, lane, kernel offsets, width limit."""
    g = geometry(config)
    return data.StructLayout({
        "row_off": signed(g.act + 2),
        "lane": unsigned(config.lane_bits),
        "ky": unsigned(g.row),
        "kx0": unsigned(g.dim + 1),
        "wlim": unsigned(g.dim),
    })


class RowAddress(wiring.Component):
    """Row index -> window addressing facts, pipelined (`latency` cycles, 1 row/cycle).

    ``cg = r // RPC_L``, ``lane = (r % RPC_L) // RPC``, ``ky = (r % RPC) // KWS``,
    ``kxs = r % RPC % KWS`` (``RPC_L = RPC * lanes``), so that
    ``row_off = cg * IN_CGP + ky * IN_WQ + kxs``, ``kx0 = kxs * S`` and ``wlim`` =
    ``IN_WLAST`` for the last channel (``r >= LAST_ROW``), else ``IN_W``.

    No multiplier: each quotient is a restoring long division with one quotient bit per
    stage, and the stage that sets bit ``k`` of ``cg`` (of ``ky``) adds ``IN_CGP << k``
    (``IN_WQ << k``) to ``row_off``.  The stage counts follow from ``max_rows`` and
    ``lanes`` (`stages`); the extra latency is paid once per run (the weight side runs
    ahead of the activation side).

    Attributes
    ----------
    desc : In(descriptor_layout(config))
    rows : In(stream.Signature(row_ref_layout(config)))
    info : Out(stream.Signature(row_info_layout(config)))
    idle : Out(1)
        No row in the pipeline.
    latency : int
        Cycles from a row's transfer on ``rows`` to its ``info`` (without stalls).
    """

    def __init__(self, config: SDConfig):
        self.config = config
        self.latency = len(self.stages(config)) + 1
        super().__init__({
            "desc": In(descriptor_layout(config)),
            "rows": In(stream.Signature(row_ref_layout(config))),
            "info": Out(stream.Signature(row_info_layout(config))),
            "idle": Out(1),
        })

    @staticmethod
    def stages(config: SDConfig) -> list[tuple[str, int]]:
        """Division steps in pipeline order: ``(quotient, bit)`` per stage.

        ``cg < max_rows / lanes`` (``RPC >= 1``), ``lane < lanes``, ``ky < max_rows``.
        """
        top = config.max_rows - 1
        out = [("cg", k) for k in reversed(range(max(1, top // config.lanes).bit_length()))]
        out += [("lane", k) for k in reversed(range((config.lanes - 1).bit_length()))]
        out += [("ky", k) for k in reversed(range(max(1, top).bit_length()))]
        return out

    def elaborate(self, platform):
        cfg, d = self.config, self.desc
        g = geometry(cfg)
        n = g.row
        m = Module()
        adv = Signal()
        m.d.comb += [adv.eq(~self.info.valid | self.info.ready), self.rows.ready.eq(adv)]

        # one register set per stage: what the remaining steps and the output need
        def regs(i):
            return {"valid": Signal(name=f"s{i}_valid"), "rem": Signal(n, name=f"s{i}_rem"),
                    "acc": Signal(unsigned(g.act + 2), name=f"s{i}_acc"),
                    "lane": Signal(cfg.lane_bits, name=f"s{i}_lane"),
                    "ky": Signal(n, name=f"s{i}_ky"),
                    "last_c": Signal(name=f"s{i}_last_c")}

        prev = {"valid": self.rows.valid, "rem": self.rows.payload.row,
                "acc": 0, "lane": 0, "ky": 0,
                "last_c": self.rows.payload.row >= d.LAST_ROW}
        stages = []
        for i, (what, k) in enumerate(self.stages(cfg)):
            cur = regs(i)
            divisor = {"cg": d.RPC_L, "lane": d.RPC, "ky": d.KWS}[what]
            bit, rem = div_step(prev["rem"], divisor, k)
            nxt = dict(prev, rem=rem)
            if what == "cg":
                nxt["acc"] = Mux(bit, prev["acc"] + (d.IN_CGP << k), prev["acc"])
            elif what == "lane":
                nxt["lane"] = prev["lane"] | Mux(bit, 1 << k, 0)
            else:
                nxt["acc"] = Mux(bit, prev["acc"] + (d.IN_WQ << k), prev["acc"])
                nxt["ky"] = prev["ky"] | Mux(bit, 1 << k, 0)
            with m.If(adv):
                m.d.sync += [cur[f].eq(nxt[f]) for f in cur]
            stages.append(cur)
            prev = cur

        # output register: kxs is the final remainder
        out = self.info.payload
        with m.If(adv):
            m.d.sync += [
                self.info.valid.eq(prev["valid"]),
                out.row_off.eq(prev["acc"] + prev["rem"]),
                out.lane.eq(prev["lane"]),
                out.ky.eq(prev["ky"]),
                out.kx0.eq(mul_const(prev["rem"], cfg.basis_size)),
                out.wlim.eq(Mux(prev["last_c"], d.IN_WLAST, d.IN_W)),
            ]
        busy = self.info.valid
        for st in stages:
            busy = busy | st["valid"]
        m.d.comb += self.idle.eq(~busy)
        return m


class RowSequencer(wiring.Component):
    """Window generator and MAC feed: one ``lanes x S`` op per cycle.

    Parameters
    ----------
    config : SDConfig
    weight_bits : int, optional
        Width of the weights (rebuilt SD weights by default; 8 for the dense baseline).

    Attributes
    ----------
    desc : In(descriptor_layout(config))
        The running layer's descriptor (stable while it runs).
    layer_start : In(1)
        Pulse: reset the position counters to the layer's first tile.
    weights : In(stream.Signature(weights_row_layout(config, weight_bits)))
        Rebuilt weight rows with their tags, in decoder order.
    info : In(stream.Signature(row_info_layout(config)))
        `RowAddress` output for the same rows, in the same order.
    quant : In(stream.Signature(quant_layout(config)))
        One bundle per (tile, group), taken with the group's first row.
    ops : Out(stream.Signature(mac_op_layout(config, weight_bits)))
    op_quant : Out(quant_layout(config))
        The quant bundle of the op on ``ops`` (`MacLanes` samples it with the op).
    rd_addr : Out(ArrayLayout(act bank address, S)); rd_en : Out(1); rd_data : In
        Read ports of the ``S`` activation banks (data one cycle after ``rd_en``, held
        while ``rd_en`` is low).
    hold : In(1)
        Issue no position this cycle (the datapath's credit for the result FIFO: with
        it the MAC lanes never stall, so no ready signal runs back through them).

    Notes
    -----
    Latency `LATENCY` = 3 cycles from a position's address (stage A) to its op on
    ``ops``: the bank read, the read data registered (a block RAM's output arrives late in
    the cycle), then the lane select / rotate / zero-padding stage into the output
    register.  One op per cycle while rows arrive in time: a row is taken in the cycle its
    predecessor issues its final position, so ``P = 1`` layers run one row per cycle too.

    For the clock rate every choice between wide registers is made by registers: the
    position walk carries look-ahead flags (``oxw``: the position ends its output line,
    ``oyw``: its output column), so a step needs no comparison; the tile counter counts
    down with registered "final" / "next is final" flags; ``t`` is compared with a
    registered ``tile_size - 2``; and a registered ``end_row`` marks the layer's final row.
    """

    #: Cycles from a position's issue to its op on ``ops``.
    LATENCY = 3

    def __init__(self, config: SDConfig, weight_bits: int | None = None):
        self.config = config
        self.weight_bits = config.rebuilt_weight_bits if weight_bits is None else weight_bits
        g = geometry(config)
        S = config.basis_size
        super().__init__({
            "desc": In(descriptor_layout(config)),
            "layer_start": In(1),
            "weights": In(stream.Signature(weights_row_layout(config, self.weight_bits))),
            "info": In(stream.Signature(row_info_layout(config))),
            "quant": In(stream.Signature(quant_layout(config))),
            "ops": Out(stream.Signature(mac_op_layout(config, self.weight_bits))),
            "op_quant": Out(quant_layout(config)),
            "rd_addr": Out(data.ArrayLayout(unsigned(g.act), S)),
            "rd_en": Out(1),
            "rd_data": In(data.ArrayLayout(unsigned(config.lanes * config.act_bits), S)),
            "hold": In(1),
        })

    # position counters shared by the live set and the tile snapshot
    def _pos_fields(self):
        g = geometry(self.config)
        a = g.act + 2
        return {
            "b": unsigned(g.dim), "oy": unsigned(g.dim), "ox": unsigned(g.dim),
            # look-ahead flags: ox == OUT_W - 1 (the next step wraps ox), oy == OUT_H - 1
            "oxw": unsigned(1), "oyw": unsigned(1),
            # ixm + STRIDE_M >= S: the ox step carries into the bank-word address
            "cy": unsigned(1),
            "ixb": signed(g.dim + 2), "ixm": unsigned(g.s_bits), "iyb": signed(g.dim + 2),
            # bank-word address of the item (IN_BASE + b*IN_PITCH), of the window's
            # first line (+ iyb*IN_WQ) and of its first column (+ ixb // S); kept as
            # running sums so an issue adds only the row's offset
            "ibase": signed(a + g.dim + 2), "lbase": signed(a + g.dim + 2),
            "pbase": signed(a + g.dim + 2),
        }

    def elaborate(self, platform):
        cfg, d = self.config, self.desc
        S, ab = cfg.basis_size, cfg.act_bits
        g = geometry(cfg)
        m = Module()
        pos_layout = data.StructLayout(self._pos_fields())
        cur = Signal(pos_layout)
        snap = Signal(pos_layout)
        nxt = Signal(pos_layout)
        first_pos = Signal(pos_layout)
        t = Signal(range(cfg.acc_depth + 1))
        tiles_left = Signal(g.dim)      # tiles after the current one
        size_m2 = Signal(signed(g.tile + 1))    # current tile size - 2
        size1 = Signal()            # current tile size == 1
        t_last = Signal()           # t + 1 == tile size
        tile_last = Signal()        # the current tile is the layer's final one
        next_last = Signal()        # the next tile is the layer's final one
        held_tile_end = Signal()    # held row: last row of the final group
        end_row = Signal()          # held row: the layer's final row (tile_end & tile_last)

        wl = weights_row_layout(cfg, self.weight_bits)
        held_valid = Signal()
        held_w = Signal(wl)
        held_i = Signal(row_info_layout(cfg))
        held_q = Signal(quant_layout(cfg))

        adv = Signal()
        m.d.comb += adv.eq(~self.ops.valid | self.ops.ready)

        # ---- first position of the layer ------------------------------------------
        m.d.comb += [
            first_pos.b.eq(0), first_pos.oy.eq(0), first_pos.ox.eq(0),
            first_pos.oxw.eq(d.OUT_W == 1), first_pos.oyw.eq(d.OUT_H == 1),
            first_pos.cy.eq(d.PAD_M + d.STRIDE_M >= S),
            first_pos.ixb.eq(d.NEG_PAD_X),
            first_pos.ixm.eq(d.PAD_M), first_pos.iyb.eq(d.NEG_PAD_Y),
            first_pos.ibase.eq(d.IN_BASE), first_pos.lbase.eq(d.IN_BASE + d.LINE0),
            first_pos.pbase.eq(d.IN_BASE + d.LINE0 + d.PAD_Q),
        ]

        # ---- next position (incremental, no multiplier) ------------------------------
        # Descriptor sums and comparisons the steps use, registered (the descriptor is
        # stable while a layer runs and the first step comes cycles after its start).
        a = g.act + g.dim + 2
        k_line, k_img, k_img_p = (Signal(signed(a), name=n) for n in
                                  ("k_line", "k_img", "k_img_p"))
        w_m2, h_m2 = Signal(signed(g.dim + 1)), Signal(signed(g.dim + 1))
        w1, h1 = Signal(), Signal()
        tl_m2, lt_m2 = Signal(signed(g.tile + 1)), Signal(signed(g.tile + 1))
        tl1, lt1 = Signal(), Signal()
        sq, sq1 = Signal(g.dim + 1), Signal(g.dim + 1)
        pad_cy = Signal()
        m.d.sync += [k_line.eq(d.LINE_STEP + d.PAD_Q), k_img.eq(d.IN_PITCH + d.LINE0),
                     k_img_p.eq(d.IN_PITCH + d.LINE0 + d.PAD_Q),
                     w_m2.eq(d.OUT_W - 2), h_m2.eq(d.OUT_H - 2),
                     w1.eq(d.OUT_W == 1), h1.eq(d.OUT_H == 1),
                     tl_m2.eq(d.TILE - 2), lt_m2.eq(d.LAST_TILE - 2),
                     tl1.eq(d.TILE == 1), lt1.eq(d.LAST_TILE == 1),
                     sq.eq(d.STRIDE_Q), sq1.eq(d.STRIDE_Q + 1),
                     pad_cy.eq(d.PAD_M + d.STRIDE_M >= S)]
        ixm_sum = Signal(unsigned(g.s_bits + 1))
        ixm_next = Signal(unsigned(g.s_bits))
        m.d.comb += [ixm_sum.eq(cur.ixm + d.STRIDE_M),
                     ixm_next.eq(Mux(cur.cy, ixm_sum - S, ixm_sum)),
                     nxt.eq(cur)]
        # Below the line's end ox <= OUT_W - 2, so "ox == OUT_W - 2" is a magnitude
        # comparison (one carry chain, not a tree of equality LUTs); likewise oy and t.
        with m.If(~cur.oxw):
            m.d.comb += [nxt.ox.eq(cur.ox + 1), nxt.oxw.eq(cur.ox >= w_m2),
                         nxt.ixb.eq(cur.ixb + d.STRIDE_X),
                         nxt.pbase.eq(cur.pbase + Mux(cur.cy, sq1, sq)),
                         nxt.ixm.eq(ixm_next), nxt.cy.eq(ixm_next + d.STRIDE_M >= S)]
        with m.Else():
            m.d.comb += [nxt.ox.eq(0), nxt.oxw.eq(w1), nxt.ixb.eq(d.NEG_PAD_X),
                         nxt.ixm.eq(d.PAD_M), nxt.cy.eq(pad_cy)]
            with m.If(~cur.oyw):
                m.d.comb += [nxt.oy.eq(cur.oy + 1), nxt.oyw.eq(cur.oy >= h_m2),
                             nxt.iyb.eq(cur.iyb + d.STRIDE_Y),
                             nxt.lbase.eq(cur.lbase + d.LINE_STEP),
                             nxt.pbase.eq(cur.lbase + k_line)]
            with m.Else():
                m.d.comb += [nxt.oy.eq(0), nxt.oyw.eq(h1), nxt.iyb.eq(d.NEG_PAD_Y),
                             nxt.b.eq(cur.b + 1),
                             nxt.ibase.eq(cur.ibase + d.IN_PITCH),
                             nxt.lbase.eq(cur.ibase + k_img), nxt.pbase.eq(cur.ibase + k_img_p)]

        # ---- stage A: issue one position of the held row -----------------------------
        issue = Signal()
        row_end = Signal()
        tile_end = Signal()
        m.d.comb += [
            issue.eq(held_valid & adv & ~self.hold),
            # registered flags (short take path): t is the tile's final position; the
            # held row is the tile's final row
            row_end.eq(t_last),
            tile_end.eq(held_tile_end),
        ]
        base = Signal(signed(g.act + g.dim + 4))
        m.d.comb += base.eq(cur.pbase + held_i.row_off)
        for j in range(S):
            m.d.comb += self.rd_addr[j].eq(base + (j < cur.ixm))
        m.d.comb += self.rd_en.eq(issue)

        iy = Signal(signed(g.dim + 3))
        ixk = Signal(signed(g.dim + 3))
        valid_a = Signal(S)
        m.d.comb += [iy.eq(cur.iyb + held_i.ky), ixk.eq(cur.ixb + held_i.kx0)]
        for i in range(S):
            m.d.comb += valid_a[i].eq((iy >= 0) & (iy < d.IN_H)
                                      & (ixk + i >= 0) & (ixk + i < held_i.wlim))

        # Stage B registers (the bank read is in flight), stage C registers (the read
        # data registered with them)
        stage = {}
        for s in ("b", "c"):
            stage[s] = {"valid": Signal(name=f"{s}_valid"), "mask": Signal(S, name=f"{s}_mask"),
                        "rot": Signal(g.s_bits, name=f"{s}_rot"),
                        "lane": Signal(cfg.lane_bits, name=f"{s}_lane"),
                        "op": Signal(mac_op_layout(cfg, self.weight_bits), name=f"{s}_op"),
                        "q": Signal(quant_layout(cfg), name=f"{s}_q")}
        sb, sc = stage["b"], stage["c"]
        c_data = Signal.like(self.rd_data, name="c_data")
        with m.If(adv):
            m.d.sync += [sb["valid"].eq(issue), sc["valid"].eq(sb["valid"])]
            with m.If(issue):
                m.d.sync += [
                    sb["mask"].eq(valid_a), sb["rot"].eq(cur.ixm), sb["lane"].eq(held_i.lane),
                    sb["op"].weights.eq(held_w.weights), sb["op"].addr.eq(t),
                    sb["op"].first.eq(held_w.first), sb["op"].last.eq(held_w.last),
                    sb["q"].eq(held_q),
                ]
            with m.If(sb["valid"]):
                m.d.sync += [sc[f].eq(sb[f]) for f in ("mask", "rot", "lane", "op", "q")]
                m.d.sync += c_data.eq(self.rd_data)

        # ---- stage C -> output register: lane select, rotate, zero padding ------------
        lane_val = []
        for j in range(S):
            v = Signal(signed(ab), name=f"bank{j}_val")
            m.d.comb += v.eq(c_data[j].word_select(sc["lane"], ab))
            lane_val.append(v)
        acts = Signal(data.ArrayLayout(signed(ab), S))
        for i in range(S):
            sel = Signal(signed(ab), name=f"act{i}_sel")
            with m.Switch(sc["rot"]):
                for r in range(S):
                    with m.Case(r):
                        m.d.comb += sel.eq(lane_val[(r + i) % S])
            m.d.comb += acts[i].eq(Mux(sc["mask"][i], sel, 0))
        with m.If(adv):
            m.d.sync += self.ops.valid.eq(sc["valid"])
            with m.If(sc["valid"]):
                m.d.sync += [self.ops.payload.eq(sc["op"]), self.ops.payload.acts.eq(acts),
                             self.op_quant.eq(sc["q"])]

        # ---- row hand-over -------------------------------------------------------------
        w_in, i_in, q_in = self.weights, self.info, self.quant
        pair = Signal()
        take = Signal()
        free = Signal()
        # After the final position of the layer, rows of the next layer wait for its
        # layer_start (the writer must finish this layer before they read activations).
        finished = Signal()
        layer_end = Signal()
        tile_adv = Signal()
        m.d.comb += [
            layer_end.eq(issue & row_end & end_row),
            tile_adv.eq(issue & row_end & tile_end),
            # from registers, not through `issue` (it fans out to ~500 enables)
            free.eq(~held_valid | (adv & ~self.hold & t_last & ~end_row)),
        ]
        with m.If(layer_end):
            m.d.sync += finished.eq(1)
        m.d.comb += [
            pair.eq(w_in.valid & i_in.valid & (~w_in.payload.first | q_in.valid)),
            take.eq(pair & ~finished & free),
            w_in.ready.eq(take), i_in.ready.eq(take),
            q_in.ready.eq(take & w_in.payload.first),
        ]
        w_tile_end = Signal()
        m.d.comb += w_tile_end.eq(w_in.payload.last & (w_in.payload.group == d.N_GROUPS - 1))
        with m.If(take):
            m.d.sync += [held_w.eq(w_in.payload), held_i.eq(i_in.payload),
                         held_tile_end.eq(w_tile_end),
                         end_row.eq(w_tile_end & Mux(tile_adv, next_last, tile_last))]
            with m.If(w_in.payload.first):
                m.d.sync += held_q.eq(q_in.payload)
        with m.Elif(issue & row_end):
            m.d.sync += held_valid.eq(0)
        with m.If(take):
            m.d.sync += held_valid.eq(1)

        # ---- position counters -----------------------------------------------------------
        with m.If(issue):
            with m.If(row_end):
                m.d.sync += t.eq(0)
                with m.If(tile_end):
                    m.d.sync += [cur.eq(nxt), snap.eq(nxt), tiles_left.eq(tiles_left - 1),
                                 tile_last.eq(next_last), next_last.eq(tiles_left == 2),
                                 size_m2.eq(Mux(next_last, lt_m2, tl_m2)),
                                 size1.eq(Mux(next_last, lt1, tl1)),
                                 t_last.eq(Mux(next_last, lt1, tl1))]
                with m.Else():
                    m.d.sync += [cur.eq(snap), t_last.eq(size1)]
            with m.Else():
                m.d.sync += [t.eq(t + 1), cur.eq(nxt), t_last.eq(t >= size_m2)]

        with m.If(self.layer_start):
            first_last = d.N_TILES == 1
            first_size = Mux(first_last, d.LAST_TILE, d.TILE)
            m.d.sync += [cur.eq(first_pos), snap.eq(first_pos), t.eq(0),
                         tiles_left.eq(d.N_TILES - 1), tile_last.eq(first_last),
                         next_last.eq(d.N_TILES == 2), size_m2.eq(first_size - 2),
                         size1.eq(first_size == 1), t_last.eq(first_size == 1),
                         held_valid.eq(0), finished.eq(0), end_row.eq(0)]
        return m

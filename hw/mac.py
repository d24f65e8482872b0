"""MAC lanes: ``lanes`` dot products of ``S`` per cycle into per-position accumulators.

Each accepted op carries the ``lanes x S`` weights of one coefficient row, the ``S``
broadcast activations of one output position ``addr`` and the ``first``/``last`` flags
of the row within its group.  Lane ``l`` updates accumulator ``addr``::

    acc[l][addr] = (0 if first else acc[l][addr]) + sum_i weights[l][i] * acts[i]

and, if ``last``, emits the requantized value of ``docs/format.md``::

    t = ((acc + bias) * M + rnd) >> sh,  rnd = 1 << (sh - 1) if sh > 0 else 0
    t = max(t, 0) if relu;  t = clamp(t, act_min, act_max)
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.basis_array import adder_tree
from hw.config import SDConfig
from hw.layouts import lane_quant_layout, mac_op_layout, quant_layout, results_layout

__all__ = ["MacLanes"]


class MacLanes(wiring.Component):
    """Multiply-accumulate lanes with accumulator RAM, bias, requantization and ReLU.

    Parameters
    ----------
    config : SDConfig
        Supplies ``lanes``, ``basis_size``, ``act_bits``, ``acc_bits``, ``acc_depth`` and
        the bias / multiplier / shift widths.
    weight_bits : int, optional
        Signed width of the incoming weights; default ``rebuilt_weight_bits`` (SD path).
        The dense baseline uses its int8 width.

    Attributes
    ----------
    ops : In(stream.Signature(mac_op_layout(config, weight_bits)))
        ``weights[l][i]``, ``acts[i]``, ``addr`` (accumulator / output position),
        ``first`` (start the sum of ``addr`` at zero), ``last`` (emit ``addr`` after
        this op).
    quant : In(quant_layout(config))
        Per-lane ``bias`` / ``mult`` / ``shift`` and the ``relu`` flag.  Sampled together
        with every accepted op, so the controller holds it for the ops of one group and
        may change it on the cycle the next group's first op is accepted.
    results : Out(stream.Signature(results_layout(config)))
        ``addr`` and the ``lanes`` requantized, saturated ``values`` (``act_bits``), one
        per op with ``last``, in op order.

    Notes
    -----
    Latency `LATENCY` = 5 cycles from an op's transfer to its result on ``results``
    (stage 1 op register, 2 accumulate + RAM write, 3 bias, 4 multiplier, 5 rounding /
    ReLU / saturation into the output register).  Throughput one op per cycle, including
    back-to-back ops on the same ``addr`` (``P = 1``): the accumulator RAM is read one
    cycle before it is written, and the value written in the cycle of the read is
    forwarded, so every op sees all earlier ones.  The whole pipeline stalls while a
    result waits on ``results`` (``ops.ready = ~results.valid | results.ready``).
    The accumulator wraps at ``acc_bits``; ``acc + bias`` is computed on
    ``acc_bits + 1`` bits and the product exactly (the exporter guarantees that the
    sums fit, see ``docs/format.md``).
    """

    LATENCY = 5

    def __init__(self, config: SDConfig, weight_bits: int | None = None):
        if not isinstance(config, SDConfig):
            raise TypeError(f"config must be an SDConfig, got {type(config).__name__}: "
                            f"{config!r}")
        self.config = config
        self.weight_bits = config.rebuilt_weight_bits if weight_bits is None else weight_bits
        if isinstance(self.weight_bits, bool) or not isinstance(self.weight_bits, int):
            raise TypeError(f"weight_bits must be an int, got {weight_bits!r}")
        if not 2 <= self.weight_bits <= config.acc_bits - config.act_bits:
            raise ValueError(
                f"weight_bits must be in [2, acc_bits - act_bits = "
                f"{config.acc_bits - config.act_bits}] so one product fits the "
                f"accumulator, got {weight_bits!r}")
        super().__init__({
            "ops": In(stream.Signature(mac_op_layout(config, self.weight_bits))),
            "quant": In(quant_layout(config)),
            "results": Out(stream.Signature(results_layout(config))),
        })

    def elaborate(self, platform):
        cfg = self.config
        S, L = cfg.basis_size, cfg.lanes
        acc_shape = signed(cfg.acc_bits)
        sum_shape = signed(cfg.acc_bits + 1)
        prod_shape = signed(cfg.acc_bits + 1 + cfg.mult_bits + 1)
        m = Module()

        m.submodules.acc_mem = acc_mem = memory.Memory(
            shape=data.ArrayLayout(acc_shape, L), depth=cfg.acc_depth, init=[])
        rd = acc_mem.read_port()          # synchronous, not transparent
        wr = acc_mem.write_port()

        advance = Signal()
        m.d.comb += [
            advance.eq(~self.results.valid | self.results.ready),
            self.ops.ready.eq(advance),
        ]
        take = Signal()
        m.d.comb += take.eq(self.ops.valid & self.ops.ready)

        # --- stage 1: registered op and quant snapshot ---------------------------
        op_layout = mac_op_layout(cfg, self.weight_bits)
        op1 = Signal(op_layout)
        q1 = Signal(quant_layout(cfg))
        v1 = Signal()
        with m.If(advance):
            m.d.sync += v1.eq(take)
            with m.If(take):
                m.d.sync += [op1.eq(self.ops.payload), q1.eq(self.quant)]
        # The RAM read of the op in stage 1 is issued when it moves to stage 2.
        m.d.comb += [rd.addr.eq(op1.addr), rd.en.eq(advance)]

        # --- stage 2: dot products, read-modify-write ------------------------------
        dot_shape = signed(cfg.acc_bits)
        dot2 = [Signal(dot_shape, name=f"dot2_l{l}") for l in range(L)]
        addr2, first2, last2, v2 = (Signal(cfg.acc_addr_bits), Signal(), Signal(), Signal())
        q2 = Signal(quant_layout(cfg))
        with m.If(advance):
            m.d.sync += [v2.eq(v1), addr2.eq(op1.addr), first2.eq(op1.first),
                         last2.eq(op1.last), q2.eq(q1)]
            for l in range(L):
                m.d.sync += dot2[l].eq(adder_tree(
                    op1.weights[l][i] * op1.acts[i] for i in range(S)))

        # Forwarding register: the write made in the cycle this op's read was issued
        # is not in the read data yet.
        fwd_valid, fwd_addr = Signal(), Signal(cfg.acc_addr_bits)
        fwd_data = Signal(data.ArrayLayout(acc_shape, L))
        acc_new = Signal(data.ArrayLayout(acc_shape, L))
        hit = Signal()
        m.d.comb += hit.eq(fwd_valid & (fwd_addr == addr2))
        for l in range(L):
            old = Signal(acc_shape, name=f"old_l{l}")
            m.d.comb += [
                old.eq(Mux(first2, 0, Mux(hit, fwd_data[l], rd.data[l]))),
                acc_new[l].eq(old + dot2[l]),
            ]
        m.d.comb += [wr.addr.eq(addr2), wr.data.eq(acc_new), wr.en.eq(v2 & advance)]
        with m.If(advance):
            m.d.sync += [fwd_valid.eq(v2), fwd_addr.eq(addr2), fwd_data.eq(acc_new)]

        # --- stage 3: bias -------------------------------------------------------------
        sum3 = [Signal(sum_shape, name=f"sum3_l{l}") for l in range(L)]
        addr3, v3 = Signal(cfg.acc_addr_bits), Signal()
        q3 = Signal(quant_layout(cfg))
        with m.If(advance):
            m.d.sync += [v3.eq(v2 & last2), addr3.eq(addr2), q3.eq(q2)]
            for l in range(L):
                m.d.sync += sum3[l].eq(acc_new[l] + q2.lanes[l].bias)

        # --- stage 4: multiplier ------------------------------------------------------------
        prod4 = [Signal(prod_shape, name=f"prod4_l{l}") for l in range(L)]
        addr4, v4 = Signal(cfg.acc_addr_bits), Signal()
        q4 = Signal(quant_layout(cfg))
        with m.If(advance):
            m.d.sync += [v4.eq(v3), addr4.eq(addr3), q4.eq(q3)]
            for l in range(L):
                m.d.sync += prod4[l].eq(sum3[l] * q3.lanes[l].mult)

        # --- stage 5: round half up, ReLU, saturate (output register) ----------------
        out = self.results.payload
        with m.If(advance):
            m.d.sync += [self.results.valid.eq(v4), out.addr.eq(addr4)]
            for l in range(L):
                m.d.sync += out.values[l].eq(
                    _requant_tail(m, prod4[l], q4.lanes[l].shift, q4.relu, cfg, l))
        return m


def _requant_tail(m, prod, sh, relu, cfg, lane):
    """``clamp(relu(((prod + rnd) >> sh)))`` without a wide rounding constant.

    ``(p + 2**(s-1)) >> s == ((p >> (s-1)) + 1) >> 1`` for ``s > 0`` (both floors), so
    the rounding needs no ``2**shift_bits``-wide adder.
    """
    q = Signal(signed(len(prod) + 1), name=f"rq_q_l{lane}")
    t = Signal(signed(len(prod) + 1), name=f"rq_t_l{lane}")
    sh_m1 = Signal(len(sh), name=f"rq_shm1_l{lane}")      # unused (wraps) when sh == 0
    m.d.comb += [
        sh_m1.eq(sh - 1),
        q.eq(Mux(sh == 0, prod, prod >> sh_m1)),
        t.eq(Mux(sh == 0, q, (q + 1) >> 1)),
    ]
    tr = Signal(signed(len(t)), name=f"rq_r_l{lane}")
    m.d.comb += tr.eq(Mux(relu & (t < 0), 0, t))
    res = Signal(signed(cfg.act_bits), name=f"rq_out_l{lane}")
    m.d.comb += res.eq(Mux(tr > cfg.act_max, cfg.act_max,
                           Mux(tr < cfg.act_min, cfg.act_min, tr)))
    return res

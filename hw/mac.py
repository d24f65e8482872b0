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

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.basis_array import adder_tree
from hw.config import SDConfig
from hw.dsp import SD_MUL_FILE, SD_MUL_VERILOG, RegisteredMul, mul_shape
from hw.layouts import mac_op_layout, quant_layout, results_layout

__all__ = ["MacLanes", "mac_lanes_for_fpga"]


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
    dsp_instances : bool
        True: every multiplier is an instance of the Verilog module ``sd_mul``
        (`hw.dsp`), whose text the design needs (`verilog_sources`; the ECP5 flow
        substitutes the ``MULT18X18D`` version).  False (default): the same registers
        and products in Amaranth, which the Amaranth simulator can run.  Both are
        cycle- and bit-identical.

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
    Latency `LATENCY` = 10 cycles from an op's transfer to its result on ``results``
    (1 op register; 2 products; 3 adder tree, accumulator RAM read; 4 read data
    registered; 5 accumulate, RAM write and registered sum; 6 bias; 7 two partial
    products of the requantization multiply; 8 their sum; 9 the rounding shift;
    10 rounding / ReLU / saturation into the output register).  Every multiply is a
    registered multiplier (`hw.dsp.RegisteredMul`, the Verilog module ``sd_mul`` with
    ``dsp_instances``): the weights and activations (stage 1) and the biased sum
    (stage 6) are its input registers, the product (stages 2 and 7) its output
    register, so a DSP block sits between two of its own registers.  Every other stage
    is at most one carry chain deep, so the lanes are not the design's critical path.
    Throughput one op per cycle, including
    back-to-back ops on the same ``addr`` (``P = 1``, ``P = 2``): the accumulator RAM is
    read two cycles before it is written, and the sums written by the two ops ahead are
    forwarded (the address comparisons are registered one stage early), so every op
    sees all earlier ones.  The whole pipeline stalls while a
    result waits on ``results`` (``ops.ready = ~results.valid | results.ready``).
    The accumulator wraps at ``acc_bits``; ``acc + bias`` is computed on
    ``acc_bits + 1`` bits and the product exactly (the exporter guarantees that the
    sums fit, see ``docs/format.md``).
    """

    LATENCY = 10

    def __init__(self, config: SDConfig, weight_bits: int | None = None, *,
                 dsp_instances: bool = False):
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
        if not isinstance(dsp_instances, bool):
            raise TypeError(f"dsp_instances must be a bool, got {dsp_instances!r}")
        self.dsp_instances = dsp_instances
        super().__init__({
            "ops": In(stream.Signature(mac_op_layout(config, self.weight_bits))),
            "quant": In(quant_layout(config)),
            "results": Out(stream.Signature(results_layout(config))),
        })

    @property
    def verilog_sources(self) -> dict[str, str]:
        """Extra Verilog files: ``{"sd_mul.v": text}`` with ``dsp_instances``, else ``{}``."""
        return {SD_MUL_FILE: SD_MUL_VERILOG} if self.dsp_instances else {}

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

        def mul(name, a, a_shape, b, b_shape):
            """A registered multiplier (`hw.dsp.RegisteredMul`) enabled with the pipeline.

            Its input registers hold the operands of one stage, its output register the
            product one stage later, so the multiplier has a register on both sides.
            """
            unit = RegisteredMul(a_shape, b_shape, mul_shape(a_shape, b_shape),
                                 instance=self.dsp_instances)
            m.submodules[name] = unit
            m.d.comb += [unit.a.eq(a), unit.b.eq(b), unit.ce.eq(advance)]
            return unit.p

        # --- stage 1: registered op tags and quant snapshot ------------------------
        # The weights and activations of the op are registered inside the multipliers
        # (their input registers, loaded on every advance: a bubble's products are
        # never used), the rest of the op here.
        op = self.ops.payload
        addr1, first1, last1 = Signal(cfg.acc_addr_bits), Signal(), Signal()
        q1 = Signal(quant_layout(cfg))
        v1 = Signal()
        with m.If(advance):
            m.d.sync += v1.eq(take)
            with m.If(take):
                m.d.sync += [addr1.eq(op.addr), first1.eq(op.first), last1.eq(op.last),
                             q1.eq(self.quant)]

        def follow(name, v, addr, first, last, q):
            """Registers carrying an op's tags one stage on (stalled with the pipeline)."""
            regs = (Signal(name=f"v_{name}"), Signal(cfg.acc_addr_bits, name=f"addr_{name}"),
                    Signal(name=f"first_{name}"), Signal(name=f"last_{name}"),
                    Signal(quant_layout(cfg), name=f"q_{name}"))
            with m.If(advance):
                m.d.sync += [r.eq(x) for r, x in zip(regs, (v, addr, first, last, q))]
            return regs

        # --- stage P: the lanes x S products (output registers of the multipliers) -----
        w_shape, x_shape = signed(self.weight_bits), signed(cfg.act_bits)
        prod_p = [[mul(f"mul_l{l}_{i}", op.weights[l][i], w_shape, op.acts[i], x_shape)
                   for i in range(S)] for l in range(L)]
        vp, addrp, firstp, lastp, qp = follow("p", v1, addr1, first1, last1, q1)

        # --- stage D: dot products (adder tree) -----------------------------------------
        dot_shape = signed(cfg.acc_bits)
        dot2 = [Signal(dot_shape, name=f"dot2_l{l}") for l in range(L)]
        v2, addr2, first2, last2, q2 = follow("d", vp, addrp, firstp, lastp, qp)
        with m.If(advance):
            for l in range(L):
                m.d.sync += dot2[l].eq(adder_tree(prod_p[l]))
        # The RAM read of the op in stage P is issued when it moves to stage D; the data
        # arrives while it is in D and is registered (rd_m) for the accumulate stage E,
        # so the RAM's clock-to-output time and the adder are in different cycles.
        m.d.comb += [rd.addr.eq(addrp), rd.en.eq(advance)]

        # Read-modify-write forwarding.  An op's read misses the writes of the two ops
        # ahead of it: the one two ahead writes on the edge the read is issued (the RAM
        # returns the old word), the one just ahead one edge later.  Both collisions are
        # decided one stage early from registered addresses, so the forwarding muxes see
        # only registered selects:
        #   hit2 (registered as the op enters D): the op in E then, two ahead, has the
        #        same address; its sum is in fwd_data while this op is in D and replaces
        #        the read data as it is registered (rd_m);
        #   hit1 (registered as the op enters E): the op in E then, just ahead, has the
        #        same address; its sum is in fwd_data while this op is in E and wins.
        # ``first`` zeroes rd_m and masks hit1, so stage E is one 2:1 mux and the adder.
        ve, addre, firste, laste, qe = follow("e", v2, addr2, first2, last2, q2)
        fwd_data = Signal(data.ArrayLayout(acc_shape, L))      # sum written by the op in E
        hit2, hit1 = Signal(), Signal()
        rd_m = Signal(data.ArrayLayout(acc_shape, L))
        dot_e = [Signal(dot_shape, name=f"dot_e_l{l}") for l in range(L)]
        with m.If(advance):
            m.d.sync += [hit2.eq(ve & (addre == addrp)),
                         hit1.eq(ve & (addre == addr2) & ~first2)]
            for l in range(L):
                m.d.sync += [rd_m[l].eq(Mux(first2, 0, Mux(hit2, fwd_data[l], rd.data[l]))),
                             dot_e[l].eq(dot2[l])]

        # --- stage E: accumulate (read-modify-write) ----------------------------------------
        acc_new = Signal(data.ArrayLayout(acc_shape, L))
        for l in range(L):
            old = Signal(acc_shape, name=f"old_l{l}")
            m.d.comb += [old.eq(Mux(hit1, fwd_data[l], rd_m[l])),
                         acc_new[l].eq(old + dot_e[l])]
        m.d.comb += [wr.addr.eq(addre), wr.data.eq(acc_new), wr.en.eq(ve & advance)]
        with m.If(advance):
            m.d.sync += fwd_data.eq(acc_new)
        # fwd_data is also the registered sum the bias stage adds to
        va, addra, _, _, qa = follow("a", ve & laste, addre, firste, laste, qe)

        # --- stages 3 and 4: bias, then the requantization multiply ---------------------
        # sum = fwd_data + bias goes straight into the input registers of two multipliers
        # (stage 3), as hi * 2**k + lo with lo unsigned so that each product fits one
        # 18 x 18 DSP block for the default widths; their output registers are stage 4.
        v3, addr3, _, _, q3 = follow("b", va, addra, 0, 0, qa)
        v4, addr4, _, _, q4 = follow("m", v3, addr3, 0, 0, q3)
        k = min(sum_shape.width - 1, 17)
        m_shape = unsigned(cfg.mult_bits)
        pp_lo, pp_hi = [], []
        for l in range(L):
            total = Signal(sum_shape, name=f"sum_l{l}")
            m.d.comb += total.eq(fwd_data[l] + qa.lanes[l].bias)
            pp_lo.append(mul(f"rq_lo_l{l}", total[:k], unsigned(k), qa.lanes[l].mult, m_shape))
            pp_hi.append(mul(f"rq_hi_l{l}", total[k:].as_signed(),
                             signed(sum_shape.width - k), qa.lanes[l].mult, m_shape))
        prod5 = [Signal(prod_shape, name=f"prod5_l{l}") for l in range(L)]
        # the shift's decoded forms, registered with the sum: the shifter then starts from
        # flip-flops (``sh - 1`` wraps when ``sh == 0``, where it is not used)
        shz5 = [Signal(name=f"rq_shz5_l{l}") for l in range(L)]
        shm1 = [Signal(cfg.shift_bits, name=f"rq_shm1_l{l}") for l in range(L)]
        v5, addr5, _, _, q5 = follow("j", v4, addr4, 0, 0, q4)
        with m.If(advance):
            for l in range(L):
                m.d.sync += [prod5[l].eq((pp_hi[l] << k) + pp_lo[l]),
                             shz5[l].eq(q4.lanes[l].shift == 0),
                             shm1[l].eq(q4.lanes[l].shift - 1)]

        # --- stage 5: rounding shift; 6: round half up, ReLU, saturate (output) ---------
        sh6 = [Signal(signed(prod_shape.width + 1), name=f"rq_q_l{l}") for l in range(L)]
        shz6 = [Signal(name=f"rq_shz6_l{l}") for l in range(L)]
        v6, addr6, _, _, qs = follow("s", v5, addr5, 0, 0, q5)
        with m.If(advance):
            for l in range(L):
                m.d.sync += [sh6[l].eq(Mux(shz5[l], prod5[l], prod5[l] >> shm1[l])),
                             shz6[l].eq(shz5[l])]
        out = self.results.payload
        with m.If(advance):
            m.d.sync += [self.results.valid.eq(v6), out.addr.eq(addr6)]
            for l in range(L):
                m.d.sync += out.values[l].eq(_requant_tail(m, sh6[l], shz6[l], qs.relu, cfg, l))
        return m


def _requant_tail(m, q, shz, relu, cfg, lane):
    """``clamp(relu(((prod + rnd) >> sh)))`` from ``q = prod >> (sh - 1)`` (stage 5).

    ``(p + 2**(s-1)) >> s == ((p >> (s-1)) + 1) >> 1`` for ``s > 0`` (both floors), so
    the rounding needs no ``2**shift_bits``-wide adder.  The ReLU and saturation tests
    are made on ``q`` itself (for ``s > 0``: ``t = (q + 1) >> 1 > act_max`` iff
    ``q >= 2 act_max + 1``, ``t < act_min`` iff ``q < 2 act_min - 1``, ``t < 0`` iff
    ``q < -1``; for ``s = 0``, ``t = q``), in parallel with the rounding add, which only
    needs the low ``act_bits + 1`` bits of ``q``.  ``shz``: ``s == 0``.
    """
    b = cfg.act_bits
    low_r = Signal(b + 1, name=f"rq_low_l{lane}")                # (q + 1) mod 2**(b + 1)
    m.d.comb += low_r.eq(q[:b + 1] + 1)
    low = Signal(signed(b), name=f"rq_t_l{lane}")               # t mod 2**b
    m.d.comb += low.eq(Mux(shz, q[:b], low_r[1:]))
    over, under, neg = (Signal(name=f"rq_{n}_l{lane}") for n in ("over", "under", "neg"))
    m.d.comb += [
        over.eq(Mux(shz, q > cfg.act_max, q >= 2 * cfg.act_max + 1)),
        under.eq(Mux(shz, q < cfg.act_min, q < 2 * cfg.act_min - 1)),
        neg.eq(Mux(shz, q < 0, q < -1)),
    ]
    res = Signal(signed(b), name=f"rq_out_l{lane}")
    m.d.comb += res.eq(Mux(relu & neg, 0, Mux(over, cfg.act_max,
                                              Mux(under, cfg.act_min, low))))
    return res


def mac_lanes_for_fpga(config) -> MacLanes:
    """`MacLanes` as the accelerator builds it: multipliers as `sd_mul` instances.

    The block registry (`hw.designs`) uses this, so that the MAC measured alone maps its
    products to registered DSP blocks exactly as inside the accelerator.
    """
    return MacLanes(config, dsp_instances=True)


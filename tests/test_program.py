"""Host-side compiler, descriptors, activation layouts and exact division (no simulator).

The RTL itself is checked end to end in ``tb/test_top.py``; these tests pin down the
Python side every run depends on: reciprocals are exact, descriptor fields fit their
registers or fail with a message naming the layer, activation layouts round-trip and
put the ``S`` elements of every window row in ``S`` different banks, and bad programs
are refused before they reach the hardware.
"""

from __future__ import annotations

import numpy as np
import pytest

from amaranth import Cat, Module, Signal
from amaranth.sim import Simulator

from hw.arith import div_step, mixed_add, mixed_layout, mul_const
from hw.config import SDConfig, preset
from hw.descriptor import FIELDS, encode_field, field_widths
from hw.host import StreamCmd, beats_per_word, header_word
from hw.program import ActLayout, LayerSpec, compile_network
from hw.top import memory_map

CFG = preset("default")


def conv(name, cout, cin, h, w, k=3, stride=1, pad=1, kh=None, relu=True):
    kh = kh or k
    ho, wo = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - k) // stride + 1
    return LayerSpec(name=name, kind="conv2d", weight_shape=(cout, cin, kh, k),
                     in_shape=(cin, h, w), out_shape=(cout, ho, wo), stride=(stride, stride),
                     padding=(pad, pad), relu=relu, weights=(0, 10), basis=(0, 8),
                     quant=(0, cout), kept_rows=(1,))


def fc(name, cout, n, relu=False):
    return LayerSpec(name=name, kind="linear", weight_shape=(cout, n), in_shape=(n,),
                     out_shape=(cout,), relu=relu, weights=(0, 10), basis=(0, 8),
                     quant=(0, cout), kept_rows=(1,))


@pytest.mark.parametrize("c", [0, 1, 3, 5, 12])
def test_mul_const_is_shift_add(c):
    """Constant factors become shifts and adds (no ``$mul``), exact on every input."""
    x = Signal(6)
    y = mul_const(x, c)
    assert "*" not in repr(y)
    m = Module()
    out = Signal(len(y) if len(y) else 1)
    m.d.comb += out.eq(y)
    bad = []

    async def bench(ctx):
        for v in range(64):
            ctx.set(x, v)
            if ctx.get(out) != v * c:
                bad.append(v)
    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert not bad, f"x * {c} wrong for x in {bad[:5]}"
    with pytest.raises(ValueError, match="non-negative"):
        mul_const(x, -1)


def _simulate_comb(m, inputs, outputs, cases):
    got = []

    async def bench(ctx):
        for case in cases:
            for sig, v in zip(inputs, case):
                ctx.set(sig, v)
            got.append(tuple(ctx.get(o) for o in outputs))
    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    return got


def test_div_steps_give_quotient_and_remainder():
    """Restoring division steps (the row-address split) for every 7-bit dividend."""
    x, d = Signal(7), Signal(4)
    rem, q_bits = x, []
    for k in reversed(range(7)):
        bit, rem = div_step(rem, d, k)
        q_bits.append(bit)
    m = Module()
    q, r = Signal(7), Signal(7)
    m.d.comb += [q.eq(Cat(*reversed(q_bits))), r.eq(rem)]
    cases = [(v, dv) for dv in (1, 2, 3, 5, 7, 15) for v in range(128)]
    got = _simulate_comb(m, (x, d), (q, r), cases)
    assert got == [(v // dv, v % dv) for v, dv in cases]


@pytest.mark.parametrize("lanes,S", [(4, 3), (3, 3), (1, 2), (8, 4)])
def test_mixed_add_matches_integer_add(lanes, S):
    """Scatter digits ``f = (q*lanes + l)*S + s`` plus a digit step = integer sum."""
    ml = mixed_layout(8, max(1, (lanes - 1).bit_length()), max(1, (S - 1).bit_length()))
    a = Signal(ml)
    dq, dl, ds = Signal(8), Signal(ml["l"].shape), Signal(ml["s"].shape)
    q, l, s = mixed_add(a, dq, dl, ds, lanes, S)
    m = Module()
    out = Signal(ml)
    m.d.comb += [out.q.eq(q), out.l.eq(l), out.s.eq(s)]

    def split(v):
        return v // (S * lanes), (v // S) % lanes, v % S
    rng = np.random.default_rng(lanes * 10 + S)
    cases = [(int(x), int(y)) for x, y in rng.integers(0, 40 * S * lanes, (300, 2))]

    def pack(v):
        return sum(d << ml[k].offset for k, d in zip("qls", split(v)))
    ins = [(pack(x), *split(y)) for x, y in cases]
    got = _simulate_comb(m, (a.as_value(), dq, dl, ds), (out.q, out.l, out.s), ins)
    assert got == [split(x + y) for x, y in cases]


def test_field_widths_fit_registers_for_presets():
    for name in ("tiny", "default", "large"):
        widths = field_widths(preset(name))
        assert set(widths) == {f[0] for f in FIELDS}
        assert all(1 <= bits <= 32 for bits, _ in widths.values())


def test_encode_field_range_and_sign():
    assert encode_field(CFG, "NEG_PAD_X", -1) == 0xFFFF_FFFF
    with pytest.raises(ValueError, match="N_GROUPS"):
        encode_field(CFG, "N_GROUPS", 1 << 20)
    with pytest.raises(ValueError, match="CE_BASE"):
        encode_field(CFG, "CE_BASE", -1)


@pytest.mark.parametrize("shape", [(1, 8, 8), (9, 5, 7), (17, 3, 4)])
def test_fmap_layout_round_trip_and_banks(shape):
    lay = ActLayout("fmap", shape, base=5, pitch=0, lanes=CFG.lanes, S=CFG.basis_size)
    c, h, w = shape
    wq = -(-w // CFG.basis_size)
    lay = ActLayout("fmap", shape, 5, -(-c // CFG.lanes) * h * wq, CFG.lanes, CFG.basis_size)
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, size=(3, *shape))
    words = lay.pack(x, CFG.act_bits)
    assert np.array_equal(lay.unpack(words, 3, CFG.act_bits), x)
    bank, addr, lane = lay.element_addresses()
    # no two elements share a (bank, address, lane) slot
    assert len(set(zip(bank, addr, lane))) == c * h * w
    # S consecutive x of one (c, y) are in S different banks: one read per window row
    bank = bank.reshape(c, h, w)
    for x0 in range(max(1, w - CFG.basis_size + 1)):
        assert len(set(bank[0, 0, x0:x0 + CFG.basis_size])) == min(CFG.basis_size, w)


def test_vector_layout_row_is_one_address():
    n = 23
    lay = ActLayout("vector", (n,), 0, -(-(-(-n // 3)) // CFG.lanes), CFG.lanes, 3)
    bank, addr, lane = lay.element_addresses()
    for r in range(-(-n // 3)):
        sl = slice(3 * r, min(n, 3 * r + 3))
        assert len(set(addr[sl])) == 1 and len(set(lane[sl])) == 1
        assert list(bank[sl]) == list(range(len(bank[sl])))


def test_compile_digits_geometry():
    layers = [conv("c1", 16, 1, 8, 8), conv("c2", 32, 16, 8, 8, stride=2),
              conv("c3", 32, 32, 4, 4, stride=2), fc("fc", 10, 128)]
    prog = compile_network(layers, CFG, batch=5)
    d = prog.descriptors
    assert d[0]["N_TILES"] == 2 and d[0]["TILE"] == CFG.acc_depth
    assert d[0]["LAST_TILE"] == 5 * 64 - CFG.acc_depth
    assert d[2]["FLAGS"] & 2, "the layer before the FC layer writes its output scattered"
    assert not d[3]["FLAGS"] & 2, "the last layer writes a feature map"
    assert prog.output_layout.shape == (10, 1, 1)
    # ping-pong: consecutive tensors in different regions, never overlapping
    for a, b in zip(prog.inputs, prog.inputs[1:]):
        lo_a, hi_a = a.base, a.base + a.pitch * 5
        lo_b, hi_b = b.base, b.base + b.pitch * 5
        assert hi_a <= lo_b or hi_b <= lo_a
    assert len(prog.descriptor_words()) == 4 * len(FIELDS)


def test_compile_refuses_what_the_hardware_cannot_run():
    with pytest.raises(ValueError, match="kernel width 5 is not a multiple of S=3"):
        compile_network([conv("c", 4, 2, 8, 8, k=5, pad=2)], CFG)
    with pytest.raises(ValueError, match="activations need"):
        compile_network([conv("c", 64, 64, 40, 40)], CFG)
    with pytest.raises(ValueError, match="takes 100 inputs"):
        compile_network([conv("c", 4, 1, 8, 8), fc("f", 3, 100)], CFG)
    with pytest.raises(ValueError, match="batch"):
        compile_network([fc("f", 3, 10)], CFG, batch=0)
    with pytest.raises(ValueError, match="weight words"):
        compile_network([LayerSpec(name="f", kind="linear", weight_shape=(3, 10),
                                   in_shape=(10,), out_shape=(3,), weights=(CFG.ce_depth - 5, 10),
                                   quant=(0, 3), kept_rows=(1,))], CFG)


def test_stream_header_and_memory_map():
    assert header_word(StreamCmd.WRITE, 3, 0x12) == (1 << 28) | (3 << 24) | 0x12
    with pytest.raises(ValueError, match="24 bits"):
        header_word(StreamCmd.READ, 0, 1 << 24)
    mm = memory_map(CFG, "sd")
    assert mm["weights"]["width"] == CFG.ce_word_width
    assert beats_per_word(mm["weights"]["width"]) == -(-CFG.ce_word_width // 32)
    assert beats_per_word(32) == 1 and beats_per_word(33) == 2
    assert "basis" not in memory_map(CFG, "dense")
    assert mm["act"]["banks"] == CFG.basis_size


def test_accelerator_ports_have_axi_names():
    from hw.top import SDAccelerator
    names = set(SDAccelerator(SDConfig(lanes=2, max_rows=64, block_rows=32)).signature.members)
    for p in ("s_axil_awaddr", "s_axil_rdata", "s_axis_tdata", "s_axis_tlast",
              "m_axis_tvalid", "m_axis_tready", "irq"):
        assert p in names


@pytest.mark.parametrize("lanes,rpc,kws,cin", [(4, 3, 1, 20), (4, 1, 1, 100), (1, 3, 1, 9),
                                               (3, 6, 2, 7)])
def test_row_address_splits_rows_without_multiplier(lanes, rpc, kws, cin):
    """`RowAddress` (long division, no ``*``) against the integer formula, with stalls."""
    from hw.sequencer import RowAddress
    cfg = SDConfig(lanes=lanes, max_rows=256, block_rows=64)
    dut = RowAddress(cfg)
    S, L = cfg.basis_size, lanes
    cgp, wq, w, wlast = 37, 5, 9, 7
    rows = list(range(cin * rpc))
    want = []
    for r in rows:
        c, rem = divmod(r, rpc)
        ky, kxs = divmod(rem, kws)
        want.append(((c // L) * cgp + ky * wq + kxs, c % L, ky, kxs * S,
                     wlast if c == cin - 1 else w))
    got = []
    rng = np.random.default_rng(lanes + rpc)

    async def bench(ctx):
        for k, v in dict(RPC=rpc, KWS=kws, CIN=cin, IN_CGP=cgp, IN_WQ=wq, IN_W=w,
                         IN_WLAST=wlast, RPC_L=rpc * L, LAST_ROW=(cin - 1) * rpc).items():
            ctx.set(getattr(dut.desc, k), v)
        i = 0
        for _ in range(20 * len(rows) + 100):
            send = i < len(rows) and rng.random() < 0.7
            ctx.set(dut.rows.valid, send)
            ctx.set(dut.rows.payload.row, rows[i] if send else 0)
            ctx.set(dut.info.ready, rng.random() < 0.6)
            await ctx.delay(1e-7)
            taken = send and ctx.get(dut.rows.ready)
            if ctx.get(dut.info.valid) and ctx.get(dut.info.ready):
                p = dut.info.payload
                got.append((ctx.get(p.row_off), ctx.get(p.lane), ctx.get(p.ky),
                            ctx.get(p.kx0), ctx.get(p.wlim)))
            await ctx.tick()
            i += bool(taken)
            if len(got) == len(rows):
                break
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == want
    assert dut.latency == len(RowAddress.stages(cfg)) + 1

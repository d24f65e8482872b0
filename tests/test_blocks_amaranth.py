"""Fast Amaranth-simulator tests of the RTL blocks against the golden model.

The cocotb/Verilator regression (``tb/test_*.py``) is the sign-off; these tests run the
same blocks in ``amaranth.sim`` on small configurations in a few seconds, so a broken
block shows up in ``make test`` without a Verilator build.  Expected values come from
``golden/`` (`SDWeight.rebuilt_int`, `golden.pack`, `golden.reference.requantize`).
"""

from __future__ import annotations

import gc
import random

import numpy as np
import pytest
from amaranth import Module, Signal
from amaranth.sim import Simulator

from golden.pack import CeStreamError, decode_ce_stream, pack_ce
from golden.reference import requantize
from hw.basis_array import BasisArray
from hw.config import SDConfig
from hw.decoder import SparseDecoder, _reciprocal, const_div
from hw.dense import DenseRowReader
from hw.layouts import DecodeError, decoded_row_layout, results_layout, weights_row_layout
from hw.mac import MacLanes
from tb.common import unpack
from tb.stim import (basis_loads, expected_weight_rows, mac_ops_for_rows, random_quant,
                     random_sdweight, row_dict, rows_of)

#: Small configurations: S = 3 / 4 / 5, 1 to 3 lanes, one and two terms, different
#: exponent ranges and basis widths; short blocks so that bank swaps happen mid-group.
CONFIGS = {
    "S3_L2": SDConfig(basis_size=3, lanes=2, block_rows=4, max_rows=40, acc_depth=16,
                      quant_depth=16),
    "S4_L3_t2": SDConfig(basis_size=4, lanes=3, terms=2, exp_bits=2, exp_min=-2, exp_max=0,
                         basis_bits=6, block_rows=5, max_rows=30, acc_depth=8, quant_depth=16,
                         acc_bits=28, bias_bits=20, mult_bits=10, shift_bits=5),
    "S5_L1_e4": SDConfig(basis_size=5, lanes=1, exp_bits=4, exp_min=-9, exp_max=2,
                         block_rows=3, max_rows=20, acc_depth=4, quant_depth=8,
                         ce_word_bits=16, acc_bits=40),
}


# ------------------------------------------------------------------ sim helpers
def _simulate(dut, *benches):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for bench in benches:
        sim.add_testbench(bench)
    sim.run()


def _source(stream, items, stall, seed, sent=None, before=None):
    """Testbench pushing ``items`` with random idle cycles (probability ``stall``)."""
    rng = random.Random(seed)

    async def bench(ctx):
        if before is not None:
            await before(ctx)
        cycle = 0
        for item in items:
            while rng.random() < stall:
                ctx.set(stream.valid, 0)
                await ctx.tick()
                cycle += 1
            ctx.set(stream.valid, 1)
            ctx.set(stream.payload, item)
            while True:
                _, _, ready = await ctx.tick().sample(stream.ready)
                cycle += 1
                if ready:
                    break
            if sent is not None:
                sent.append(cycle)
        ctx.set(stream.valid, 0)
    return bench


def _sink(stream, layout, count, stall, seed, got, cycles=None, limit=100_000):
    """Testbench taking ``count`` items with random back-pressure; unpacks to dicts."""
    rng = random.Random(seed)

    async def bench(ctx):
        cycle = 0
        while len(got) < count and cycle < limit:
            ctx.set(stream.ready, int(rng.random() >= stall))
            _, _, valid, ready, payload = await ctx.tick().sample(
                stream.valid, stream.ready, stream.payload.as_value())
            cycle += 1
            if valid and ready:
                got.append(unpack(layout, payload))
                if cycles is not None:
                    cycles.append(cycle)
        ctx.set(stream.ready, 0)
    return bench


def _first_diff(got, expected):
    for k, (g, e) in enumerate(zip(got, expected)):
        if g != e:
            return f"item {k}: got {g}, expected {e}"
    return f"{len(got)} items, expected {len(expected)}"


# ------------------------------------------------------------------ basis array
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("stall", [0.0, 0.3, 0.7])
def test_basis_array_rebuilds_golden_weights(name, stall):
    cfg = CONFIGS[name]
    sdw = random_sdweight(cfg, out_channels=2 * cfg.lanes + 1, n_rows=11, seed=len(name))
    rows = rows_of(sdw)
    expected = expected_weight_rows(sdw, rows)
    dut = BasisArray(cfg)
    got = []
    _simulate(dut,
              _source(dut.basis, basis_loads(sdw, rows), stall, 1),
              _source(dut.rows, rows, stall, 2),
              _sink(dut.weights, weights_row_layout(cfg), len(expected), stall, 3, got))
    assert got == expected, _first_diff(got, expected)


def test_basis_array_latency_and_full_throughput():
    """No stalls: one row per cycle through block changes, latency `BasisArray.latency`."""
    cfg = CONFIGS["S3_L2"]
    sdw = random_sdweight(cfg, out_channels=cfg.lanes, n_rows=40, keep=1.0, seed=5,
                          empty_group=False)
    rows = rows_of(sdw)
    # Rows wait for the first bank: give it a head start of `lanes` cycles.
    async def head_start(ctx):
        await ctx.tick().repeat(cfg.lanes + 1)
    dut = BasisArray(cfg)
    sent, got, cycles = [], [], []
    _simulate(dut,
              _source(dut.basis, basis_loads(sdw, rows), 0.0, 1),
              _source(dut.rows, rows, 0.0, 2, sent=sent, before=head_start),
              _sink(dut.weights, weights_row_layout(cfg), len(rows), 0.0, 3, got, cycles))
    assert got == expected_weight_rows(sdw, rows)
    assert sent == list(range(sent[0], sent[0] + len(rows))), "a row waited (bubble)"
    offset = cfg.lanes + 1
    lat = {c - (s + offset) for s, c in zip(sent, cycles)}
    assert lat == {BasisArray.latency(cfg)}, f"latency {sorted(lat)}"


# ------------------------------------------------------------------ MAC lanes
def _mac_case(cfg, seed, groups=4):
    """Random groups of ops (P = 1 included) and the golden results, in order."""
    rng = np.random.default_rng(seed)
    S, L = cfg.basis_size, cfg.lanes
    wlim = 1 << min(cfg.rebuilt_weight_bits - 1, 9)
    ops, quants, expected = [], [], []
    for g in range(groups):
        n_rows = int(rng.integers(1, 5))
        n_pos = int(rng.choice([1, 2, 3, cfg.acc_depth]))
        w = rng.integers(-wlim, wlim, (n_rows, L, S))
        x = rng.integers(cfg.act_min, cfg.act_max + 1, (n_pos, n_rows, S))
        first = [r == 0 for r in range(n_rows)]
        last = [r == n_rows - 1 for r in range(n_rows)]
        acc = np.einsum("rls,prs->lp", w, x)                       # (L, P)
        bias, mult, shift = random_quant(cfg, rng, L, acc_scale=int(np.abs(acc).max()) + 1)
        relu = bool(rng.integers(0, 2))
        y = requantize(acc[None], bias, mult, shift, relu, cfg)[0]  # (L, P)
        q = {"lanes": [{"bias": int(bias[l]), "mult": int(mult[l]), "shift": int(shift[l])}
                       for l in range(L)], "relu": int(relu)}
        group_ops = mac_ops_for_rows(w, first, last, x)
        ops += group_ops
        quants += [q] * len(group_ops)
        expected += [{"addr": p, "values": [int(v) for v in y[:, p]]} for p in range(n_pos)]
    return ops, quants, expected


def _mac_source(dut, ops, quants, stall, seed, sent=None):
    rng = random.Random(seed)

    async def bench(ctx):
        cycle = 0
        for op, q in zip(ops, quants):
            while rng.random() < stall:
                ctx.set(dut.ops.valid, 0)
                await ctx.tick()
                cycle += 1
            ctx.set(dut.ops.valid, 1)
            ctx.set(dut.ops.payload, op)
            ctx.set(dut.quant, q)
            while True:
                _, _, ready = await ctx.tick().sample(dut.ops.ready)
                cycle += 1
                if ready:
                    break
            if sent is not None:
                sent.append(cycle)
        ctx.set(dut.ops.valid, 0)
    return bench


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("stall", [0.0, 0.3, 0.7])
def test_mac_lanes_match_requantize(name, stall):
    cfg = CONFIGS[name]
    ops, quants, expected = _mac_case(cfg, seed=len(name) + int(stall * 10))
    dut = MacLanes(cfg)
    got = []
    _simulate(dut, _mac_source(dut, ops, quants, stall, 1),
              _sink(dut.results, results_layout(cfg), len(expected), stall, 2, got))
    assert got == expected, _first_diff(got, expected)


def test_mac_lanes_back_to_back_same_address_full_rate():
    """P = 1 (fully connected): every op hits the same accumulator, one op per cycle."""
    cfg = CONFIGS["S3_L2"]
    rng = np.random.default_rng(7)
    n_rows = 50
    w = rng.integers(-300, 300, (n_rows, cfg.lanes, cfg.basis_size))
    x = rng.integers(cfg.act_min, cfg.act_max + 1, (1, n_rows, cfg.basis_size))
    acc = np.einsum("rls,prs->lp", w, x)
    zeros = np.zeros(cfg.lanes, np.int64)
    y = requantize(acc[None], zeros, np.ones(cfg.lanes, np.int64) * 3, zeros + 10, False, cfg)
    ops = mac_ops_for_rows(w, [r == 0 for r in range(n_rows)],
                           [r == n_rows - 1 for r in range(n_rows)], x)
    q = {"lanes": [{"bias": 0, "mult": 3, "shift": 10}] * cfg.lanes, "relu": 0}
    dut = MacLanes(cfg)
    sent, got, cycles = [], [], []
    _simulate(dut, _mac_source(dut, ops, [q] * len(ops), 0.0, 1, sent),
              _sink(dut.results, results_layout(cfg), 1, 0.0, 2, got, cycles))
    assert got == [{"addr": 0, "values": [int(v) for v in y[0, :, 0]]}]
    assert sent == list(range(1, n_rows + 1)), "ops were not accepted one per cycle"
    assert cycles[0] - sent[-1] == MacLanes.LATENCY


# ------------------------------------------------------------------ decoder
def _run_decoder(cfg, words, flags, n_groups, n_rows, stall, seed):
    """Feed one stream; returns (rows, error, error_code, busy) after it settles."""
    dut = SparseDecoder(cfg)
    got, status = [], {}

    async def start(ctx):
        ctx.set(dut.n_groups, n_groups)
        ctx.set(dut.n_rows, n_rows)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)

    items = [{"data": w, "last": int(f)} for w, f in zip(words, flags)]
    source = _source(dut.words, items, stall, seed, before=start)
    # The sink stops on its own after enough idle cycles; the status is read then.
    sink = _sink(dut.rows, decoded_row_layout(cfg), 10**9, stall, seed + 1, got,
                 limit=60 + 8 * len(words))

    async def status_bench(ctx):
        await ctx.tick().repeat(70 + 8 * len(words))
        status.update(error=ctx.get(dut.error), code=ctx.get(dut.error_code),
                      busy=ctx.get(dut.busy))
    _simulate(dut, source, sink, status_bench)
    return got, status


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("stall", [0.0, 0.5])
def test_decoder_matches_golden_unpacker(name, stall):
    cfg = CONFIGS[name]
    sdw = random_sdweight(cfg, out_channels=2 * cfg.lanes + 1, n_rows=9, seed=3)
    words = pack_ce(sdw)
    flags = [k == len(words) - 1 for k in range(len(words))]
    expected = [row_dict(d) for d in decode_ce_stream(words, cfg, sdw.n_groups, sdw.rows)]
    got, status = _run_decoder(cfg, words, flags, sdw.n_groups, sdw.rows, stall, 1)
    assert got == expected, _first_diff(got, expected)
    assert status == {"error": 0, "code": 0, "busy": 0}


@pytest.mark.parametrize("corruption", ["tag", "count", "code", "truncate", "trailing",
                                        "order", "args"])
def test_decoder_flags_the_golden_error(corruption):
    cfg = CONFIGS["S4_L3_t2"]
    sdw = random_sdweight(cfg, out_channels=cfg.lanes, n_rows=9, keep=1.0, seed=4)
    words, g, r = pack_ce(sdw), sdw.n_groups, sdw.rows
    wpr = cfg.words_per_record
    if corruption == "tag":
        words[0] ^= 1 << cfg.row_bits
    elif corruption == "count":
        words[0] = (words[0] & ~((1 << cfg.row_bits) - 1)) | (r + 1)
    elif corruption == "code":       # negative zero: lane 0, element 0, term 0
        words[wpr] = (words[wpr] & ~(((1 << cfg.code_bits) - 1) << cfg.row_bits)) \
            | ((1 << cfg.exp_bits) << cfg.row_bits)
    elif corruption == "truncate":
        words = words[:-1]
    elif corruption == "trailing":
        words = words + [0]
    elif corruption == "order":
        words[wpr:2 * wpr], words[2 * wpr:3 * wpr] = words[2 * wpr:3 * wpr], words[wpr:2 * wpr]
    elif corruption == "args":
        g = 0
    flags = [k == len(words) - 1 for k in range(len(words))]
    with pytest.raises(CeStreamError) as err:
        decode_ce_stream(words, cfg, g, r, last=flags)
    got, status = _run_decoder(cfg, words, flags, g, r, 0.3, 2)
    assert status == {"error": 1, "code": int(err.value.code), "busy": 0}, \
        f"golden {err.value.code.name}, DUT {DecodeError(status['code']).name}"


# ------------------------------------------------------------------ dense reader
@pytest.mark.parametrize("stall", [0.0, 0.5])
def test_dense_reader_tags_and_weights(stall):
    cfg = CONFIGS["S3_L2"]
    wb, G, R = 8, 3, 9
    rng = np.random.default_rng(3)
    w = rng.integers(-128, 128, (G, R, cfg.lanes, cfg.basis_size))
    words, expected = [], []
    for g in range(G):
        for r in range(R):
            data = 0
            for l in range(cfg.lanes):
                for i in range(cfg.basis_size):
                    data |= (int(w[g, r, l, i]) & 0xFF) << ((l * cfg.basis_size + i) * wb)
            words.append({"data": data, "last": int(g == G - 1 and r == R - 1)})
            expected.append({"row": r, "block": r // cfg.block_rows, "group": g,
                             "new_block": int(r % cfg.block_rows == 0), "first": int(r == 0),
                             "last": int(r == R - 1), "empty": 0,
                             "weights": w[g, r].tolist()})
    dut = DenseRowReader(cfg, wb)
    got = []

    async def start(ctx):
        ctx.set(dut.n_groups, G)
        ctx.set(dut.n_rows, R)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
    _simulate(dut, _source(dut.words, words, stall, 1, before=start),
              _sink(dut.rows, weights_row_layout(cfg, wb), len(expected), stall, 2, got))
    assert got == expected, _first_diff(got, expected)


# ------------------------------------------------------------------ helpers / API
@pytest.mark.parametrize("divisor", [3, 5, 7, 96, 192, 1000])
def test_reciprocal_division_exact(divisor):
    max_value = 4095
    mult, k = _reciprocal(divisor, max_value)
    n = np.arange(max_value + 1)
    assert np.array_equal((n * mult) >> k, n // divisor)


@pytest.mark.parametrize("divisor", [3, 64, 96, 192, 1000])
def test_const_div_circuit(divisor):
    """The row -> block division (table after the power-of-two shift, or shift-add
    reciprocal), simulated for every row index."""
    max_value = 1023
    m = Module()
    value, quotient = Signal(10), Signal(10)
    m.d.comb += quotient.eq(const_div(value, divisor, max_value))
    bad = []

    async def bench(ctx):
        for v in range(max_value + 1):
            ctx.set(value, v)
            if ctx.get(quotient) != v // divisor:
                bad.append((v, ctx.get(quotient)))
    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert not bad, f"wrong quotients (value, got): {bad[:5]}"


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
@pytest.mark.parametrize("cls", [SparseDecoder, BasisArray, MacLanes, DenseRowReader])
def test_blocks_reject_a_non_config(cls):
    with pytest.raises(TypeError, match="SDConfig"):
        cls({"lanes": 8})
    gc.collect()  # free the half-built component while the warning filter holds


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_mac_rejects_weights_too_wide_for_the_accumulator():
    with pytest.raises(ValueError, match="weight_bits"):
        MacLanes(SDConfig(), weight_bits=40)
    gc.collect()

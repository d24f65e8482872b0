"""Amaranth-simulator tests of the memory read streamer the loaders share, and of the
quant loader.

`hw.memories.ReadStreamer` sits between every loader (`hw.loaders`) and its RAM; the
end-to-end tests (``tb/test_top.py``) only see it through whole networks.  Here it runs
against a `SyncRAM` with random request gaps and random back-pressure: every word comes
back once, in order, with its tag; free-flowing, it streams one word per cycle with a
latency of two cycles.
"""

from __future__ import annotations

import random

import pytest
from amaranth import Module
from amaranth.sim import Simulator

from hw.memories import ReadStreamer, SyncRAM

DEPTH, WIDTH = 64, 12


def _dut():
    m = Module()
    m.submodules.ram = ram = SyncRAM(WIDTH, DEPTH, init=[(a * 37 + 5) % (1 << WIDTH)
                                                         for a in range(DEPTH)])
    m.submodules.rs = rs = ReadStreamer(6, WIDTH, 4)
    m.d.comb += [ram.r_addr.eq(rs.r_addr), ram.r_en.eq(rs.r_en), rs.r_data.eq(ram.r_data)]
    return m, rs


def _run(n, req_stall, resp_stall, seed):
    """Stream ``n`` random addresses; return (words seen, issue cycles, take cycles)."""
    m, rs = _dut()
    rng = random.Random(seed)
    addrs = [rng.randrange(DEPTH) for _ in range(n)]
    issued, taken, got = [], [], []

    async def producer(ctx):
        cycle = 0
        for i, a in enumerate(addrs):
            while rng.random() < req_stall:
                ctx.set(rs.req.valid, 0)
                await ctx.tick()
                cycle += 1
            ctx.set(rs.req.valid, 1)
            ctx.set(rs.req.payload.addr, a)
            ctx.set(rs.req.payload.tag, i % 16)
            while True:
                _, _, ready = await ctx.tick().sample(rs.req.ready)
                cycle += 1
                if ready:
                    issued.append(cycle - 1)
                    break
        ctx.set(rs.req.valid, 0)

    async def consumer(ctx):
        srng = random.Random(seed + 1)
        cycle = 0
        while len(got) < n and cycle < 20 * n + 50:
            ready = srng.random() >= resp_stall
            ctx.set(rs.resp.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(rs.resp.valid, rs.resp.payload)
            if valid and ready:
                got.append((payload.data, payload.tag))
                taken.append(cycle)
            cycle += 1

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    ram_words = [(a * 37 + 5) % (1 << WIDTH) for a in range(DEPTH)]
    want = [(ram_words[a], i % 16) for i, a in enumerate(addrs)]
    return got, want, issued, taken


@pytest.mark.parametrize("req_stall,resp_stall,seed", [
    (0.0, 0.0, 1), (0.3, 0.0, 2), (0.0, 0.5, 3), (0.4, 0.4, 4), (0.0, 0.9, 5)])
def test_read_streamer_order_and_backpressure(req_stall, resp_stall, seed):
    got, want, _, _ = _run(300, req_stall, resp_stall, seed)
    assert got == want, "words lost, duplicated or out of order under back-pressure"


def test_read_streamer_throughput_and_latency():
    """Free-flowing: one request accepted per cycle, each word taken two cycles later."""
    got, want, issued, taken = _run(100, 0.0, 0.0, 9)
    assert got == want
    assert issued == list(range(100)), "requests were not accepted every cycle"
    assert taken == [c + 2 for c in issued], "latency is not two cycles"


# ------------------------------------------------------------------ QuantLoader
@pytest.mark.parametrize("lanes,cout,n_tiles,stall,seed", [
    (3, 7, 2, 0.0, 1),      # last group half full, two tiles, free-flowing sequencer
    (3, 6, 1, 0.6, 2),      # full groups, random back-pressure
    (2, 3, 3, 0.3, 3),
    (1, 4, 2, 0.5, 4),      # one lane
])
def test_quant_loader_bundles(lanes, cout, n_tiles, stall, seed):
    """Per tile and group one bundle of the channels' quant words, lanes >= COUT zero,
    ``relu`` from FLAGS, in order under back-pressure; ``idle`` once all are formed."""
    from hw.config import SDConfig
    from hw.descriptor import FLAG_RELU
    from hw.loaders import QuantLoader
    cfg = SDConfig(basis_size=3, lanes=lanes, block_rows=4, max_rows=40, acc_depth=16,
                   quant_depth=16)
    rng = random.Random(seed)
    words = [rng.getrandbits(cfg.quant_word_bits) for _ in range(cfg.quant_depth)]
    base = cfg.quant_depth - cout - rng.randrange(2)
    n_groups = -(-cout // lanes)
    m = Module()
    m.submodules.ram = ram = SyncRAM(cfg.quant_word_bits, cfg.quant_depth, init=words)
    m.submodules.dut = dut = QuantLoader(cfg)
    m.d.comb += [ram.r_addr.eq(dut.r_addr), ram.r_en.eq(dut.r_en),
                 dut.r_data.eq(ram.r_data)]
    want = [([words[base + g * lanes + l] if g * lanes + l < cout else 0
              for l in range(lanes)], 1)
            for _ in range(n_tiles) for g in range(n_groups)]
    got = []

    async def bench(ctx):
        for name, value in (("COUT", cout), ("QUANT_BASE", base), ("N_GROUPS", n_groups),
                            ("N_TILES", n_tiles), ("FLAGS", FLAG_RELU)):
            ctx.set(getattr(dut.desc, name), value)
        ctx.set(dut.layer_start, 1)
        await ctx.tick()
        ctx.set(dut.layer_start, 0)
        assert not ctx.get(dut.idle)
        for _ in range(40 * len(want)):
            ready = rng.random() >= stall
            ctx.set(dut.bundles.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.bundles.valid,
                                                           dut.bundles.payload)
            if valid and ready:
                got.append(([payload.lanes[l].as_value().value for l in range(lanes)],
                            int(payload.relu)))
            if len(got) == len(want) and ctx.get(dut.idle):
                break
        ctx.set(dut.bundles.ready, 0)
        for _ in range(5):
            await ctx.tick()
        assert not ctx.get(dut.bundles.valid), "a bundle beyond the layer's last"

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == want

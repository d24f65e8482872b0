"""Amaranth-simulator tests of the memory read streamer the loaders share.

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

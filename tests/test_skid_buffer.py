"""`hw.datapath.SkidBuffer` in the Amaranth simulator: order, no loss, one item per cycle,
and ``i.ready`` / ``o.valid`` that depend on registers only."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from hw.datapath import SkidBuffer


def _run(n_items: int, p_in: float, p_out: float, seed: int):
    """Drive random valid / ready; return (items sent, items received, cycles)."""
    rng = random.Random(seed)
    dut = SkidBuffer(16)
    items = [rng.randrange(1 << 16) for _ in range(n_items)]
    got, sent, cycles = [], [], [0]

    async def bench(ctx):
        i = 0
        while len(got) < n_items:
            offer = i < n_items and rng.random() < p_in
            take = rng.random() < p_out
            ctx.set(dut.i.valid, offer)
            ctx.set(dut.i.payload, items[i] if i < n_items else 0)
            ctx.set(dut.o.ready, take)
            # i.ready and o.valid are registers: settle without a clock edge, then check
            # they did not follow this cycle's o.ready / i.valid
            ready, valid = ctx.get(dut.i.ready), ctx.get(dut.o.valid)
            ctx.set(dut.o.ready, not take)
            ctx.set(dut.i.valid, not offer)
            assert (ctx.get(dut.i.ready), ctx.get(dut.o.valid)) == (ready, valid)
            ctx.set(dut.o.ready, take)
            ctx.set(dut.i.valid, offer)
            if valid and take:
                got.append(ctx.get(dut.o.payload))
            if offer and ready:
                sent.append(items[i])
                i += 1
            await ctx.tick()
            cycles[0] += 1
            assert cycles[0] < 20 * n_items + 100, "skid buffer stopped moving"

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return items, sent, got, cycles[0]


@pytest.mark.parametrize("p_in,p_out,seed", [(0.5, 0.5, 1), (1.0, 0.3, 2), (0.3, 1.0, 3),
                                             (0.9, 0.9, 4)])
def test_order_and_no_loss(p_in, p_out, seed):
    items, sent, got, _ = _run(300, p_in, p_out, seed)
    assert sent == items and got == items


def test_one_item_per_cycle():
    """Always valid, always ready: n items in n + 1 cycles (one cycle of latency)."""
    items, _, got, cycles = _run(100, 1.0, 1.0, 5)
    assert got == items and cycles == len(items) + 1

"""The ``sd_ram`` Verilog module behind `hw.memories.SyncRAM`, under Verilator.

Both forms (read-old-data on a collision, and ``collision_free``) store and return
words like a Python dict under random writes with byte enables and random reads; a
reference dict is the model.  The ``collision_free`` form must stop the simulation with
an error that names the address when one cycle reads and writes the same address.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import cocotb
import pytest
from cocotb.triggers import ReadOnly, RisingEdge, Timer

from hw.config import PRESETS
from hw.memories import SD_RAM_VERILOG, SyncRAM
from tb.common import ClockReset
from tb.harness import run_cocotb

WIDTH, DEPTH, GRAN = 16, 32, 8


def _ram_verilog(collision_free: bool):
    def factory(config):
        from tb.harness import to_verilog
        ram = SyncRAM(WIDTH, DEPTH, granularity=GRAN, collision_free=collision_free)
        return to_verilog(ram, "ram_top") + "\n" + SD_RAM_VERILOG
    factory.__name__ = f"sd_ram_cf{int(collision_free)}"
    return factory


async def _idle(dut):
    dut.r_en.value = 0
    dut.w_en.value = 0
    await RisingEdge(dut.clk)


# =========================================================================== cocotb side
@cocotb.test()
async def random_access(dut):
    """Random byte-enabled writes and reads at other addresses match a dict model."""
    clock = _clock(dut)
    await clock.reset()
    rng = random.Random(7)
    model = {a: 0 for a in range(DEPTH)}
    reads = 0
    for _ in range(2000):
        w_addr = rng.randrange(DEPTH)
        w_en = rng.randrange(1 << (WIDTH // GRAN))
        w_data = rng.randrange(1 << WIDTH)
        r_addr = rng.choice([a for a in range(DEPTH) if a != w_addr or not w_en])
        r_en = rng.random() < 0.7
        dut.w_addr.value, dut.w_en.value, dut.w_data.value = w_addr, w_en, w_data
        dut.r_addr.value, dut.r_en.value = r_addr, int(r_en)
        await RisingEdge(dut.clk)
        await ReadOnly()
        if r_en:
            got = int(dut.r_data.value)
            assert got == model[r_addr], (f"read {r_addr}: got {got:#x}, expected "
                                          f"{model[r_addr]:#x}")
            reads += 1
        for k in range(WIDTH // GRAN):
            if (w_en >> k) & 1:
                mask = ((1 << GRAN) - 1) << (k * GRAN)
                model[w_addr] = (model[w_addr] & ~mask) | (w_data & mask)
        await Timer(1, unit="ns")            # leave the read-only phase before writing
    assert reads > 1000


def _clock(dut) -> ClockReset:
    return ClockReset(dut, rst="rst" if hasattr(dut, "rst") else None)


@cocotb.test()
async def collision(dut):
    """A read and a write of one address in the same cycle."""
    clock = _clock(dut)
    await clock.reset()
    dut.w_addr.value, dut.w_en.value, dut.w_data.value = 5, 1, 0x1234
    dut.r_addr.value, dut.r_en.value = 5, 1
    await RisingEdge(dut.clk)
    await _idle(dut)
    await _idle(dut)


# ============================================================================ pytest side
@pytest.mark.sim
@pytest.mark.parametrize("collision_free", [False, True], ids=["read_old", "collision_free"])
def test_sd_ram_random_access(collision_free):
    run_cocotb(_ram_verilog(collision_free), PRESETS["default"], test_module=__name__,
               toplevel="ram_top", testcase="random_access")


@pytest.mark.sim
def test_sd_ram_collision_free_stops_on_collision():
    run_cocotb(_ram_verilog(False), PRESETS["default"], test_module=__name__,
               toplevel="ram_top", testcase="collision")      # read-old form: allowed
    with pytest.raises(AssertionError) as failure:
        run_cocotb(_ram_verilog(True), PRESETS["default"], test_module=__name__,
                   toplevel="ram_top", testcase="collision")
    log = re.search(r"log: (\S+sim\.log)", str(failure.value)).group(1)
    assert "address 5 read and written in one cycle" in Path(log).read_text()

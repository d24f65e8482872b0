"""RTL regression of the basis-multiply array (`hw.basis_array.BasisArray`) under Verilator.

Random SD layers (every exponent code and both signs, bank swaps inside groups, an empty
group, lanes beyond ``Cout`` in the last group) go through the array with 0 %, 30 % and
70 % idle cycles on both inputs and back-pressure on the output; the scoreboard compares
every rebuilt weight with `SDWeight.rebuilt_int`.  Directed tests: extreme values
(``basis_min`` shifted by ``max_shift``, all terms negative), a reset in mid-stream, and
the steady state (>= 1000 rows at one row per ``rebuild_cycles`` cycles, latency
`BasisArray.latency`).  Besides the block configurations of `tb.stim.RTL_CONFIGS` (all at
full rate) every test runs on time-multiplexed builds (`REBUILD_CONFIGS`:
``rebuild_cycles`` 2 and 4 on the default preset, 2 with two lanes and two terms, 3 with
six lanes).
"""

from __future__ import annotations

import itertools

import cocotb
import pytest

from hw.basis_array import BasisArray
from hw.config import SDConfig
from hw.layouts import basis_word_layout, decoded_row_layout, weights_row_layout
from tb.common import ClockReset, Scoreboard, StreamDriver, StreamSink, random_stalls
from tb.harness import config_from_env
from tb.stim import (RTL_CONFIGS, basis_loads, expected_weight_rows, random_sdweight, run_block,
                     rows_of)


class BasisArrayTB:
    """Drivers on ``basis`` and ``rows``, a sink on ``weights``, golden scoreboard."""

    def __init__(self, dut, stall: float = 0.0, seed: int = 0):
        self.config = cfg = config_from_env()
        self.clock = ClockReset(dut)
        self.scoreboard = Scoreboard(f"BasisArray[stall={stall}]")
        self.basis = StreamDriver(dut, "basis", basis_word_layout(cfg), self.clock,
                                  idle=random_stalls(stall, seed))
        self.rows = StreamDriver(dut, "rows", decoded_row_layout(cfg), self.clock,
                                 idle=random_stalls(stall, seed + 1))
        self.sink = StreamSink(dut, "weights", weights_row_layout(cfg), self.clock,
                               stall=random_stalls(stall, seed + 2),
                               callback=lambda item, cycle: self.scoreboard.compare(item, cycle))
        self.expected_total = 0         # sink items expected since the start

    def new_phase(self, name: str) -> None:
        """Fresh scoreboard after a mid-stream reset; what arrived so far is done with."""
        self.scoreboard = Scoreboard(name)
        self.expected_total = len(self.sink.items)

    def send(self, sdw) -> int:
        """Queue a layer's rows and bases; expect the golden weights. Returns the row count."""
        rows = rows_of(sdw)
        for row, exp in zip(rows, expected_weight_rows(sdw, rows)):
            self.scoreboard.expect(exp, row=row["row"], group=row["group"])
        self.basis.send_all(basis_loads(sdw, rows))
        self.rows.send_all(rows)
        self.expected_total += len(rows)
        return len(rows)

    async def finish(self) -> None:
        count = self.expected_total
        await self.sink.wait_for(count, timeout_cycles=200 + 30 * count)
        await self.clock.cycles(8)       # an extra output would show up here
        self.scoreboard.check()


def _coverage(sdw) -> set[tuple[int, int]]:
    """(shift code, sign) pairs of the non-zero terms of ``sdw``."""
    k = sdw.shift_codes()[sdw.mask]
    s = sdw.sign[sdw.mask].long()
    return set(zip(k.tolist(), s.tolist()))


@cocotb.test()
@cocotb.parametrize(stall=[0.0, 0.3, 0.7])
async def basis_array_random_layers(dut, stall):
    """Random layers, all codes and signs, bank swaps, empty group, partial last group."""
    tb = BasisArrayTB(dut, stall, seed=int(stall * 100))
    cfg = tb.config
    await tb.clock.reset()
    for seed in range(2):
        sdw = random_sdweight(cfg, out_channels=2 * cfg.lanes + 1,
                              n_rows=min(cfg.max_rows, 3 * cfg.block_rows + 2), seed=seed)
        want = {(k, s) for k in range(cfg.max_shift + 1) for s in (0, 1)}
        assert _coverage(sdw) == want, "stimulus misses exponent codes or signs"
        tb.send(sdw)
    await tb.finish()


@cocotb.test()
async def basis_array_extremes(dut):
    """Largest magnitudes: basis_min / basis_max shifted by max_shift, all signs."""
    tb = BasisArrayTB(dut)
    cfg = tb.config
    await tb.clock.reset()
    for value, negative in itertools.product((cfg.basis_min, cfg.basis_max), (False, True)):
        sdw = random_sdweight(cfg, out_channels=cfg.lanes, n_rows=4, density=1.0, keep=1.0,
                              empty_group=False, seed=1)
        sdw.basis.fill_(value)
        sdw.exponent.fill_(cfg.exp_max)
        sdw.sign.fill_(negative)
        tb.send(sdw)
    await tb.finish()


@cocotb.test()
async def basis_array_reset_mid_stream(dut):
    """Reset while rows and bases are in flight; the next layer must come out exact."""
    tb = BasisArrayTB(dut, stall=0.3, seed=9)
    cfg = tb.config
    await tb.clock.reset()
    sdw = random_sdweight(cfg, out_channels=2 * cfg.lanes, n_rows=2 * cfg.block_rows + 3,
                          seed=4)
    tb.send(sdw)
    await tb.clock.cycles(25)
    tb.basis.flush()
    tb.rows.flush()
    await tb.clock.reset(3)
    before = tb.scoreboard
    assert before.mismatched == 0 and before.matched > 0, \
        f"before the reset: {before.matched} matched, {before.mismatched} mismatched"
    tb.new_phase("BasisArray[after reset]")
    sdw = random_sdweight(cfg, out_channels=cfg.lanes + 1, n_rows=cfg.block_rows + 2, seed=5)
    tb.send(sdw)
    await tb.finish()


@cocotb.test()
async def basis_array_steady_state(dut):
    """>= 1000 rows with no stalls: one row per cycle through block changes."""
    tb = BasisArrayTB(dut)
    cfg = tb.config
    await tb.clock.reset()
    # Every row kept, enough groups for >= 1000 rows in total.
    groups = -(-1000 // min(cfg.max_rows, 1000))
    sdw = random_sdweight(cfg, out_channels=groups * cfg.lanes, n_rows=min(cfg.max_rows, 1000),
                          keep=1.0, empty_group=False, seed=7)
    # Bases first (the first bank fills in `lanes` cycles), then the rows.
    rows = rows_of(sdw)
    for row, exp in zip(rows, expected_weight_rows(sdw, rows)):
        tb.scoreboard.expect(exp)
    tb.expected_total = len(rows)
    tb.basis.send_all(basis_loads(sdw, rows))
    await tb.clock.cycles(cfg.lanes + 2)
    tb.rows.send_all(rows)
    await tb.finish()
    assert len(rows) >= 1000
    k = cfg.rebuild_cycles
    sent = [c for c, _ in tb.rows.sent]
    got = tb.sink.cycles
    span_in = sent[-1] - sent[0] + 1
    span_out = got[-1] - got[0] + 1
    lat = {o - i for i, o in zip(sent, got)}
    dut._log.info(f"steady state (rebuild_cycles={k}): {len(rows)} rows in {span_in} input / "
                  f"{span_out} output cycles ({len(rows) / span_out:.3f} rows per cycle), "
                  f"latency {sorted(lat)[:4]}")
    if k == 1:
        assert span_in == len(rows) and span_out == len(rows), \
            f"{len(rows)} rows took {span_in} input and {span_out} output cycles"
        assert lat == {BasisArray.latency(cfg)}, \
            f"latency {sorted(lat)} != {BasisArray.latency(cfg)}"
    else:
        # One row every k cycles; the first one meets an idle array.  The two-slot
        # input buffer takes rows ahead, so the later ones wait there longer.
        gaps = {b - a for a, b in zip(got, got[1:])}
        assert gaps == {k}, f"output gaps {sorted(gaps)} != {{{k}}}"
        assert got[0] - sent[0] == BasisArray.latency(cfg), \
            f"first row latency {got[0] - sent[0]} != {BasisArray.latency(cfg)}"


#: Time-multiplexed builds (``rebuild_cycles > 1``): the default preset rebuilding two
#: and one lane per cycle, two lanes with two terms per coefficient (one lane per cycle,
#: carries left over for an increment level) and six lanes in three groups (a select
#: tree over a count that is not a power of two).
REBUILD_CONFIGS: dict[str, SDConfig] = {
    "default_k2": SDConfig(rebuild_cycles=2),
    "default_k4": SDConfig(rebuild_cycles=4),
    "S4_L2_t2_k2": RTL_CONFIGS["S4_L2_t2"].replace(rebuild_cycles=2),
    "S3_L6_k3": RTL_CONFIGS["S3_L8"].replace(lanes=6, rebuild_cycles=3),
}


@pytest.mark.sim
@pytest.mark.parametrize("config", [*RTL_CONFIGS.values(), *REBUILD_CONFIGS.values()],
                         ids=[*RTL_CONFIGS, *REBUILD_CONFIGS])
def test_basis_array_rtl(config):
    run_block(BasisArray, config, test_module=__name__, name="basis_array", timeout_s=400)

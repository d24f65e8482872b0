"""RTL regression of the MAC lanes (`hw.mac.MacLanes`) under Verilator.

Random groups of ops (``P`` = 1 ... ``acc_depth`` positions, 1 ... 6 rows, full-range
weights and activations, random bias / multiplier / shift / ReLU per group) with 0 %,
30 % and 70 % idle cycles on ``ops`` and back-pressure on ``results``; directed corner
cases (largest products, ``shift = 0``, widest shift, ``mult = 0``, saturation both
ways); a reset in mid-stream; and the steady state: >= 1000 back-to-back ops on one
accumulator (``P = 1``, read-modify-write forwarding) at one op per cycle.  Expected
values: exact accumulation in int64 and `golden.reference.requantize`.  The lanes are
built as in the accelerator: every multiply an instance of the registered multiplier
``sd_mul`` (`hw.dsp`, generic Verilog text).
"""

from __future__ import annotations

from collections import deque

import cocotb
import numpy as np
import pytest

from golden.reference import requantize
from hw.layouts import mac_op_layout, quant_layout, results_layout
from hw.mac import MacLanes
from tb.common import ClockReset, Scoreboard, StreamDriver, StreamSink, pack, random_stalls
from tb.harness import config_from_env
from tb.stim import RTL_CONFIGS, mac_ops_for_rows, random_quant, run_block


class MacTB:
    """Driver on ``ops`` (with ``quant`` travelling alongside), sink on ``results``."""

    def __init__(self, dut, stall: float = 0.0, seed: int = 0):
        self.config = cfg = config_from_env()
        self.dut = dut
        self.clock = ClockReset(dut)
        self.scoreboard = Scoreboard(f"MacLanes[stall={stall}]")
        self._quants: deque = deque()
        self.ops = StreamDriver(dut, "ops", mac_op_layout(cfg), self.clock,
                                idle=random_stalls(stall, seed), on_offer=self._offer)
        self.sink = StreamSink(dut, "results", results_layout(cfg), self.clock,
                               stall=random_stalls(stall, seed + 1),
                               callback=lambda item, cycle: self.scoreboard.compare(item, cycle))
        self.expected_total = 0
        self.ops_total = 0
        self.rng = np.random.default_rng(seed)

    def _offer(self, _op) -> None:
        self.dut.quant.value = self._quants.popleft()

    def send_group(self, w, x, bias, mult, shift, relu) -> None:
        """One group: weights (R, lanes, S), acts (P, R, S); expect golden results."""
        cfg = self.config
        acc = np.einsum("rls,prs->lp", w.astype(np.int64), x.astype(np.int64))
        assert np.abs(acc).max(initial=0) + np.abs(bias).max() <= cfg.acc_max, \
            "stimulus would overflow the accumulator"
        y = requantize(acc[None], bias, mult, shift, relu, cfg)[0]          # (lanes, P)
        q = pack(quant_layout(cfg), {
            "lanes": [{"bias": int(bias[l]), "mult": int(mult[l]), "shift": int(shift[l])}
                      for l in range(cfg.lanes)], "relu": int(relu)})
        n_rows = w.shape[0]
        ops = mac_ops_for_rows(w, [r == 0 for r in range(n_rows)],
                               [r == n_rows - 1 for r in range(n_rows)], x)
        self._quants.extend([q] * len(ops))
        self.ops.send_all(ops)
        self.ops_total += len(ops)
        for p in range(x.shape[0]):
            self.scoreboard.expect({"addr": p, "values": [int(v) for v in y[:, p]]},
                                   position=p, rows=n_rows)
        self.expected_total += x.shape[0]

    def random_group(self, n_rows: int, n_pos: int) -> None:
        cfg, rng = self.config, self.rng
        wlim = 1 << (cfg.rebuilt_weight_bits - 1)
        w = rng.integers(-wlim, wlim, (n_rows, cfg.lanes, cfg.basis_size))
        x = rng.integers(cfg.act_min, cfg.act_max + 1, (n_pos, n_rows, cfg.basis_size))
        acc_scale = int(np.abs(np.einsum("rls,prs->lp", w, x)).max()) + 1
        bias, mult, shift = random_quant(cfg, rng, cfg.lanes, acc_scale=acc_scale)
        self.send_group(w, x, bias, mult, shift, bool(rng.integers(0, 2)))

    def new_phase(self, name: str) -> None:
        self.scoreboard = Scoreboard(name)
        self.expected_total = len(self.sink.items)
        self.ops_total = 0
        self._quants.clear()

    async def finish(self) -> None:
        count = self.expected_total
        # Generous: every op and result may wait a few cycles at 70 % stalls.
        await self.sink.wait_for(count, timeout_cycles=500 + 10 * (self.ops_total + count))
        await self.clock.cycles(10)
        self.scoreboard.check()


@cocotb.test()
@cocotb.parametrize(stall=[0.0, 0.3, 0.7])
async def mac_random_groups(dut, stall):
    """Random groups, P from 1 to acc_depth, random requantization per group."""
    tb = MacTB(dut, stall, seed=int(stall * 100))
    cfg = tb.config
    await tb.clock.reset()
    for k in range(12):
        n_pos = [1, 2, 3, cfg.acc_depth][k % 4]
        tb.random_group(n_rows=int(tb.rng.integers(1, 7)), n_pos=n_pos)
    await tb.finish()


@cocotb.test()
async def mac_corner_cases(dut):
    """Largest products, shift 0 / widest, mult 0, saturation both ways, ReLU."""
    tb = MacTB(dut, stall=0.2, seed=3)
    cfg = tb.config
    await tb.clock.reset()
    L, S = cfg.lanes, cfg.basis_size
    wmin, wmax = -(1 << (cfg.rebuilt_weight_bits - 1)), (1 << (cfg.rebuilt_weight_bits - 1)) - 1
    max_shift = (1 << cfg.shift_bits) - 1
    for w_val, x_val in ((wmin, cfg.act_min), (wmax, cfg.act_min), (wmin, cfg.act_max)):
        w = np.full((2, L, S), w_val)
        x = np.full((3, 2, S), x_val)
        acc = 2 * S * w_val * x_val
        for bias, mult, shift, relu in ((0, 1, 0, False),            # saturates
                                        (-acc, 1, 0, False),         # exactly zero
                                        (7, (1 << cfg.mult_bits) - 1, max_shift, False),
                                        (0, 0, 3, True),             # mult 0
                                        (-1, 1, 1, True)):           # half-way rounding
            bias = max(min(bias, (1 << (cfg.bias_bits - 1)) - 1), -(1 << (cfg.bias_bits - 1)))
            if abs(acc) + abs(bias) > cfg.acc_max:
                continue
            tb.send_group(w, x, np.full(L, bias), np.full(L, mult), np.full(L, shift), relu)
    await tb.finish()


@cocotb.test()
async def mac_reset_mid_stream(dut):
    """Reset with ops and results in flight; the groups after it must be exact."""
    tb = MacTB(dut, stall=0.3, seed=5)
    cfg = tb.config
    await tb.clock.reset()
    for _ in range(4):
        tb.random_group(n_rows=4, n_pos=cfg.acc_depth)
    await tb.clock.cycles(40)
    tb.ops.flush()
    await tb.clock.reset(3)
    before = tb.scoreboard
    assert before.mismatched == 0, f"before the reset: {before.errors[:3]}"
    tb.new_phase("MacLanes[after reset]")
    for k in range(4):
        tb.random_group(n_rows=3, n_pos=[1, 2, cfg.acc_depth, 1][k])
    await tb.finish()


@cocotb.test()
async def mac_steady_state_same_address(dut):
    """>= 1000 back-to-back ops on accumulator 0 (P = 1), one op per cycle."""
    tb = MacTB(dut, seed=11)
    cfg = tb.config
    await tb.clock.reset()
    rng = np.random.default_rng(11)
    n_rows = 1000
    # Worst-case bound: no partial sum of the 1000 rows may leave the accumulator.
    wlim = min(1 << (cfg.rebuilt_weight_bits - 1),
               cfg.acc_max // (n_rows * cfg.basis_size * (1 << (cfg.act_bits - 1))))
    w = rng.integers(-wlim, wlim, (n_rows, cfg.lanes, cfg.basis_size))
    x = rng.integers(cfg.act_min, cfg.act_max + 1, (1, n_rows, cfg.basis_size))
    zeros = np.zeros(cfg.lanes, np.int64)
    acc = np.abs(np.einsum("rls,prs->lp", w, x)).max()
    shift = np.full(cfg.lanes, max(0, int(acc).bit_length() - cfg.act_bits + 2))
    tb.send_group(w, x, zeros, np.ones(cfg.lanes, np.int64), shift, False)
    await tb.finish()
    sent = [c for c, _ in tb.ops.sent]
    span = sent[-1] - sent[0] + 1
    dut._log.info(f"steady state: {len(sent)} ops on one address in {span} cycles "
                  f"({len(sent) / span:.3f} ops per cycle); result "
                  f"{tb.sink.cycles[-1] - sent[-1]} cycles after the last op")
    assert span == len(sent) == n_rows, f"{len(sent)} ops took {span} cycles"
    assert tb.sink.cycles[-1] - sent[-1] == MacLanes.LATENCY


def mac_with_dsp_modules(config):
    """Verilog of the lanes as the accelerator builds them: every multiply an instance of
    the registered multiplier ``sd_mul`` (`hw.dsp`), whose generic text is appended."""
    from tb.harness import to_verilog
    mac = MacLanes(config, dsp_instances=True)
    return to_verilog(mac, "mac_lanes") + "\n" + "\n".join(mac.verilog_sources.values())


@pytest.mark.sim
@pytest.mark.parametrize("config_name", list(RTL_CONFIGS))
def test_mac_rtl(config_name):
    run_block(mac_with_dsp_modules, RTL_CONFIGS[config_name], test_module=__name__,
              name="mac_lanes", timeout_s=400)


def test_requant_tail_exhaustive_near_the_limits():
    """The output stage's ReLU / saturation / rounding decisions, made on ``q`` before the
    rounding add, for every ``q`` around the limits (Amaranth simulator, no Verilator).

    With ``shift = 1`` the shift stage passes ``q = acc`` and the tail must give
    ``(acc + 1) >> 1``; with ``shift = 0`` it must give ``acc``: both against
    `golden.reference.requantize` (bias 0, multiplier 1), with and without ReLU.
    """
    from amaranth import Module, Signal, signed
    from amaranth.sim import Simulator

    from hw.config import PRESETS
    from hw.mac import _requant_tail

    cfg = PRESETS["default"]
    m = Module()
    q = Signal(signed(51))
    shz, relu = Signal(), Signal()
    out = _requant_tail(m, q, shz, relu, cfg, 0)
    span = np.arange(4 * cfg.act_min - 8, 4 * cfg.act_max + 9)
    span = np.concatenate([span, [-(1 << 50), (1 << 50) - 1, -(1 << 40), 1 << 40]])
    got = {}

    async def bench(ctx):
        for sh in (0, 1):
            for rl in (0, 1):
                ctx.set(shz, sh == 0)
                ctx.set(relu, rl)
                for v in span:
                    ctx.set(q, int(v))
                    await ctx.delay(1e-9)
                    got[sh, rl, int(v)] = ctx.get(out)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    L = cfg.lanes
    for sh in (0, 1):
        for rl in (0, 1):
            want = requantize(np.tile(span, (1, L, 1)), np.zeros(L), np.ones(L),
                              np.full(L, sh), bool(rl), cfg)[0, 0]
            bad = [(int(v), got[sh, rl, int(v)], int(w)) for v, w in zip(span, want)
                   if got[sh, rl, int(v)] != w]
            assert not bad, f"shift {sh}, relu {rl}: (q, got, want) {bad[:5]}"

"""Fast Amaranth-simulator unit tests of `hw.shifter` (the cocotb/Verilator test is
``tb/test_shifter.py``)."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from amaranth import Module, Signal, signed
from amaranth.sim import Simulator

from golden.intops import shift_pow2
from hw.config import PRESETS, SDConfig
from hw.shifter import Pow2Shift, Pow2Shifter, carry_sum, ones_term

NARROW = SDConfig(basis_bits=6, exp_min=-3, exp_max=0)

# These tests build components without elaborating them on purpose.
_never_elaborated = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


@_never_elaborated
def test_rejects_non_config():
    with pytest.raises(TypeError, match="config must be an SDConfig, got dict"):
        Pow2Shift({"basis_bits": 8})
    with pytest.raises(TypeError, match="SDConfig"):
        Pow2Shifter("default")
    gc.collect()  # components sit in reference cycles: free them while the filter holds


@_never_elaborated
def test_port_widths_come_from_config():
    c = PRESETS["default"]
    core = Pow2Shift(c)
    assert core.value.shape().width == c.basis_bits and core.value.shape().signed
    assert core.shift.shape().width == c.shift_code_bits
    assert core.result.shape().width == c.shifted_bits and core.result.shape().signed
    del core
    gc.collect()


def _every_operand(config):
    """Every (value, sign, shift) of ``config`` with the golden result: ``(v, s, k, want)``."""
    values = np.arange(config.basis_min, config.basis_max + 1)
    v, s, k = (a.ravel() for a in np.meshgrid(values, [0, 1], np.arange(config.max_shift + 1)))
    return list(zip(v.tolist(), s.tolist(), k.tolist(), shift_pow2(v, s, k).tolist()))


def _drive_every_operand(module, config, value, sign, shift, enable, read) -> list:
    """Simulate ``module`` on every operand (enabled, then disabled: 0 expected) and
    return the mismatches ``(value, sign, shift, enable, expected, got)``; ``read(ctx)``
    gives the result under test."""
    bad = []

    async def bench(ctx):
        for vi, si, ki, ei in _every_operand(config):
            ctx.set(value, vi)
            ctx.set(sign, si)
            ctx.set(shift, ki)
            for en, want in ((1, ei), (0, 0)):
                ctx.set(enable, en)
                got = read(ctx)
                if got != want:
                    bad.append((vi, si, ki, en, want, got))

    sim = Simulator(module)
    sim.add_testbench(bench)
    sim.run()
    return bad


@pytest.mark.parametrize("config", [NARROW, PRESETS["default"]], ids=["b6_e4", "default"])
def test_core_exhaustive(config):
    dut = Pow2Shift(config)
    mismatches = _drive_every_operand(dut, config, dut.value, dut.sign, dut.shift, dut.enable,
                                      lambda ctx: ctx.get(dut.result))
    assert not mismatches, f"(value, sign, shift, enable, expected, got): {mismatches[:5]}"


def test_stream_stage_latency_and_backpressure():
    config = NARROW
    dut = Pow2Shifter(config)
    ops = [(-32, 1, 3), (31, 0, 3), (-1, 0, 0), (5, 1, 2)]
    expected = shift_pow2(*map(np.array, zip(*ops))).tolist()
    log = []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        # One operand per cycle at full throughput, result one cycle later.
        for cycle, (value, sign, shift) in enumerate(ops):
            ctx.set(dut.i.payload, {"value": value, "sign": sign, "shift": shift, "enable": 1})
            ctx.set(dut.i.valid, 1)
            assert ctx.get(dut.i.ready)
            await ctx.tick()
            assert ctx.get(dut.o.valid)
            log.append(ctx.get(dut.o.payload.result))
        ctx.set(dut.i.valid, 0)
        await ctx.tick()
        assert not ctx.get(dut.o.valid)
        # Back-pressure: a held result stays valid and stable, and input is refused.
        ctx.set(dut.i.payload, {"value": 3, "sign": 1, "shift": 1, "enable": 1})
        ctx.set(dut.i.valid, 1)
        await ctx.tick()
        ctx.set(dut.o.ready, 0)
        ctx.set(dut.i.payload, {"value": 7, "sign": 0, "shift": 0, "enable": 1})
        for _ in range(3):
            assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload.result) == -6
            assert not ctx.get(dut.i.ready)
            await ctx.tick()
        ctx.set(dut.o.ready, 1)
        assert ctx.get(dut.i.ready)  # the register empties this cycle: take the next one
        await ctx.tick()
        assert ctx.get(dut.o.payload.result) == 7

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert log == expected
    assert Pow2Shifter.LATENCY == 1


@pytest.mark.parametrize("n_values,n_carries", [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (3, 0)])
def test_carry_sum_adds_values_and_carries(n_values, n_carries):
    """Every adder absorbs one carry; leftovers (a power-of-two tree) are added last."""
    rng = np.random.default_rng(n_values * 10 + n_carries)
    width = 6
    lo, hi = -(1 << (width - 1)), (1 << (width - 1))
    values = [Signal(signed(width), name=f"v{k}") for k in range(n_values)]
    carries = [Signal(name=f"c{k}") for k in range(n_carries)]
    m = Module()
    total = Signal(signed(width + 4))
    m.d.comb += total.eq(carry_sum(values, carries))
    # the extremes first, then random operands
    cases = [([lo] * n_values, [1] * n_carries), ([hi - 1] * n_values, [1] * n_carries),
             ([lo] * n_values, [0] * n_carries)]
    cases += [(rng.integers(lo, hi, n_values).tolist(), rng.integers(0, 2, n_carries).tolist())
              for _ in range(300)]
    bad = []

    async def bench(ctx):
        for vs, cs in cases:
            for sig, v in zip(values + carries, vs + cs):
                ctx.set(sig, v)
            if ctx.get(total) != sum(vs) + sum(cs):
                bad.append((vs, cs, ctx.get(total)))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert not bad, f"(values, carries, got): {bad[:3]}"


@pytest.mark.parametrize("config", [NARROW, PRESETS["default"]], ids=["b6_e4", "default"])
def test_ones_term_plus_carry_is_exact(config):
    """The basis array's term: ``term + carry`` equals the exact shifted term (or 0)."""
    value, sign, shift, enable = (Signal(signed(config.basis_bits)), Signal(),
                                  Signal(config.shift_code_bits), Signal())
    term_sig = Signal(signed(config.basis_bits + config.max_shift))
    carry_sig = Signal()
    m = Module()
    term, carry = ones_term(value, sign, shift, enable, config.max_shift)
    m.d.comb += [term_sig.eq(term), carry_sig.eq(carry)]
    assert len(term) == config.basis_bits + config.max_shift
    bad = _drive_every_operand(m, config, value, sign, shift, enable,
                               lambda ctx: ctx.get(term_sig) + ctx.get(carry_sig))
    assert not bad, f"(value, sign, shift, enable, expected, term + carry): {bad[:5]}"

"""RTL regression of the power-of-two shifter (`hw.shifter.Pow2Shifter`) under Verilator.

Every (value, sign, shift) combination of a configuration goes through the registered
stream stage, in a seeded random order, once without stalls and once each with 30 % and
70 % random idle cycles on the input and back-pressure on the output.  Expected results
come from `golden.intops.shift_pow2`; a separate test asserts the documented latency.
"""

from __future__ import annotations

import random

import cocotb
import numpy as np
import pytest

from golden.intops import shift_pow2
from hw.config import PRESETS, SDConfig
from hw.shifter import Pow2Shifter, shift_input_layout, shift_output_layout
from tb.common import ClockReset, Scoreboard, StreamDriver, StreamSink, random_stalls
from tb.harness import config_from_env, run_cocotb

#: Configurations the regression runs: the default, a narrow one (6-bit basis, 4 exponent
#: levels) and a wide one (4-bit exponent field, 14 levels -> 22-bit results).
CONFIGS: dict[str, SDConfig] = {
    "default": PRESETS["default"],
    "b6_e4": SDConfig(basis_bits=6, exp_min=-3, exp_max=0),
    "b8_e14": SDConfig(exp_bits=4, exp_min=-10, exp_max=3, acc_bits=40),
}


# ------------------------------------------------------------------ operands / model
def all_operands(config: SDConfig, seed: int = 0) -> list[dict[str, int]]:
    """Every (value, sign, shift) with enable=1, plus one enable=0 operand in eight.

    Shuffled with ``seed`` so that consecutive operands differ in every field.
    """
    rng = random.Random(seed)
    ops = [{"value": v, "sign": s, "shift": k, "enable": 1}
           for v in range(config.basis_min, config.basis_max + 1)
           for s in (0, 1)
           for k in range(config.max_shift + 1)]
    # Disabled terms (zero coefficients) must give 0 whatever the other operands are.
    ops += [dict(op, enable=0) for op in rng.sample(ops, len(ops) // 8)]
    rng.shuffle(ops)
    return ops


def expected_results(ops: list[dict[str, int]]) -> list[int]:
    """Golden results for ``ops`` (one batched call of the reference model)."""
    value = np.array([op["value"] for op in ops])
    sign = np.array([op["sign"] for op in ops])
    shift = np.array([op["shift"] for op in ops])
    enable = np.array([op["enable"] for op in ops], dtype=bool)
    return np.where(enable, shift_pow2(value, sign, shift), 0).tolist()


# -------------------------------------------------------------------------- cocotb
class ShifterTB:
    """Driver on ``i``, sink on ``o``, scoreboard fed from the golden model."""

    def __init__(self, dut, stall: float, seed: int):
        self.config = config_from_env()
        self.clock = ClockReset(dut)
        self.scoreboard = Scoreboard(f"Pow2Shifter[stall={stall}]")
        self.source = StreamDriver(dut, "i", shift_input_layout(self.config), self.clock,
                                   idle=random_stalls(stall, seed))
        self.sink = StreamSink(dut, "o", shift_output_layout(self.config), self.clock,
                               stall=random_stalls(stall, seed + 1),
                               callback=self.scoreboard.compare)

    def send(self, ops: list[dict[str, int]]) -> None:
        for op, result in zip(ops, expected_results(ops)):
            self.scoreboard.expect({"result": result}, inputs=op)
            self.source.send(op)


@cocotb.test()
@cocotb.parametrize(stall=[0.0, 0.3, 0.7])
async def shifter_exhaustive(dut, stall):
    """All operand combinations with random valid gaps and back-pressure."""
    tb = ShifterTB(dut, stall, seed=int(stall * 100))
    await tb.clock.reset()
    ops = all_operands(tb.config, seed=int(stall * 100))
    tb.send(ops)
    await tb.sink.wait_for(len(ops))
    await tb.clock.cycles(5)  # an extra, unexpected output would show up here
    tb.scoreboard.check()


@cocotb.test()
async def shifter_latency(dut):
    """Without stalls every result appears exactly `Pow2Shifter.LATENCY` cycles later."""
    tb = ShifterTB(dut, stall=0.0, seed=0)
    await tb.clock.reset()
    ops = all_operands(tb.config)[:64]
    tb.send(ops)
    await tb.sink.wait_for(len(ops))
    tb.scoreboard.check()
    in_cycles = [cycle for cycle, _ in tb.source.sent]
    assert len(in_cycles) == len(tb.sink.cycles) == len(ops)
    latencies = {out - inp for inp, out in zip(in_cycles, tb.sink.cycles)}
    assert latencies == {Pow2Shifter.LATENCY}, \
        f"latency must be {Pow2Shifter.LATENCY} cycle(s), measured {sorted(latencies)}"
    # Full throughput: one operand accepted every cycle.
    assert in_cycles == list(range(in_cycles[0], in_cycles[0] + len(ops))), \
        "the shifter did not accept one operand per cycle without back-pressure"


# -------------------------------------------------------------------------- pytest
@pytest.mark.sim
@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_shifter_rtl(config_name):
    run_cocotb(Pow2Shifter, CONFIGS[config_name], test_module=__name__, timeout_s=300)

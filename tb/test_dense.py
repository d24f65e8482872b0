"""RTL regression of the dense int8 baseline: `DenseRowReader`, and the dense chain.

`DenseRowReader` (three configurations): random int8 layers packed by
`golden.dense_baseline.dense_words`, every row compared with `SDWeight.rebuilt_int` of the
int8 layer and the documented tags, with 0 %, 30 % and 70 % stalls; ``last`` early or
missing and bad ``start`` arguments raise ``error`` and the reader drains to idle; a reset
in mid-stream; >= 1000 rows at one row per cycle.

`ChainDense` (``DenseRowReader -> RowFeed -> MacLanes``, the baseline's datapath): every
layer of the dense int8 twin of the digits network (`golden.dense_baseline.dense_qnet`)
on real activations, bit-exact against `golden.reference.layer_int`.
"""

from __future__ import annotations

import random

import cocotb
import numpy as np
import pytest
import torch

from golden.dense_baseline import DENSE_BITS, _int8_sdweight, dense_qnet, dense_words
from golden.reference import layer_int, layer_rows
from hw.chain import ChainDense, act_row_layout, quant_write_layout
from hw.dense import DenseRowReader
from hw.layouts import DecodeError, dense_word_layout, results_layout, weights_row_layout
from tb.common import ClockReset, Scoreboard, StreamDriver, StreamSink, random_stalls
from tb.harness import config_from_env
from tb.stim import RTL_CONFIGS, digits_qnet, layer_inputs, random_sdweight, run_block

BATCH = 2


def int8_layer(cfg, cout: int, n_rows: int, seed: int):
    """A random int8 layer as an `SDWeight` whose ``rebuilt_int`` is the int8 weight."""
    g = torch.Generator().manual_seed(seed)
    w8 = torch.randint(-128, 128, (cout, n_rows, cfg.basis_size), generator=g)
    # The int8 weight sits in a basis row, so the carrier needs basis_bits >= 8.
    like = random_sdweight(cfg.replace(basis_bits=max(8, cfg.basis_bits)), cout, n_rows,
                           seed=seed)
    return _int8_sdweight(w8, np.ones(cout), like)


def expected_rows(sd, cfg) -> list[dict]:
    """Rows the reader must emit: tags per ``docs/architecture.md``, golden weights."""
    w = sd.rebuilt_int().numpy()
    out = []
    for g in range(sd.n_groups):
        for r in range(sd.rows):
            lanes = [[int(v) for v in w[g * cfg.lanes + l, r]] if g * cfg.lanes + l < sd.out_channels
                     else [0] * cfg.basis_size for l in range(cfg.lanes)]
            out.append({"row": r, "block": r // cfg.block_rows, "group": g,
                        "new_block": int(r % cfg.block_rows == 0), "first": int(r == 0),
                        "last": int(r == sd.rows - 1), "empty": 0, "weights": lanes})
    return out


class DenseTB:
    def __init__(self, dut, stall: float = 0.0, seed: int = 0):
        self.config = cfg = config_from_env()
        self.dut = dut
        self.clock = ClockReset(dut)
        self.scoreboard = Scoreboard(f"DenseRowReader[stall={stall}]")
        self.words = StreamDriver(dut, "words", dense_word_layout(cfg, DENSE_BITS), self.clock,
                                  idle=random_stalls(stall, seed))
        self.sink = StreamSink(dut, "rows", weights_row_layout(cfg, DENSE_BITS), self.clock,
                               stall=random_stalls(stall, seed + 1),
                               callback=lambda item, cycle: self.scoreboard.compare(item, cycle))
        self.expected_total = 0
        dut.start.value = 0

    async def start(self, n_groups: int, n_rows: int) -> None:
        self.dut.n_groups.value = n_groups
        self.dut.n_rows.value = n_rows
        self.dut.start.value = 1
        await self.clock.cycles(1)
        self.dut.start.value = 0

    async def run_layer(self, sd) -> None:
        words = dense_words(sd)
        rows = expected_rows(sd, self.config)
        for row in rows:
            self.scoreboard.expect(row)
        self.expected_total += len(rows)
        await self.start(sd.n_groups, sd.rows)
        self.words.send_all({"data": w, "last": int(k == len(words) - 1)}
                            for k, w in enumerate(words))
        await self.sink.wait_for(self.expected_total,
                                 timeout_cycles=200 + 20 * len(words))
        await self.clock.cycles(3)
        assert int(self.dut.error.value) == 0 and int(self.dut.busy.value) == 0

    async def idle_after(self, limit: int) -> None:
        for _ in range(limit):
            await self.clock.cycles(1)
            if not self.words.busy and not int(self.dut.busy.value):
                return
        raise AssertionError("the reader did not return to idle / drain its input")


@cocotb.test()
@cocotb.parametrize(stall=[0.0, 0.3, 0.7])
async def dense_reader_random_layers(dut, stall):
    tb = DenseTB(dut, stall, seed=int(stall * 100))
    cfg = tb.config
    await tb.clock.reset()
    for seed, (cout, n_rows) in enumerate([(cfg.lanes, 1), (2 * cfg.lanes + 1, cfg.block_rows + 2),
                                           (cfg.lanes + 1, min(cfg.max_rows, 40))]):
        await tb.run_layer(int8_layer(cfg, cout, n_rows, seed))
    tb.scoreboard.check()


@cocotb.test()
async def dense_reader_errors(dut):
    """Early / missing ``last`` and bad arguments: error code, no hang, then a clean run."""
    tb = DenseTB(dut, stall=0.3, seed=5)
    cfg = tb.config
    rng = random.Random(5)
    await tb.clock.reset()
    sd = int8_layer(cfg, 2 * cfg.lanes, 6, seed=9)
    words = dense_words(sd)
    cases = [
        ("early last", sd.n_groups, sd.rows, [int(k == 4) for k in range(len(words))],
         DecodeError.EARLY_LAST),
        ("missing last", sd.n_groups, sd.rows, [0] * len(words) + [1], DecodeError.MISSING_LAST),
        ("no groups", 0, sd.rows, [int(k == len(words) - 1) for k in range(len(words))],
         DecodeError.BAD_ARGS),
        ("no rows", sd.n_groups, 0, [int(k == len(words) - 1) for k in range(len(words))],
         DecodeError.BAD_ARGS),
    ]
    for what, g, r, flags, code in cases:
        extra = rng.getrandbits(cfg.lanes * cfg.basis_size * DENSE_BITS)
        data = words + [extra] * (len(flags) - len(words))
        await tb.start(g, r)
        tb.words.send_all({"data": d, "last": f} for d, f in zip(data, flags))
        await tb.idle_after(100 + 10 * len(data))
        await tb.clock.cycles(3)
        assert int(dut.error.value) == 1, f"{what}: no error"
        assert int(dut.error_code.value) == code, \
            f"{what}: error code {DecodeError(int(dut.error_code.value)).name}, expected {code.name}"
        assert not int(dut.rows__valid.value), f"{what}: a row is offered after the error"
    tb.scoreboard = Scoreboard("DenseRowReader[after errors]")
    tb.expected_total = len(tb.sink.items)
    await tb.run_layer(sd)
    tb.scoreboard.check()


@cocotb.test()
async def dense_reader_reset_and_steady_state(dut):
    """Reset in mid-stream; then >= 1000 rows at one row per cycle, latency 1."""
    tb = DenseTB(dut, stall=0.0)
    cfg = tb.config
    await tb.clock.reset()
    sd = int8_layer(cfg, 2 * cfg.lanes, 30, seed=3)
    await tb.start(sd.n_groups, sd.rows)
    tb.words.send_all({"data": w, "last": 0} for w in dense_words(sd))
    await tb.clock.cycles(20)
    tb.words.flush()
    await tb.clock.reset(2)
    tb.expected_total = len(tb.sink.items)
    tb.scoreboard = Scoreboard("DenseRowReader[after reset]")
    n_rows = min(cfg.max_rows, 1000)
    sd = int8_layer(cfg, -(-1000 // n_rows) * cfg.lanes, n_rows, seed=4)
    first = len(tb.words.sent)
    await tb.run_layer(sd)
    tb.scoreboard.check()
    sent = [c for c, _ in tb.words.sent[first:]]
    got = tb.sink.cycles[-len(sent):]
    assert len(sent) >= 1000 and sent == list(range(sent[0], sent[0] + len(sent)))
    assert {o - i for i, o in zip(sent, got)} == {1}
    dut._log.info(f"steady state: {len(sent)} rows in {got[-1] - got[0] + 1} cycles")


@pytest.mark.sim
@pytest.mark.parametrize("config_name", list(RTL_CONFIGS))
def test_dense_reader_rtl(config_name):
    run_block(lambda cfg: DenseRowReader(cfg, DENSE_BITS), RTL_CONFIGS[config_name],
              test_module=__name__, name="dense_reader", timeout_s=400,
              testcase=[f"dense_reader_random_layers/stall={s}" for s in (0.0, 0.3, 0.7)]
              + ["dense_reader_errors", "dense_reader_reset_and_steady_state"])


# ------------------------------------------------------------------ dense chain
class DenseChainTB:
    def __init__(self, dut):
        self.config = cfg = config_from_env()
        self.dut = dut
        self.clock = ClockReset(dut)
        self.scoreboard = Scoreboard("ChainDense")
        self.words = StreamDriver(dut, "words", dense_word_layout(cfg, DENSE_BITS), self.clock,
                                  idle=random_stalls(0.2, 1))
        self.acts = StreamDriver(dut, "acts", act_row_layout(cfg), self.clock,
                                 idle=random_stalls(0.2, 2))
        self.quant = StreamDriver(dut, "quant_wr", quant_write_layout(cfg), self.clock)
        self.sink = StreamSink(dut, "results", results_layout(cfg), self.clock,
                               stall=random_stalls(0.2, 3),
                               callback=lambda item, cycle: self.scoreboard.compare(item, cycle))
        self.expected_total = 0
        dut.start.value = 0

    async def run_layer(self, layer, x_int) -> None:
        from tb.test_chain import quant_groups
        cfg, sd = self.config, layer.sd
        L = cfg.lanes
        x_rows = layer_rows(layer, x_int)
        n, p0 = x_rows.shape[:2]
        P = n * p0
        acts = x_rows.reshape(P, sd.rows, cfg.basis_size)
        y = layer_int(layer, x_int).reshape(n, sd.out_channels, p0)
        for g in range(sd.n_groups):
            for a in range(P):
                self.scoreboard.expect({"addr": a, "values": [
                    int(y[a // p0, g * L + l, a % p0]) if g * L + l < sd.out_channels else 0
                    for l in range(L)]}, layer=layer.name, group=g, position=a)
        self.expected_total += sd.n_groups * P
        self.quant.send_all(quant_groups(layer, cfg))
        while self.quant.busy:
            await self.clock.cycles(1)
        words = dense_words(sd)
        self.dut.relu.value = int(layer.relu)
        self.dut.n_groups.value = sd.n_groups
        self.dut.n_rows.value = sd.rows
        self.dut.start.value = 1
        await self.clock.cycles(1)
        self.dut.start.value = 0
        self.words.send_all({"data": w, "last": int(k == len(words) - 1)}
                            for k, w in enumerate(words))
        for _g in range(sd.n_groups):
            for r in range(sd.rows):
                for a in range(P):
                    self.acts.send({"acts": [int(v) for v in acts[a, r]], "addr": a,
                                    "end": int(a == P - 1)})
        await self.sink.wait_for(self.expected_total,
                                 timeout_cycles=2000 + 10 * sd.n_groups * sd.rows * P)
        await self.clock.cycles(5)


@cocotb.test()
async def dense_chain_digits_network(dut):
    """Every layer of the dense int8 twin of the digits network, bit-exact."""
    tb = DenseChainTB(dut)
    await tb.clock.reset()
    qnet, split = digits_qnet()
    dq = dense_qnet(qnet)
    x_int = dq.quantize_input(split.x_test[:BATCH].numpy())
    for layer, x in zip(dq.layers, layer_inputs(dq, x_int)):
        await tb.run_layer(layer, x)
    assert not int(dut.error.value)
    tb.scoreboard.check()


@pytest.mark.sim
def test_dense_chain_digits_rtl():
    from golden.models import load_checkpoint
    _, config = load_checkpoint()
    run_block(lambda cfg: ChainDense(cfg, DENSE_BITS), config, test_module=__name__,
              name="chain_dense", timeout_s=400, testcase="dense_chain_digits_network")

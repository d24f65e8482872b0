"""Chained RTL test: decoder -> basis array -> MAC lanes on the digits network's layers.

`hw.chain.ChainSD` (``SparseDecoder -> BasisArray -> RowFeed -> MacLanes``) runs every
layer of the bundled digits network (shipped SD checkpoint, quantized by
`golden.qnet.build_qnet`) on real activations: the packed Ce stream (`golden.pack.pack_ce`),
the basis words (`golden.pack.pack_basis`) in the order the decoded rows swap banks, the
quant words (`golden.pack.pack_quant`) and, per decoded row, the activation rows of all
positions of a batch of images (`golden.reference.layer_rows`).  Every output must equal
`golden.reference.layer_int` bit for bit.  Runs with 0 %, 30 % and 70 % idle cycles on
the inputs and back-pressure on the results, and once without stalls to measure the
MAC utilisation (ops per cycle).
"""

from __future__ import annotations

import cocotb
import numpy as np
import pytest

from golden.pack import decode_ce_stream, pack_basis, pack_ce, pack_quant
from golden.reference import layer_int, layer_rows
from hw.chain import ChainSD, act_row_layout, quant_write_layout
from hw.layouts import basis_word_layout, ce_word_layout, results_layout
from tb.common import ClockReset, Scoreboard, StreamDriver, StreamSink, random_stalls
from tb.harness import config_from_env
from tb.stim import digits_qnet, layer_inputs, run_block

#: Images per layer run: the positions of all of them share the accumulators (P = N x
#: output pixels, at most acc_depth).
BATCH = 3


def quant_groups(layer, cfg) -> list[dict]:
    """Quant memory writes of a layer: one per group, the lanes' quant words side by side."""
    words = pack_quant(layer.bias_int, layer.mult, layer.shift, cfg, layer.name)
    L = cfg.lanes
    out = []
    for g in range(-(-len(words) // L)):
        lanes = words[g * L:(g + 1) * L]
        data = sum(w << (l * cfg.quant_word_bits) for l, w in enumerate(lanes))
        out.append({"addr": g, "data": _lanes_of(data, cfg)})
    return out


def _lanes_of(data: int, cfg) -> list[dict]:
    """A packed quant memory word as the `quant_write_layout` ``data`` list."""
    out = []
    for l in range(cfg.lanes):
        w = (data >> (l * cfg.quant_word_bits)) & ((1 << cfg.quant_word_bits) - 1)
        bias = w & ((1 << cfg.bias_bits) - 1)
        if bias >> (cfg.bias_bits - 1):
            bias -= 1 << cfg.bias_bits
        mult = (w >> cfg.bias_bits) & ((1 << cfg.mult_bits) - 1)
        shift = w >> (cfg.bias_bits + cfg.mult_bits)
        out.append({"bias": bias, "mult": mult, "shift": shift})
    return out


class ChainTB:
    """Drivers for words, bases, activations and quant writes; results sink."""

    def __init__(self, dut, stall: float = 0.0, seed: int = 0):
        self.config = cfg = config_from_env()
        self.dut = dut
        self.clock = ClockReset(dut)
        self.scoreboard = Scoreboard(f"ChainSD[stall={stall}]")
        idle = lambda k: random_stalls(stall, seed + k)  # noqa: E731
        self.words = StreamDriver(dut, "words", ce_word_layout(cfg), self.clock, idle=idle(0))
        self.basis = StreamDriver(dut, "basis", basis_word_layout(cfg), self.clock,
                                  idle=idle(1))
        self.acts = StreamDriver(dut, "acts", act_row_layout(cfg), self.clock, idle=idle(2))
        self.quant = StreamDriver(dut, "quant_wr", quant_write_layout(cfg), self.clock)
        self.sink = StreamSink(dut, "results", results_layout(cfg), self.clock,
                               stall=idle(3),
                               callback=lambda item, cycle: self.scoreboard.compare(item, cycle))
        self.expected_total = 0
        self.ops = 0
        dut.start.value = 0

    async def run_layer(self, layer, x_int) -> None:
        """Queue one layer on ``x_int`` (a batch) and expect `layer_int`'s outputs."""
        cfg, sd = self.config, layer.sd
        L, n_groups = cfg.lanes, sd.n_groups
        words = pack_ce(sd)
        rows = decode_ce_stream(words, cfg, n_groups, sd.rows)  # bank order, act order
        bwords = pack_basis(sd)
        x_rows = layer_rows(layer, x_int)                       # (N, P0, R, S)
        n, p0 = x_rows.shape[:2]
        acts = x_rows.reshape(n * p0, sd.rows, cfg.basis_size)
        P = n * p0
        assert P <= cfg.acc_depth, f"{P} positions exceed acc_depth {cfg.acc_depth}"
        y = layer_int(layer, x_int).reshape(n, sd.out_channels, p0)
        for g in range(n_groups):
            for a in range(P):
                vals = [int(y[a // p0, g * L + l, a % p0]) if g * L + l < sd.out_channels
                        else 0 for l in range(L)]   # zero quant word -> 0 in padding lanes
                self.scoreboard.expect({"addr": a, "values": vals}, layer=layer.name,
                                       group=g, position=a)
        self.expected_total += n_groups * P

        self.quant.send_all(quant_groups(layer, cfg))
        while self.quant.busy:
            await self.clock.cycles(1)
        self.dut.relu.value = int(layer.relu)
        self.dut.n_groups.value = n_groups
        self.dut.n_rows.value = sd.rows
        self.dut.start.value = 1
        await self.clock.cycles(1)
        self.dut.start.value = 0
        self.words.send_all({"data": w, "last": int(k == len(words) - 1)}
                            for k, w in enumerate(words))
        for d in rows:
            if d.new_block:
                base = (d.group * sd.n_blocks + d.block) * L
                self.basis.send_all({"lane": l, "data": bwords[base + l]} for l in range(L))
            for a in range(P):
                x = acts[a, d.row] if not d.empty else np.zeros(cfg.basis_size, np.int64)
                self.acts.send({"acts": [int(v) for v in x], "addr": a, "end": int(a == P - 1)})
                self.ops += 1

    async def finish(self) -> None:
        count = self.expected_total
        await self.sink.wait_for(count, timeout_cycles=1000 + 10 * (self.ops + count))
        await self.clock.cycles(10)
        assert not int(self.dut.error.value), f"decoder error {int(self.dut.error_code.value)}"
        self.scoreboard.check()


async def _run_network(dut, stall: float, seed: int) -> ChainTB:
    tb = ChainTB(dut, stall, seed)
    await tb.clock.reset()
    qnet, split = digits_qnet()
    assert qnet.config == tb.config, "the chain was built for another configuration"
    x_int = qnet.quantize_input(split.x_test[seed:seed + BATCH].numpy())
    for layer, x in zip(qnet.layers, layer_inputs(qnet, x_int)):
        await tb.run_layer(layer, x)
        await tb.finish()   # one layer at a time: its quant words stay in place while used
    return tb


@cocotb.test()
@cocotb.parametrize(stall=[0.3, 0.7])
async def chain_digits_network_stalls(dut, stall):
    """Every layer of the digits network, random stalls everywhere, bit-exact."""
    await _run_network(dut, stall, seed=int(stall * 10))


@cocotb.test()
async def chain_digits_network_utilisation(dut):
    """No stalls: bit-exact, and the MAC lanes take one op per cycle while a layer runs."""
    tb = ChainTB(dut)
    await tb.clock.reset()
    qnet, split = digits_qnet()
    x_int = qnet.quantize_input(split.x_test[:BATCH].numpy())
    for layer, x in zip(qnet.layers, layer_inputs(qnet, x_int)):
        first = len(tb.acts.sent)
        await tb.run_layer(layer, x)
        await tb.finish()
        cycles = [c for c, _ in tb.acts.sent[first:]]
        span = cycles[-1] - cycles[0] + 1
        ratio = len(cycles) / span
        dut._log.info(f"{layer.name}: {len(cycles)} MAC ops in {span} cycles "
                      f"({ratio:.3f} ops per cycle, {layer.sd.n_groups} groups, "
                      f"{int(layer.sd.kept_rows().sum())} kept rows)")
        assert ratio >= 0.95, f"{layer.name}: only {ratio:.3f} ops per cycle"


@pytest.mark.sim
def test_chain_digits_rtl():
    from golden.models import load_checkpoint
    _, config = load_checkpoint()
    run_block(ChainSD, config, test_module=__name__, name="chain_sd", timeout_s=500)

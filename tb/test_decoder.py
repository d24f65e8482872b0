"""RTL regression of the sparse coefficient decoder (`hw.decoder.SparseDecoder`).

Expected rows and error codes come from the golden unpacker `golden.pack.decode_ce_stream`
(run on the very words the DUT receives); streams are made by `golden.pack.pack_ce` from
random SD layers.  Tests:

* random layers (every exponent code and sign, an empty group, rows 0 and R-1, partial
  last group) with 0 %, 30 % and 70 % idle cycles on ``words`` and back-pressure on
  ``rows``;
* the fuzz test: thousands of random and corrupted streams (bit flips, truncation,
  trailing words, moved ``last`` flags, swapped or duplicated slots, wrong ``n_rows`` /
  ``n_groups``, random words) in one simulation; each case either decodes exactly what
  the golden unpacker decodes (and pulses ``done``) or raises ``error`` with the golden
  error code; the decoder always returns to idle, never stops taking words after an
  error, and never presents a valid row while ``error`` is set;
* a reset in mid-stream, and the steady state (>= 1000 rows, no input stall, latency
  `SparseDecoder.LATENCY`).
"""

from __future__ import annotations

import random

import cocotb
import pytest
from cocotb.triggers import ReadOnly, RisingEdge

from golden.pack import CeStreamError, decode_ce_stream, pack_ce
from hw.decoder import SparseDecoder
from hw.layouts import DecodeError, ce_word_layout, decoded_row_layout
from tb.common import ClockReset, Scoreboard, StreamDriver, StreamSink, random_stalls
from tb.harness import config_from_env
from tb.stim import RTL_CONFIGS, random_sdweight, row_dict, run_block

FUZZ_CASES = 2500


def golden(words, flags, cfg, n_groups, n_rows):
    """(rows, None) or (None, error code) from the golden unpacker."""
    try:
        return [row_dict(d) for d in decode_ce_stream(words, cfg, n_groups, n_rows,
                                                       last=flags)], None
    except CeStreamError as exc:
        assert exc.code != 0, f"stimulus left the decoder waiting: {exc}"
        return None, int(exc.code)


class DecoderTB:
    """Word driver, row sink, control, and per-cycle protocol checks."""

    def __init__(self, dut, stall: float = 0.0, seed: int = 0):
        self.config = cfg = config_from_env()
        self.dut = dut
        self.clock = ClockReset(dut)
        self.scoreboard = Scoreboard(f"SparseDecoder[stall={stall}]")
        self.words = StreamDriver(dut, "words", ce_word_layout(cfg), self.clock,
                                  idle=random_stalls(stall, seed))
        self.sink = StreamSink(dut, "rows", decoded_row_layout(cfg), self.clock,
                               stall=random_stalls(stall, seed + 1),
                               callback=self._on_row)
        self.compare_rows = True        # False while a stream the golden model rejects runs
        self.partial: list = []         # rows of such a stream, before its error
        self.dones = 0
        self.violations: list[str] = []
        dut.start.value = 0
        cocotb.start_soon(self._watch())

    def _on_row(self, item, cycle) -> None:
        if self.compare_rows:
            self.scoreboard.compare(item, cycle)
        else:
            self.partial.append(item)

    async def _watch(self):
        """Count ``done`` pulses; flag a valid row while ``error`` is set."""
        while True:
            await RisingEdge(self.clock.clk)
            await ReadOnly()
            if int(self.dut.done.value):
                self.dones += 1
            if int(self.dut.error.value) and int(self.dut.rows__valid.value):
                self.violations.append(f"cycle {self.clock.cycle}: rows.valid while error")

    async def start(self, n_groups: int, n_rows: int) -> None:
        self.dut.n_groups.value = n_groups
        self.dut.n_rows.value = n_rows
        self.dut.start.value = 1
        await RisingEdge(self.clock.clk)
        self.dut.start.value = 0

    def send(self, words, flags) -> None:
        self.words.send_all({"data": w, "last": int(f)} for w, f in zip(words, flags))

    async def settle(self, limit: int) -> int:
        """Wait until every word is taken and the decoder is idle; returns the cycles."""
        for n in range(limit):
            await RisingEdge(self.clock.clk)
            await ReadOnly()
            if not self.words.busy and not int(self.dut.busy.value):
                await RisingEdge(self.clock.clk)
                return n
        raise AssertionError(f"decoder hung: busy={int(self.dut.busy.value)}, "
                             f"{len(self.words._queue)} words not taken after {limit} cycles")

    async def run_case(self, words, flags, n_groups, n_rows, what: str) -> int | None:
        """Run one stream; check rows / error against the golden unpacker."""
        cfg = self.config
        rows, code = golden(words, flags, cfg, n_groups, n_rows)
        base_items, base_done = len(self.sink.items), self.dones
        # Rows decoded before an error are legal output; they are counted, not compared.
        self.compare_rows = rows is not None
        self.partial = []
        if rows is not None:
            for r in rows:
                self.scoreboard.expect(r, case=what)
        await self.start(n_groups, n_rows)
        self.send(words, flags)
        await self.settle(200 + 20 * len(words))
        if rows is not None:
            await self.sink.wait_for(base_items + len(rows),
                                     timeout_cycles=100 + 20 * len(rows))
        await self.clock.cycles(2)
        err, got_code = int(self.dut.error.value), int(self.dut.error_code.value)
        if rows is not None:
            assert err == 0, f"{what}: DUT error {DecodeError(got_code).name} on a stream the " \
                             f"golden unpacker decodes"
            assert self.dones == base_done + 1, f"{what}: no done pulse"
        else:
            assert err == 1, f"{what}: golden error {DecodeError(code).name}, DUT no error " \
                             f"({len(self.sink.items) - base_items} rows)"
            assert got_code == code, f"{what}: DUT error {DecodeError(got_code).name}, " \
                                     f"golden {DecodeError(code).name}"
            assert self.dones == base_done, f"{what}: done pulse on an erroneous stream"
        assert not self.violations, self.violations[:3]
        return code


# ---------------------------------------------------------------- stimulus
def clean_stream(cfg, rng: random.Random, seed: int, max_rows: int = 12):
    """A small random layer: (words, flags, n_groups, n_rows)."""
    n_rows = rng.randint(1, min(cfg.max_rows, max_rows))
    cout = rng.randint(1, 3 * cfg.lanes)
    sdw = random_sdweight(cfg, cout, n_rows, keep=rng.choice([0.0, 0.3, 0.7, 1.0]),
                          density=rng.choice([0.2, 0.8]), seed=seed,
                          empty_group=rng.random() < 0.3)
    words = pack_ce(sdw)
    flags = [False] * len(words)
    flags[-1] = True
    return words, flags, sdw.n_groups, n_rows


def corrupt(cfg, rng: random.Random, words, flags, n_groups, n_rows):
    """One random corruption of a clean stream; returns (words, flags, G, R, kind)."""
    W, wpr = cfg.ce_word_width, cfg.words_per_record
    words, flags = list(words), list(flags)
    kind = rng.choice(["flip", "flip", "flip", "truncate", "extend", "early_last",
                       "swap_slots", "dup_slot", "rows", "groups", "random", "code"])
    if kind == "flip":
        for _ in range(rng.randint(1, 3)):
            k = rng.randrange(len(words))
            words[k] ^= 1 << rng.randrange(W)
    elif kind == "truncate" and len(words) > 1:
        words = words[:rng.randrange(1, len(words))]
        flags = [False] * len(words)
        flags[-1] = True
    elif kind == "extend":
        extra = [rng.getrandbits(W) for _ in range(rng.randint(1, 2 * wpr))]
        words += extra
        flags = [False] * len(words)
        flags[-1] = True
    elif kind == "early_last":
        flags[rng.randrange(len(words))] = True
    elif kind in ("swap_slots", "dup_slot") and len(words) >= 2 * wpr:
        n_slots = len(words) // wpr
        a, b = rng.randrange(n_slots), rng.randrange(n_slots)
        sa, sb = words[a * wpr:(a + 1) * wpr], words[b * wpr:(b + 1) * wpr]
        if kind == "swap_slots":
            words[a * wpr:(a + 1) * wpr], words[b * wpr:(b + 1) * wpr] = sb, sa
        else:
            words[b * wpr:b * wpr] = sa
            flags = [False] * len(words)
            flags[-1] = True
    elif kind == "rows":
        n_rows = max(0, min((1 << cfg.row_bits) - 1, n_rows + rng.choice([-2, -1, 1, 50])))
    elif kind == "groups":
        n_groups = max(0, min((1 << cfg.group_bits) - 1, n_groups + rng.choice([-1, 1, -99])))
    elif kind == "random":
        words = [rng.getrandbits(W) for _ in range(rng.randint(1, 6 * wpr))]
        flags = [False] * len(words)
        flags[-1] = True
    elif kind == "code":
        # One term code of one record set to an invalid or random value.
        n_slots = len(words) // wpr
        s = rng.randrange(n_slots)
        value = sum(words[s * wpr + k] << (k * W) for k in range(wpr))
        pos = cfg.row_bits + rng.randrange(cfg.lanes * cfg.basis_size * cfg.terms) * cfg.code_bits
        code = rng.choice([1 << cfg.exp_bits, (1 << cfg.code_bits) - 1,
                           rng.getrandbits(cfg.code_bits)])
        value = (value & ~(((1 << cfg.code_bits) - 1) << pos)) | (code << pos)
        for k in range(wpr):
            words[s * wpr + k] = (value >> (k * W)) & ((1 << W) - 1)
    return words, flags, n_groups, n_rows, kind


# ---------------------------------------------------------------- tests
@cocotb.test()
@cocotb.parametrize(stall=[0.0, 0.3, 0.7])
async def decoder_random_layers(dut, stall):
    """Clean random layers, all codes and signs, with stalls on both sides."""
    tb = DecoderTB(dut, stall, seed=int(stall * 100))
    cfg = tb.config
    await tb.clock.reset()
    covered = set()
    for seed in range(3):
        n_rows = min(cfg.max_rows, 2 * cfg.block_rows + 3)
        sdw = random_sdweight(cfg, 2 * cfg.lanes + 1, n_rows, seed=seed)
        k = sdw.shift_codes()[sdw.mask]
        covered |= set(zip(k.tolist(), sdw.sign[sdw.mask].long().tolist()))
        words = pack_ce(sdw)
        flags = [False] * len(words)
        flags[-1] = True
        assert await tb.run_case(words, flags, sdw.n_groups, n_rows, f"seed {seed}") is None
    assert covered == {(k, s) for k in range(cfg.max_shift + 1) for s in (0, 1)}
    tb.scoreboard.check()


@cocotb.test()
async def decoder_fuzz(dut):
    """Thousands of random and corrupted streams in one run (see the module docstring)."""
    tb = DecoderTB(dut, stall=0.2, seed=42)
    cfg = tb.config
    rng = random.Random(1234)
    await tb.clock.reset()
    codes: dict[int | None, int] = {}
    base = [clean_stream(cfg, rng, seed) for seed in range(120)]
    for case in range(FUZZ_CASES):
        words, flags, g, r = base[case % len(base)]
        kind = "clean"
        if case % 5:
            words, flags, g, r, kind = corrupt(cfg, rng, words, flags, g, r)
        code = await tb.run_case(words, flags, g, r, f"case {case} ({kind})")
        codes[code] = codes.get(code, 0) + 1
    tb.scoreboard.check()
    named = {(DecodeError(c).name if c is not None else "ok"): n for c, n in codes.items()}
    dut._log.info(f"fuzz: {FUZZ_CASES} streams, outcomes {named}")
    # Every outcome must occur (BAD_ARGS through n_groups == 0 in every configuration).
    want = {None, *(int(e) for e in DecodeError if e != DecodeError.NONE)}
    missing = {DecodeError(c).name if c is not None else "ok" for c in want - set(codes)}
    assert not missing, f"fuzz never produced {sorted(missing)}: {named}"


@cocotb.test()
async def decoder_reset_mid_stream(dut):
    """Reset in the middle of a stream; the next stream decodes exactly."""
    tb = DecoderTB(dut, stall=0.3, seed=7)
    cfg = tb.config
    rng = random.Random(7)
    await tb.clock.reset()
    words, flags, g, r = clean_stream(cfg, rng, 77, max_rows=30)
    rows, _ = golden(words, flags, cfg, g, r)
    for row in rows:
        tb.scoreboard.expect(row)
    await tb.start(g, r)
    tb.send(words, flags)
    await tb.clock.cycles(len(words) // 2 + 1)
    tb.words.flush()
    await tb.clock.reset(3)
    # What came out before the reset is a prefix of the golden rows.
    assert tb.scoreboard.mismatched == 0, tb.scoreboard.errors[:3]
    assert tb.scoreboard.pending > 0, "the stream finished before the reset"
    tb.scoreboard = Scoreboard("SparseDecoder[after reset]")
    assert int(dut.busy.value) == 0 and int(dut.error.value) == 0
    words, flags, g, r = clean_stream(cfg, rng, 78, max_rows=30)
    assert await tb.run_case(words, flags, g, r, "after reset") is None
    tb.scoreboard.check()


@cocotb.test()
async def decoder_steady_state(dut):
    """>= 1000 rows, no stalls: a word taken every cycle, each row `LATENCY` cycles after its
    slot."""
    tb = DecoderTB(dut)
    cfg = tb.config
    await tb.clock.reset()
    n_rows = min(cfg.max_rows, 1000)
    groups = -(-1000 // n_rows)
    sdw = random_sdweight(cfg, groups * cfg.lanes, n_rows, keep=1.0, empty_group=False,
                          seed=3)
    words = pack_ce(sdw)
    flags = [False] * len(words)
    flags[-1] = True
    rows, _ = golden(words, flags, cfg, sdw.n_groups, n_rows)
    assert len(rows) >= 1000
    assert await tb.run_case(words, flags, sdw.n_groups, n_rows, "steady") is None
    tb.scoreboard.check()
    sent = [c for c, _ in tb.words.sent]
    assert sent == list(range(sent[0], sent[0] + len(words))), "the decoder stalled its input"
    # The final word of record slot k is word (group headers + k + 1) * wpr - 1.
    wpr = cfg.words_per_record
    ends, slot = [], 0
    for row in rows:
        if row["first"]:
            slot += 1                                  # the group's header slot
        ends.append(sent[(slot + 1) * wpr - 1])
        slot += 1
    lat = {o - i for i, o in zip(ends, tb.sink.cycles[-len(rows):])}
    span = tb.sink.cycles[-1] - sent[0] + 1
    dut._log.info(f"steady state: {len(rows)} rows from {len(words)} words in {span} cycles "
                  f"({len(rows) / span:.3f} rows per cycle; {wpr} word(s) per record, one "
                  f"header slot per group), latency {lat}")
    assert lat == {SparseDecoder.LATENCY}, f"row latency {sorted(lat)}"


@pytest.mark.sim
@pytest.mark.parametrize("config_name", list(RTL_CONFIGS))
def test_decoder_rtl(config_name):
    run_block(SparseDecoder, RTL_CONFIGS[config_name], test_module=__name__,
              name="sparse_decoder", timeout_s=500)

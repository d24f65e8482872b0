"""Bounded proof of the decoder's error and stream properties (Yosys ``sat``, no solver needed).

From reset, for every input sequence of `DEPTH` cycles (any words, ``last`` flags,
``start`` pulses with any arguments, back-pressure and resets), the `SparseDecoder`:

1. never offers a valid row while ``error`` is high;
2. is idle (``busy`` low) and takes every word (drains, so it never hangs an upstream
   reader) while ``error`` is high, except in a ``start`` cycle;
3. never drops or changes an offered row before it is taken (stream rule).

The properties are Amaranth ``Assert``\\ s in a small wrapper; Yosys' built-in SAT-based
bounded model check (``sat -seq``) proves them on a small configuration with two words
per record.  About 10 s.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from amaranth import Elaboratable, Module, ResetSignal, Signal
from amaranth.back import rtlil
from amaranth.hdl import Assert

from fpga.tools import find_tool
from hw.config import SDConfig
from hw.decoder import SparseDecoder

#: Cycles of the bounded proof (enough for a start, several slots, an error and a drain).
DEPTH = 20

#: Small configuration: 2 x 2 codes of 3 bits, 8-bit words, two words per record.
CONFIG = SDConfig(basis_size=2, lanes=2, exp_bits=2, exp_min=-1, exp_max=1, basis_bits=4,
                  ce_word_bits=8, block_rows=3, max_rows=6, acc_depth=2, quant_depth=2)


class DecoderProperties(Elaboratable):
    """The decoder with free inputs and the asserted properties."""

    def __init__(self, config: SDConfig, reachable: str | None = None):
        # With `reachable` set to "row" or "error", assert instead that no row is ever
        # offered / no error is ever raised: the proof must then FAIL, which shows the
        # bound is deep enough to reach both behaviours (the check is not vacuous).
        self.reachable = reachable
        self.config = cfg = config
        self.start = Signal()
        self.n_groups = Signal(cfg.group_bits)
        self.n_rows = Signal(cfg.row_bits)
        self.words_valid = Signal()
        self.words_payload = Signal(cfg.ce_word_width + 1)
        self.rows_ready = Signal()
        self.ports = [self.start, self.n_groups, self.n_rows, self.words_valid,
                      self.words_payload, self.rows_ready]

    def elaborate(self, platform):
        m = Module()
        m.submodules.dec = dec = SparseDecoder(self.config)
        m.d.comb += [
            dec.start.eq(self.start), dec.n_groups.eq(self.n_groups),
            dec.n_rows.eq(self.n_rows), dec.words.valid.eq(self.words_valid),
            dec.words.payload.as_value().eq(self.words_payload),
            dec.rows.ready.eq(self.rows_ready),
        ]
        if self.reachable == "row":
            m.d.comb += Assert(~dec.rows.valid)
            return m
        if self.reachable == "error":
            m.d.comb += Assert(~dec.error)
            return m
        payload = dec.rows.payload.as_value()
        held, held_payload, past_rst = Signal(), Signal.like(payload), Signal()
        m.d.sync += [held.eq(dec.rows.valid & ~dec.rows.ready), held_payload.eq(payload),
                     past_rst.eq(ResetSignal())]
        m.d.comb += [
            Assert(~(dec.error & dec.rows.valid)),
            Assert(~dec.error | (~dec.busy & (dec.words.ready | self.start))),
        ]
        with m.If(held & ~past_rst):
            m.d.comb += Assert(dec.rows.valid & (payload == held_payload))
        return m


def _prove(design: DecoderProperties, tmp_path: Path) -> tuple[bool, str]:
    (tmp_path / "props.il").write_text(rtlil.convert(design, name="top", ports=design.ports))
    script = ("read_rtlil props.il; hierarchy -top top; proc; flatten; opt -fast; "
              f"async2sync; dffunmap; sat -prove-asserts -set-init-zero -seq {DEPTH} "
              "-show-ports top")
    proc = subprocess.run([*find_tool("yosys"), "-p", script], capture_output=True, text=True,
                          cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"yosys failed:\n{out[-3000:]}"
    if "SAT proof finished - no model found: SUCCESS" in out:
        return True, out
    assert "SAT proof finished - model found: FAIL" in out, f"no proof result:\n{out[-3000:]}"
    return False, out


def test_decoder_error_and_stream_properties_bounded(tmp_path):
    proved, out = _prove(DecoderProperties(CONFIG), tmp_path)
    assert proved, f"bounded proof failed (counterexample below):\n{out[-8000:]}"


def test_bound_reaches_rows_and_errors(tmp_path):
    for what in ("row", "error"):
        proved, _ = _prove(DecoderProperties(CONFIG, reachable=what), tmp_path)
        assert not proved, f"no {what} is reachable within {DEPTH} cycles: the proof is vacuous"

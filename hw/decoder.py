"""Sparse coefficient decoder: packed Ce stream (``docs/format.md``) to decoded rows.

The stream of a layer is, per group, one header slot and one record slot per kept row;
a slot is ``words_per_record`` words of ``ce_word_width`` bits.  The decoder assembles a
slot, checks it and turns a record into one `decoded_row_layout` row for all lanes
(``mask``/``sign``/``shift`` per term).  Pruned rows are not in the stream, so they cost
no cycle; a group without kept rows yields one ``empty`` row so downstream sees its end.
"""

from __future__ import annotations

import enum

import numpy as np
from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import SDConfig
from hw.layouts import DecodeError, ce_word_layout, decoded_row_layout

__all__ = ["SparseDecoder", "DecodeError", "const_div"]


def _reciprocal(divisor: int, max_value: int) -> tuple[int, int]:
    """``(m, k)`` with ``(n * m) >> k == n // divisor`` for every ``0 <= n <= max_value``."""
    values = np.arange(max_value + 1, dtype=object if max_value > (1 << 40) else np.int64)
    for k in range(max_value.bit_length(), 2 * max_value.bit_length() + 8):
        mult = -(-(1 << k) // divisor)
        if mult.bit_length() + max_value.bit_length() > 62:
            break
        if np.array_equal((values * mult) >> k, values // divisor):
            return mult, k
    raise ValueError(f"no exact reciprocal for division by {divisor} up to {max_value}")


#: quotients of inputs up to this many bits come from a table (a few LUTs per bit)
_TABLE_BITS = 6


def _table(index, fn, width: int):
    """``fn(index)`` for a constant function, as a tree of 2:1 muxes on ``index``'s bits
    (plain logic that synthesis folds into LUTs and formal tools can model, unlike a
    ROM read)."""
    def node(bit, prefix):
        if bit < 0:
            return Const(fn(prefix), width)
        return Mux(index[bit], node(bit - 1, prefix | (1 << bit)), node(bit - 1, prefix))
    return node(len(index) - 1, 0)


def const_div(value, divisor: int, max_value: int):
    """``value // divisor`` for ``0 <= value <= max_value``, without a ``$mul`` or ``$div``.

    The divisor's power-of-two factor is a shift (``n // (d * 2**z) == (n >> z) // d``).
    What is left of a small dividend (at most `_TABLE_BITS` bits, e.g. a row index of
    1024 rows over 192-row blocks: ``(row >> 6) // 3``) is a constant table, which maps
    to one shallow LUT level per quotient bit; a wider one is ``(value * m) >> k`` with
    the constant multiplication written as a sum of shifted copies of ``value``.
    """
    if divisor < 1:
        raise ValueError(f"divisor must be >= 1, got {divisor!r}")
    tz = (divisor & -divisor).bit_length() - 1
    value, divisor, max_value = value >> tz, divisor >> tz, max_value >> tz
    if divisor == 1:
        return value
    if max_value.bit_length() <= _TABLE_BITS:
        n = max_value.bit_length()
        return _table(value[:n], lambda v: v // divisor, (((1 << n) - 1) // divisor).bit_length())
    mult, k = _reciprocal(divisor, max_value)
    parts = [value << b for b in range(mult.bit_length()) if (mult >> b) & 1]
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total >> k


class _State(enum.IntEnum):
    IDLE = 0
    HEADER = 1
    RECORD = 2


class SparseDecoder(wiring.Component):
    """Decode a layer's packed coefficient stream into one row per kept row per group.

    Parameters
    ----------
    config : SDConfig
        Supplies the word width (``ce_word_width``, ``words_per_record``), the record
        layout (``lanes``, ``basis_size``, ``terms``, ``exp_bits``, exponent range) and
        the index widths.

    Attributes
    ----------
    words : In(stream.Signature(ce_word_layout(config)))
        Packed words; ``last`` marks the final word of the layer's stream.
    start : In(1)
        One-cycle pulse: latch ``n_groups`` / ``n_rows``, clear ``error`` and begin with
        the first group header (aborting a stream in progress).  No word is taken in the
        cycle of ``start``.
    n_groups : In(group_bits)
        Groups of the layer (>= 1).
    n_rows : In(row_bits)
        Rows per filter ``R`` of the layer (``<= max_rows``); bounds the header counts and
        row indices.
    busy : Out(1)
        High from ``start`` until the final slot is decoded or an error is found.
    done : Out(1)
        One-cycle pulse after the final slot of the final group was decoded correctly
        (its row may still wait on ``rows``).
    error : Out(1)
        Sticky until the next ``start``; ``error_code`` holds the `DecodeError` value.
    error_code : Out(4)
        Cause of the first error (see `DecodeError`).
    rows : Out(stream.Signature(decoded_row_layout(config)))
        Decoded rows.  ``shift`` is ``field - 1`` (``e - exp_min``) for a non-zero term
        and 0 for a zero term; ``new_block`` is set on the first row of a group
        (including an ``empty`` row) and where ``block`` changes.

    Notes
    -----
    Latency 1 cycle: a row is presented on ``rows`` in the cycle after the final word of
    its slot is transferred.  Throughput one word per cycle, so one row every
    ``words_per_record`` cycles plus one header slot per group; with one word per record
    (the default) a group of ``k`` kept rows takes ``k + 1`` cycles.  Only the final word
    of a slot and a word with ``last`` wait for the output register to be free
    (``words.ready`` may depend on ``rows.ready`` and on ``words.payload``).

    Errors (`DecodeError`): wrong header tag, header count ``> n_rows``, row index
    ``>= n_rows`` or not increasing, an invalid code, non-zero padding, ``last`` on any
    word except the final one, ``last`` missing on the final one, ``start`` with
    ``n_groups == 0`` or ``n_rows > max_rows``.  A slot is checked when its final word
    arrives (``last`` on every word); the first error found sets ``error`` and
    ``error_code`` and sends the decoder to idle (``busy`` low).  The failing slot is
    never emitted, and since the word that reveals an error is only taken (and bad
    ``start`` arguments are only reported, ``busy`` high until then) while the output
    register is empty or being read, ``rows.valid`` is low whenever ``error`` is high
    (a bounded proof in ``tests/test_decoder_formal.py``).  While ``error`` is set the decoder accepts
    and discards every word (``words.ready`` high), so an upstream reader can never
    hang on it; before the first ``start`` and after ``done`` it takes no words.
    """

    def __init__(self, config: SDConfig):
        if not isinstance(config, SDConfig):
            raise TypeError(f"config must be an SDConfig, got {type(config).__name__}: "
                            f"{config!r}")
        self.config = config
        super().__init__({
            "words": In(stream.Signature(ce_word_layout(config))),
            "start": In(1),
            "n_groups": In(config.group_bits),
            "n_rows": In(config.row_bits),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(1),
            "error_code": Out(4),
            "rows": Out(stream.Signature(decoded_row_layout(config))),
        })

    # ------------------------------------------------------------------ elaborate
    def elaborate(self, platform):
        cfg = self.config
        W, wpr = cfg.ce_word_width, cfg.words_per_record
        m = Module()

        state = Signal(_State)
        # Groups after the current one and whether the current one is the final group:
        # counted down and registered, so no `group == n_groups - 1` compare sits on
        # the path into the checks and the output register (timing).
        groups = Signal(cfg.group_bits)
        final_group = Signal()
        rows_r = Signal(cfg.row_bits)         # latched n_rows (R)
        group = Signal(cfg.group_bits)        # current group
        remaining = Signal(cfg.row_bits)      # records left in the current group
        first_rec = Signal()                  # next record is the group's first
        prev_row = Signal(cfg.row_bits)
        prev_block = Signal(cfg.block_bits)
        widx = Signal(range(max(2, wpr)))     # word index inside the slot
        buf = Signal(W * (wpr - 1)) if wpr > 1 else None

        out = self.rows
        out_free = Signal()
        m.d.comb += [out_free.eq(~out.valid | out.ready),
                     self.busy.eq(state != _State.IDLE)]
        with m.If(out.ready):
            m.d.sync += out.valid.eq(0)       # overridden below when a row is loaded
        m.d.sync += self.done.eq(0)

        word = self.words.payload
        completing = Signal()
        m.d.comb += completing.eq(widx == wpr - 1)
        running = Signal()
        m.d.comb += running.eq((state == _State.HEADER) | (state == _State.RECORD))
        bad_args = Signal()                   # latched at start, reported when out_free
        with m.If(self.start | bad_args):
            m.d.comb += self.words.ready.eq(0)
        with m.Elif(running):
            m.d.comb += self.words.ready.eq(Mux(completing | word.last, out_free, 1))
        with m.Else():
            m.d.comb += self.words.ready.eq(self.error)      # drain after an error
        take = Signal()
        m.d.comb += take.eq(self.words.valid & self.words.ready & running)

        slot = Cat(buf, word.data) if wpr > 1 else word.data

        def fail(code):
            m.d.sync += [self.error.eq(1), self.error_code.eq(code), state.eq(_State.IDLE)]

        # ---- start ---------------------------------------------------------------
        with m.If(self.start):
            m.d.sync += [self.error.eq(0), self.error_code.eq(DecodeError.NONE),
                         groups.eq(self.n_groups - 1), final_group.eq(self.n_groups == 1),
                         rows_r.eq(self.n_rows), group.eq(0),
                         widx.eq(0), state.eq(_State.HEADER),
                         bad_args.eq((self.n_groups == 0) | (self.n_rows > cfg.max_rows))]

        # ---- bad arguments: reported once a row of the previous stream has left ------
        with m.Elif(bad_args):
            with m.If(out_free):
                m.d.sync += bad_args.eq(0)
                fail(DecodeError.BAD_ARGS)

        # ---- a word that does not complete its slot --------------------------------
        with m.Elif(take & ~completing):
            if wpr > 1:
                m.d.sync += [buf.eq(Cat(buf[W:], word.data)), widx.eq(widx + 1)]
            with m.If(word.last):
                fail(DecodeError.EARLY_LAST)

        # ---- the final word of a header slot ---------------------------------------------
        with m.Elif(take & (state == _State.HEADER)):
            self._header(m, slot, word.last, (groups, final_group), rows_r, group, remaining, first_rec,
                         widx, state, fail)

        # ---- the final word of a record slot ---------------------------------------------
        with m.Elif(take & (state == _State.RECORD)):
            self._record(m, slot, word.last, (groups, final_group), rows_r, group, remaining, first_rec,
                         prev_row, prev_block, widx, state, fail)
        return m

    # ------------------------------------------------------------------ helpers
    def _final_group(self, group, groups):
        return groups[1]

    def _finish_group(self, m, group, groups, state):
        """Advance to the next group's header, or to idle after the final group."""
        with m.If(self._final_group(group, groups)):
            m.d.sync += [state.eq(_State.IDLE), self.done.eq(1)]
        with m.Else():
            left, final = groups
            m.d.sync += [state.eq(_State.HEADER), group.eq(group + 1), left.eq(left - 1),
                         final.eq(left == 1)]

    def _check_last(self, m, last, final, fail, ok):
        """Fail on ``last`` before the final word or missing on it; else run ``ok()``."""
        with m.If(last & ~final):
            fail(DecodeError.EARLY_LAST)
        with m.Elif(~last & final):
            fail(DecodeError.MISSING_LAST)
        with m.Else():
            ok()

    def _header(self, m, slot, last, groups, rows_r, group, remaining, first_rec, widx,
                state, fail):
        cfg = self.config
        count = slot[:cfg.row_bits]
        tag = slot[cfg.row_bits:cfg.header_bits]
        pad = slot[cfg.header_bits:]
        m.d.sync += widx.eq(0)
        final = Signal()
        m.d.comb += final.eq((count == 0) & self._final_group(group, groups))
        with m.If(tag != cfg.header_tag):
            fail(DecodeError.BAD_TAG)
        with m.Elif(count > rows_r):
            fail(DecodeError.BAD_COUNT)
        with m.Elif(pad != 0):
            fail(DecodeError.PADDING)
        with m.Else():
            def ok():
                with m.If(count == 0):
                    self._emit_empty(m, group)
                    self._finish_group(m, group, groups, state)
                with m.Else():
                    m.d.sync += [remaining.eq(count), first_rec.eq(1),
                                 state.eq(_State.RECORD)]
            self._check_last(m, last, final, fail, ok)

    def _emit_empty(self, m, group):
        p = self.rows.payload
        m.d.sync += [self.rows.valid.eq(1), p.eq(0), p.group.eq(group), p.new_block.eq(1),
                     p.first.eq(1), p.last.eq(1), p.empty.eq(1)]

    def _record(self, m, slot, last, groups, rows_r, group, remaining, first_rec, prev_row,
                prev_block, widx, state, fail):
        cfg = self.config
        S, T, L, cb, eb = cfg.basis_size, cfg.terms, cfg.lanes, cfg.code_bits, cfg.exp_bits
        row = slot[:cfg.row_bits]
        pad = slot[cfg.record_bits:] if len(slot) > cfg.record_bits else Const(0, 1)
        m.d.sync += widx.eq(0)

        block = Signal(cfg.block_bits)
        m.d.comb += block.eq(const_div(row, cfg.block_rows, cfg.max_rows))
        p = self.rows.payload
        bad_code = []
        loads = []
        for l in range(L):
            for j in range(S):
                for t in range(T):
                    k = j * T + t
                    off = cfg.row_bits + ((l * S + j) * T + t) * cb
                    field, sign = slot[off:off + eb], slot[off + eb]
                    bad_code.append((sign & (field == 0)) | (field > cfg.exp_levels))
                    loads += [p.mask[l][k].eq(field != 0),
                              p.sign[l][k].eq(sign),
                              p.shift[l][k].eq(Mux(field != 0, field - 1, 0))]
        any_bad = Signal()
        m.d.comb += any_bad.eq(Cat(*bad_code).any())
        final = Signal()
        m.d.comb += final.eq((remaining == 1) & self._final_group(group, groups))
        # The payload and the record bookkeeping load on every completing record word,
        # checked or not: a failing slot never sets `rows.valid` (and the decoder goes
        # idle, so the bookkeeping is reloaded by the next header), and the words are
        # only taken while the output register is free.  Only `valid`, the state and
        # the group counters wait for the checks, which keeps the check chains' fan-out
        # small (timing).
        m.d.sync += loads + [
            p.row.eq(row), p.block.eq(block), p.group.eq(group),
            p.new_block.eq(first_rec | (block != prev_block)),
            p.first.eq(first_rec), p.last.eq(remaining == 1), p.empty.eq(0),
            prev_row.eq(row), prev_block.eq(block), first_rec.eq(0),
            remaining.eq(remaining - 1),
        ]
        with m.If(row >= rows_r):
            fail(DecodeError.ROW_RANGE)
        with m.Elif(~first_rec & (row <= prev_row)):
            fail(DecodeError.ROW_ORDER)
        with m.Elif(any_bad):
            fail(DecodeError.BAD_CODE)
        with m.Elif(pad != 0):
            fail(DecodeError.PADDING)
        with m.Else():
            def ok():
                m.d.sync += self.rows.valid.eq(1)
                with m.If(remaining == 1):
                    self._finish_group(m, group, groups, state)
            self._check_last(m, last, final, fail, ok)

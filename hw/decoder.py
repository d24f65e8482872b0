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
from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
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
    Two stages.  Stage 1 takes a word whenever its two-slot buffer has room, assembles
    the slot and registers it decoded (``mask``/``sign``/``shift``, ``block``) together
    with the outcome of every check that needs only the slot, the latched ``n_rows`` and
    the previous slot's row.  Stage 2 runs the header/record sequence and the output
    register from flip-flops only: the checks that need its state (row order, the final
    slot, ``last``) are a few gates on registered flags, and the output payload loads
    whenever the output register is free (only ``valid`` waits for the checks), so its
    enable is ``~rows.valid | rows.ready`` alone.  ``words.ready`` depends on registers
    and ``start`` only, neither on ``words.payload`` nor on ``rows.ready``.

    Latency `LATENCY` (2) cycles: a row is presented on ``rows`` two cycles after the
    final word of its slot is transferred.  Throughput one word per cycle, so one row
    every ``words_per_record`` cycles plus one header slot per group; with one word per
    record (the default) a group of ``k`` kept rows takes ``k + 1`` cycles.  A stream
    ends at its word with ``last``: stage 1 takes no further word until the next
    ``start``.

    Errors (`DecodeError`): wrong header tag, header count ``> n_rows``, row index
    ``>= n_rows`` or not increasing, an invalid code, non-zero padding, ``last`` on any
    word except the final one, ``last`` missing on the final one, ``start`` with
    ``n_groups == 0`` or ``n_rows > max_rows``.  Slots are checked in stage 2 in stream
    order (a word with ``last`` that ends a slot early is reported there too); the first
    error found sets ``error`` and ``error_code``, empties stage 1 and sends the decoder
    to idle (``busy`` low).  The failing slot is never emitted, and since stage 2 takes
    a slot (and bad ``start`` arguments are only reported, ``busy`` high until then)
    only while the output register is empty or being read, ``rows.valid`` is low
    whenever ``error`` is high (a bounded proof in ``tests/test_decoder_formal.py``).
    While ``error`` is set the decoder accepts and discards every word (``words.ready``
    high), so an upstream reader can never hang on it; before the first ``start`` and
    after ``done`` it takes no words.
    """

    #: Cycles from the transfer of a slot's final word to its row on ``rows``.
    LATENCY = 2

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
        S, T, L, cb, eb = cfg.basis_size, cfg.terms, cfg.lanes, cfg.code_bits, cfg.exp_bits
        n = S * T
        m = Module()

        # ================= stage 1: take a word, assemble the slot, check it ==============
        # Every check that needs only the slot (and the latched `n_rows` or the previous
        # slot's row) is done here and registered with the decoded fields, so stage 2
        # decides from flip-flops only.  `words.ready` is a function of registers and
        # `start`: neither the word nor `rows.ready` reaches it.
        entry = _entry_layout(cfg)
        rows_r = Signal(cfg.row_bits)          # latched n_rows (R)
        bad_args = Signal()                    # latched at start, reported when out_free
        in_run = Signal()                      # words are taken (start .. word with last)
        widx = Signal(range(max(2, wpr)))      # word index inside the slot
        buf = Signal(W * (wpr - 1)) if wpr > 1 else None
        prev_row = Signal(cfg.row_bits)        # row field of the previous complete slot
        prev_block = Signal(cfg.block_bits)
        mem = [Signal(entry, name=f"slot{k}", reset_less=True) for k in range(2)]
        wptr, rptr = Signal(), Signal()
        count = Signal(range(3))               # slots held (0 ... 2)
        nonempty, full = Signal(), Signal()    # registered views of `count`

        word = self.words.payload
        with m.If(self.start | bad_args):
            m.d.comb += self.words.ready.eq(0)
        with m.Else():
            # Drain after an error, so an upstream reader never hangs on the decoder.
            m.d.comb += self.words.ready.eq(self.error | (in_run & ~full))
        take = Signal()
        m.d.comb += take.eq(self.words.valid & self.words.ready & in_run)
        completing = Signal()
        m.d.comb += completing.eq(widx == wpr - 1)
        push = Signal()
        m.d.comb += push.eq(take & (completing | word.last))

        slot = Cat(buf, word.data) if wpr > 1 else word.data
        row = slot[:cfg.row_bits]
        new = Signal(entry)
        bad_code = []
        for l in range(L):
            for j in range(S):
                for t in range(T):
                    k = j * T + t
                    off = cfg.row_bits + ((l * S + j) * T + t) * cb
                    field, sign = slot[off:off + eb], slot[off + eb]
                    bad_code.append((sign & (field == 0)) | (field > cfg.exp_levels))
                    m.d.comb += [new.mask[l][k].eq(field != 0), new.sign[l][k].eq(sign),
                                 new.shift[l][k].eq(Mux(field != 0, field - 1, 0))]
        rpad = slot[cfg.record_bits:] if len(slot) > cfg.record_bits else Const(0, 1)
        m.d.comb += [
            new.row.eq(row),
            new.block.eq(const_div(row, cfg.block_rows, cfg.max_rows)),
            new.last.eq(word.last),
            new.early.eq(~completing),
            new.cnt_zero.eq(row == 0),
            new.cnt_one.eq(row == 1),
            new.bad_tag.eq(slot[cfg.row_bits:cfg.header_bits] != cfg.header_tag),
            new.bad_count.eq(row > rows_r),
            new.hdr_pad.eq(slot[cfg.header_bits:] != 0),
            new.bad_range.eq(row >= rows_r),
            new.le_prev.eq(row <= prev_row),
            new.bad_code.eq(Cat(*bad_code).any()),
            new.rec_pad.eq(rpad != 0),
        ]
        m.d.comb += new.block_ne.eq(new.block != prev_block)
        # The slot under the write pointer is free whenever the buffer is not full (with
        # one slot held it is the other one; with none, stage 2 does not read it), so it
        # loads every such cycle, pushed or not: its enable is `wptr` and `full` alone,
        # two flip-flops, not the word handshake (`push` only moves the pointer and the
        # count, which decide whether the slot counts).
        for k in range(2):
            with m.If(~full & (wptr == k)):
                m.d.sync += mem[k].eq(new)
        with m.If(take):
            with m.If(completing):
                m.d.sync += [prev_row.eq(row), prev_block.eq(new.block)]
                if wpr > 1:
                    m.d.sync += widx.eq(0)
            if wpr > 1:
                with m.Else():
                    m.d.sync += [buf.eq(Cat(buf[W:], word.data)), widx.eq(widx + 1)]
            with m.If(word.last):
                m.d.sync += in_run.eq(0)       # the stream ends here (or it is an error)
        with m.If(push):
            m.d.sync += wptr.eq(~wptr)

        # ================= stage 2: the slot sequence, from registers =====================
        state = Signal(_State)
        # Groups after the current one and whether the current one is the final group:
        # counted down and registered, so no `group == n_groups - 1` compare sits on
        # the path into the checks and the output register (timing).
        groups = Signal(cfg.group_bits)
        final_group = Signal()
        group = Signal(cfg.group_bits)         # current group
        remaining = Signal(cfg.row_bits)       # records left in the current group
        rem_one = Signal()                     # remaining == 1
        first_rec = Signal()                   # next record is the group's first
        hdr = Signal()                         # state == HEADER (one flip-flop)

        out = self.rows
        out_free = Signal()
        m.d.comb += [out_free.eq(~out.valid | out.ready),
                     self.busy.eq(state != _State.IDLE)]
        with m.If(out.ready):
            m.d.sync += out.valid.eq(0)        # overridden below when a row is loaded
        m.d.sync += self.done.eq(0)

        head = Signal(entry)
        m.d.comb += head.eq(Mux(rptr, mem[1], mem[0]))
        running = Signal()
        m.d.comb += running.eq((state == _State.HEADER) | (state == _State.RECORD))
        pop = Signal()
        m.d.comb += pop.eq(nonempty & out_free & running & ~bad_args & ~self.start)

        # The payload loads whenever the output register is free, whatever the slot (or
        # no slot): only `valid` waits for the checks.  So its enable is `out_free` alone.
        p = out.payload
        with m.If(out_free):
            m.d.sync += [
                p.row.eq(Mux(hdr, 0, head.row)), p.block.eq(Mux(hdr, 0, head.block)),
                p.group.eq(group),
                p.new_block.eq(hdr | first_rec | head.block_ne),
                p.first.eq(hdr | first_rec), p.last.eq(hdr | rem_one), p.empty.eq(hdr),
            ]
            for l in range(L):
                for k in range(n):
                    m.d.sync += [p.mask[l][k].eq(head.mask[l][k] & ~hdr),
                                 p.sign[l][k].eq(head.sign[l][k] & ~hdr),
                                 p.shift[l][k].eq(Mux(hdr, 0, head.shift[l][k]))]

        nxt = Signal(range(3))
        m.d.comb += nxt.eq(count + push - pop)
        m.d.sync += [count.eq(nxt), nonempty.eq(nxt != 0), full.eq(nxt == 2)]
        with m.If(pop):
            m.d.sync += rptr.eq(~rptr)

        def set_state(s):
            m.d.sync += [state.eq(s), hdr.eq(s == _State.HEADER)]

        def flush():
            m.d.sync += [in_run.eq(0), count.eq(0), nonempty.eq(0), full.eq(0),
                         wptr.eq(0), rptr.eq(0), widx.eq(0)]

        def fail(code):
            m.d.sync += [self.error.eq(1), self.error_code.eq(code)]
            set_state(_State.IDLE)
            flush()

        def finish_group():
            """Advance to the next group's header, or to idle after the final group."""
            with m.If(final_group):
                set_state(_State.IDLE)
                m.d.sync += self.done.eq(1)
            with m.Else():
                set_state(_State.HEADER)
                m.d.sync += [group.eq(group + 1), groups.eq(groups - 1),
                             final_group.eq(groups == 1)]

        def first_failure(checks, ok):
            """Fail with the code of the first true ``(condition, code)`` of ``checks``
            (the order is the priority of the error codes); else ``ok()``."""
            (cond, code), *rest = checks
            with m.If(cond):
                fail(code)
            for cond, code in rest:
                with m.Elif(cond):
                    fail(code)
            with m.Else():
                ok()

        def check_last(final, ok):
            """Fail on ``last`` before the final slot or missing on it; else ``ok()``."""
            first_failure([(head.last & ~final, DecodeError.EARLY_LAST),
                           (~head.last & final, DecodeError.MISSING_LAST)], ok)

        # ---- start ---------------------------------------------------------------
        with m.If(self.start):
            m.d.sync += [self.error.eq(0), self.error_code.eq(DecodeError.NONE),
                         groups.eq(self.n_groups - 1), final_group.eq(self.n_groups == 1),
                         rows_r.eq(self.n_rows), group.eq(0),
                         bad_args.eq((self.n_groups == 0) | (self.n_rows > cfg.max_rows))]
            set_state(_State.HEADER)
            flush()
            m.d.sync += in_run.eq(1)

        # ---- bad arguments: reported once a row of the previous stream has left ------
        with m.Elif(bad_args):
            with m.If(out_free):
                m.d.sync += bad_args.eq(0)
                fail(DecodeError.BAD_ARGS)

        # ---- a slot that ends with `last` before its final word ---------------------
        with m.Elif(pop & head.early):
            fail(DecodeError.EARLY_LAST)

        # ---- a header slot ----------------------------------------------------------
        with m.Elif(pop & hdr):
            def header_ok():
                with m.If(head.cnt_zero):
                    m.d.sync += out.valid.eq(1)          # the group's `empty` row
                    finish_group()
                with m.Else():
                    m.d.sync += [remaining.eq(head.row), rem_one.eq(head.cnt_one),
                                 first_rec.eq(1)]
                    set_state(_State.RECORD)
            first_failure([(head.bad_tag, DecodeError.BAD_TAG),
                           (head.bad_count, DecodeError.BAD_COUNT),
                           (head.hdr_pad, DecodeError.PADDING)],
                          lambda: check_last(head.cnt_zero & final_group, header_ok))

        # ---- a record slot ----------------------------------------------------------
        with m.Elif(pop):
            def record_ok():
                m.d.sync += [out.valid.eq(1), first_rec.eq(0),
                             remaining.eq(remaining - 1), rem_one.eq(remaining == 2)]
                with m.If(rem_one):
                    finish_group()
            first_failure([(head.bad_range, DecodeError.ROW_RANGE),
                           (~first_rec & head.le_prev, DecodeError.ROW_ORDER),
                           (head.bad_code, DecodeError.BAD_CODE),
                           (head.rec_pad, DecodeError.PADDING)],
                          lambda: check_last(rem_one & final_group, record_ok))
        return m


def _entry_layout(cfg: SDConfig) -> data.StructLayout:
    """A checked slot between the decoder's two stages: the decoded record fields (the
    header count is ``row``) and the outcome of every check that needs only the slot."""
    n = cfg.basis_size * cfg.terms
    flags = ("last", "early", "cnt_zero", "cnt_one", "bad_tag", "bad_count", "hdr_pad",
             "bad_range", "le_prev", "bad_code", "rec_pad", "block_ne")
    return data.StructLayout({
        "row": unsigned(cfg.row_bits), "block": unsigned(cfg.block_bits),
        "mask": data.ArrayLayout(unsigned(n), cfg.lanes),
        "sign": data.ArrayLayout(unsigned(n), cfg.lanes),
        "shift": data.ArrayLayout(data.ArrayLayout(unsigned(cfg.shift_code_bits), n),
                                  cfg.lanes),
        **{f: unsigned(1) for f in flags},
    })

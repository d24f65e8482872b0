"""Dense int8 row reader: the baseline's replacement for decoder + basis array.

The dense baseline stores every row of every filter as plain signed weights, one memory
word per (group, row) holding the ``lanes x S`` weights of that row (weight ``(l, i)`` at
bit ``(l * S + i) * weight_bits``).  The reader turns that word stream into the same
`weights_row_layout` rows the basis array emits, so both paths feed the same MAC lanes.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import SDConfig
from hw.layouts import DecodeError, dense_word_layout, weights_row_layout

__all__ = ["DenseRowReader"]


class DenseRowReader(wiring.Component):
    """Stream ``n_groups x n_rows`` dense weight words out as tagged weight rows.

    Parameters
    ----------
    config : SDConfig
        Supplies ``lanes``, ``basis_size``, ``block_rows``, ``max_rows`` and index widths.
    weight_bits : int, optional
        Signed width of a stored weight (default 8, the int8 baseline).

    Attributes
    ----------
    words : In(stream.Signature(dense_word_layout(config, weight_bits)))
        One word per row, groups in order, rows ``0 ... n_rows - 1`` in order;
        ``last`` marks the final word of the layer.
    start, n_groups, n_rows, busy, done, error, error_code
        As in `SparseDecoder`: ``start`` latches the counts and clears ``error``;
        ``error_code`` is ``BAD_ARGS`` (``n_groups == 0``, ``n_rows == 0`` or
        ``n_rows > max_rows``), ``EARLY_LAST`` or ``MISSING_LAST``.  After an error the
        reader is idle and drains its input until ``start``; ``rows.valid`` is low
        whenever ``error`` is high.
    rows : Out(stream.Signature(weights_row_layout(config, weight_bits)))
        ``row``, ``block`` (``row // block_rows``), ``group``, ``new_block`` (row 0 of a
        group or first row of a block), ``first``/``last`` (row 0 / ``n_rows - 1``),
        ``empty`` = 0, and the weights.

    Notes
    -----
    Latency 1 cycle (word transferred in cycle ``n``, row presented from ``n + 1``);
    throughput one row per cycle.  ``words.ready = ~rows.valid | rows.ready`` while
    running, so it depends combinationally on ``rows.ready``.
    """

    def __init__(self, config: SDConfig, weight_bits: int = 8):
        if not isinstance(config, SDConfig):
            raise TypeError(f"config must be an SDConfig, got {type(config).__name__}: "
                            f"{config!r}")
        if isinstance(weight_bits, bool) or not isinstance(weight_bits, int):
            raise TypeError(f"weight_bits must be an int, got {weight_bits!r}")
        if not 2 <= weight_bits <= 32:
            raise ValueError(f"weight_bits must be in [2, 32], got {weight_bits!r}")
        self.config = config
        self.weight_bits = weight_bits
        super().__init__({
            "words": In(stream.Signature(dense_word_layout(config, weight_bits))),
            "start": In(1),
            "n_groups": In(config.group_bits),
            "n_rows": In(config.row_bits),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(1),
            "error_code": Out(4),
            "rows": Out(stream.Signature(weights_row_layout(config, weight_bits))),
        })

    def elaborate(self, platform):
        cfg = self.config
        m = Module()
        running = Signal()
        # Position in the stream, with every compare the checks and tags need kept as a
        # registered flag updated one row ahead (no `row == n_rows - 1` or
        # `group == n_groups - 1` compare in front of the output register; timing).
        rows_m1 = Signal(cfg.row_bits)        # n_rows - 1
        rows_one = Signal()                   # n_rows == 1
        groups = Signal(cfg.group_bits)       # groups after the current one
        final_group = Signal()
        group, row = Signal(cfg.group_bits), Signal(cfg.row_bits)
        left = Signal(cfg.row_bits)           # rows of the group after the current one
        last_row = Signal()                   # left == 0
        block = Signal(cfg.block_bits)
        in_block = Signal(range(cfg.block_rows))   # row index inside its block
        blk_first, blk_last = Signal(), Signal()   # in_block == 0 / == block_rows - 1
        first_row = Signal()                  # row == 0

        out = self.rows
        out_free = Signal()
        m.d.comb += [out_free.eq(~out.valid | out.ready), self.busy.eq(running)]
        with m.If(out.ready):
            m.d.sync += out.valid.eq(0)
        m.d.sync += self.done.eq(0)

        bad_args = Signal()                   # latched at start, reported when out_free
        with m.If(self.start | bad_args):
            m.d.comb += self.words.ready.eq(0)
        with m.Elif(running):
            m.d.comb += self.words.ready.eq(out_free)
        with m.Else():
            m.d.comb += self.words.ready.eq(self.error)      # drain after an error
        take = Signal()
        m.d.comb += take.eq(self.words.valid & self.words.ready & running)

        def fail(code):
            m.d.sync += [self.error.eq(1), self.error_code.eq(code), running.eq(0)]

        final = Signal()
        m.d.comb += final.eq(last_row & final_group)
        word = self.words.payload
        # The payload loads whenever the output register is free, word or not: only
        # `valid` waits for a checked word, so the enable of the wide register is
        # `out_free` alone.
        p = out.payload
        with m.If(out_free):
            m.d.sync += [
                p.row.eq(row), p.block.eq(block), p.group.eq(group),
                p.new_block.eq(first_row | blk_first),
                p.first.eq(first_row), p.last.eq(last_row), p.empty.eq(0),
                p.weights.eq(word.data),
            ]
        with m.If(self.start):
            m.d.sync += [self.error.eq(0), self.error_code.eq(DecodeError.NONE),
                         groups.eq(self.n_groups - 1), final_group.eq(self.n_groups == 1),
                         rows_m1.eq(self.n_rows - 1), rows_one.eq(self.n_rows == 1),
                         left.eq(self.n_rows - 1), last_row.eq(self.n_rows == 1),
                         group.eq(0), row.eq(0), first_row.eq(1), block.eq(0),
                         in_block.eq(0), blk_first.eq(1), blk_last.eq(cfg.block_rows == 1),
                         running.eq(1),
                         bad_args.eq((self.n_groups == 0) | (self.n_rows == 0)
                                     | (self.n_rows > cfg.max_rows))]
        with m.Elif(bad_args):
            # Reported once a row of the previous stream has left: no valid row is ever
            # offered while `error` is high.
            with m.If(out_free):
                m.d.sync += bad_args.eq(0)
                fail(DecodeError.BAD_ARGS)
        with m.Elif(take):
            with m.If(word.last & ~final):
                fail(DecodeError.EARLY_LAST)
            with m.Elif(~word.last & final):
                fail(DecodeError.MISSING_LAST)
            with m.Else():
                m.d.sync += out.valid.eq(1)
                with m.If(last_row):
                    m.d.sync += [row.eq(0), first_row.eq(1), left.eq(rows_m1),
                                 last_row.eq(rows_one), block.eq(0), in_block.eq(0),
                                 blk_first.eq(1), blk_last.eq(cfg.block_rows == 1),
                                 group.eq(group + 1), groups.eq(groups - 1),
                                 final_group.eq(groups == 1)]
                    with m.If(final):
                        m.d.sync += [running.eq(0), self.done.eq(1)]
                with m.Else():
                    m.d.sync += [row.eq(row + 1), first_row.eq(0), left.eq(left - 1),
                                 last_row.eq(left == 1)]
                    with m.If(blk_last):
                        m.d.sync += [in_block.eq(0), block.eq(block + 1), blk_first.eq(1),
                                     blk_last.eq(cfg.block_rows == 1)]
                    with m.Else():
                        m.d.sync += [in_block.eq(in_block + 1), blk_first.eq(0),
                                     blk_last.eq(in_block == cfg.block_rows - 2)]
        return m

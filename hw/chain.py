"""Sequencer-less datapath chains used by the chained block tests.

`ChainSD` wires ``SparseDecoder -> BasisArray -> RowFeed -> MacLanes``; `ChainDense` wires
``DenseRowReader -> RowFeed -> MacLanes``.  Instead of the accelerator's window
generator and activation buffer, the activation rows arrive on a stream (``acts``) in the
order the MAC consumes them: for every weight row, the ``P`` positions of the tile, the
last one marked ``end``.  The per-group bias / requantization words sit in a small
memory written before the run and read with the group of the current weight row.
"""

from __future__ import annotations

from amaranth import Module, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.basis_array import BasisArray
from hw.config import SDConfig
from hw.decoder import SparseDecoder
from hw.dense import DenseRowReader
from hw.layouts import (basis_word_layout, ce_word_layout, dense_word_layout,
                        lane_quant_layout, mac_op_layout, results_layout, weights_row_layout)
from hw.mac import MacLanes

__all__ = ["RowFeed", "ChainSD", "ChainDense", "act_row_layout", "quant_write_layout"]


def act_row_layout(config: SDConfig) -> data.StructLayout:
    """One activation row for one position: ``acts[i]``, ``addr``, ``end`` (last position)."""
    return data.StructLayout({
        "acts": data.ArrayLayout(signed(config.act_bits), config.basis_size),
        "addr": config.acc_addr_bits,
        "end": 1,
    })


def quant_write_layout(config: SDConfig) -> data.StructLayout:
    """One write of the group quant memory: ``addr`` (group) and the lanes' quant words."""
    return data.StructLayout({
        "addr": config.group_bits,
        "data": data.ArrayLayout(lane_quant_layout(config), config.lanes),
    })


class RowFeed(wiring.Component):
    """Hold a weight row while the activation rows of its positions stream past.

    Parameters
    ----------
    config : SDConfig
    weight_bits : int, optional
        Weight width of the rows (default ``rebuilt_weight_bits``).

    Attributes
    ----------
    weights : In(stream.Signature(weights_row_layout(config, weight_bits)))
    acts : In(stream.Signature(act_row_layout(config)))
        The row is released after the act with ``end``.
    ops : Out(stream.Signature(mac_op_layout(config, weight_bits)))
        One op per act: the held weights, the act row and ``addr``, ``first``/``last``
        of the weight row.
    group : Out(group_bits)
        Group of the held weight row (for the quant lookup).

    Notes
    -----
    Combinational join (latency 0), one op per cycle.
    """

    def __init__(self, config: SDConfig, weight_bits: int | None = None):
        self.config = config
        wb = config.rebuilt_weight_bits if weight_bits is None else weight_bits
        super().__init__({
            "weights": In(stream.Signature(weights_row_layout(config, wb))),
            "acts": In(stream.Signature(act_row_layout(config))),
            "ops": Out(stream.Signature(mac_op_layout(config, wb))),
            "group": Out(config.group_bits),
        })

    def elaborate(self, platform):
        m = Module()
        w, a, o = self.weights, self.acts, self.ops
        m.d.comb += [
            o.valid.eq(w.valid & a.valid),
            o.payload.weights.eq(w.payload.weights),
            o.payload.acts.eq(a.payload.acts),
            o.payload.addr.eq(a.payload.addr),
            o.payload.first.eq(w.payload.first),
            o.payload.last.eq(w.payload.last),
            a.ready.eq(w.valid & o.ready),
            w.ready.eq(a.valid & o.ready & a.payload.end),
            self.group.eq(w.payload.group),
        ]
        return m


class _ChainBase(wiring.Component):
    """Shared ports and the feed / MAC / quant-memory back end of the chains."""

    def __init__(self, config: SDConfig, front: dict, weight_bits: int | None):
        if not isinstance(config, SDConfig):
            raise TypeError(f"config must be an SDConfig, got {type(config).__name__}: "
                            f"{config!r}")
        self.config = config
        self.weight_bits = config.rebuilt_weight_bits if weight_bits is None else weight_bits
        super().__init__({
            **front,
            "acts": In(stream.Signature(act_row_layout(config))),
            "quant_wr": In(stream.Signature(quant_write_layout(config))),
            "relu": In(1),
            "start": In(1),
            "n_groups": In(config.group_bits),
            "n_rows": In(config.row_bits),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(1),
            "error_code": Out(4),
            "results": Out(stream.Signature(results_layout(config))),
        })

    def _back_end(self, m, front, rows_out):
        cfg = self.config
        m.submodules.feed = feed = RowFeed(cfg, self.weight_bits)
        m.submodules.mac = mac = MacLanes(cfg, self.weight_bits)
        m.submodules.qmem = qmem = memory.Memory(
            shape=data.ArrayLayout(lane_quant_layout(cfg), cfg.lanes),
            depth=cfg.max_groups, init=[])
        qw = qmem.write_port()
        qr = qmem.read_port(domain="comb")
        m.d.comb += [
            self.quant_wr.ready.eq(1),
            qw.en.eq(self.quant_wr.valid),
            qw.addr.eq(self.quant_wr.payload.addr),
            qw.data.eq(self.quant_wr.payload.data),
            qr.addr.eq(feed.group),
            mac.quant.lanes.eq(qr.data),
            mac.quant.relu.eq(self.relu),
        ]
        wiring.connect(m, rows_out, feed.weights)
        wiring.connect(m, wiring.flipped(self.acts), feed.acts)
        wiring.connect(m, feed.ops, mac.ops)
        wiring.connect(m, mac.results, wiring.flipped(self.results))
        for name in ("start", "n_groups", "n_rows"):
            m.d.comb += getattr(front, name).eq(getattr(self, name))
        for name in ("busy", "done", "error", "error_code"):
            m.d.comb += getattr(self, name).eq(getattr(front, name))


class ChainSD(_ChainBase):
    """``SparseDecoder -> BasisArray -> RowFeed -> MacLanes`` with a group quant memory.

    Attributes
    ----------
    words : In(stream.Signature(ce_word_layout(config)))
        Packed coefficient stream (see `SparseDecoder`).
    basis : In(stream.Signature(basis_word_layout(config)))
        Basis words, one bank (``lanes`` words) per ``new_block`` row, in row order.
    acts : In(stream.Signature(act_row_layout(config)))
        Activation rows, ``P`` per decoded row, the last with ``end``.
    quant_wr : In(stream.Signature(quant_write_layout(config)))
        Writes the quant words of one group (always ready); load before ``start``.
    relu : In(1)
    start, n_groups, n_rows, busy, done, error, error_code
        Of the decoder.
    results : Out(stream.Signature(results_layout(config)))
        Requantized outputs, one per position of the group's last row.
    """

    def __init__(self, config: SDConfig):
        super().__init__(config, {
            "words": In(stream.Signature(ce_word_layout(config))),
            "basis": In(stream.Signature(basis_word_layout(config))),
        }, None)

    def elaborate(self, platform):
        m = Module()
        m.submodules.decoder = dec = SparseDecoder(self.config)
        m.submodules.basis_array = ba = BasisArray(self.config)
        wiring.connect(m, wiring.flipped(self.words), dec.words)
        wiring.connect(m, wiring.flipped(self.basis), ba.basis)
        wiring.connect(m, dec.rows, ba.rows)
        self._back_end(m, dec, ba.weights)
        return m


class ChainDense(_ChainBase):
    """``DenseRowReader -> RowFeed -> MacLanes``: the dense baseline's datapath.

    Attributes
    ----------
    words : In(stream.Signature(dense_word_layout(config, weight_bits)))
        Dense weight rows (see `DenseRowReader`); other ports as in `ChainSD`.
    """

    def __init__(self, config: SDConfig, weight_bits: int = 8):
        self.dense_bits = weight_bits
        super().__init__(config, {
            "words": In(stream.Signature(dense_word_layout(config, weight_bits))),
        }, weight_bits)

    def elaborate(self, platform):
        m = Module()
        m.submodules.reader = rd = DenseRowReader(self.config, self.dense_bits)
        wiring.connect(m, wiring.flipped(self.words), rd.words)
        self._back_end(m, rd, rd.rows)
        return m

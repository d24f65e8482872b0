"""Payload layouts of the streams between the accelerator blocks.

Every stream of ``docs/architecture.md`` carries one of the `StructLayout`\\ s built here,
so the decoder, the basis array, the MAC lanes, the dense reader and the top all agree
on field names and widths.  All widths come from `SDConfig`; the functions are cached,
so calling one twice with the same configuration gives the same (equal) layout.

Index conventions (shared with ``docs/format.md``):

* ``mask[l]``, ``sign[l]``: bit ``j * terms + t`` is term ``t`` of coefficient element
  ``j`` of lane ``l`` (the order of the codes inside a record).
* ``shift[l][j * terms + t]``: exponent offset ``e - exp_min`` of that term.
* ``weights[l][i]``: rebuilt weight ``i`` (``0 <= i < S``) of lane ``l``.
* ``acts[i]``: activation ``i`` of the broadcast row.
"""

from __future__ import annotations

import enum
from functools import lru_cache

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from hw.config import SDConfig

__all__ = [
    "DecodeError",
    "row_tag_fields",
    "ce_word_layout",
    "decoded_row_layout",
    "basis_word_layout",
    "weights_row_layout",
    "dense_word_layout",
    "mac_op_layout",
    "lane_quant_layout",
    "quant_layout",
    "results_layout",
]


class DecodeError(enum.IntEnum):
    """``error_code`` values of `SparseDecoder` and `DenseRowReader` (0: no error)."""

    NONE = 0
    BAD_TAG = 1        #: group header without the 0x5D tag
    BAD_COUNT = 2      #: header row count greater than ``n_rows``
    ROW_RANGE = 3      #: record row index ``>= n_rows``
    ROW_ORDER = 4      #: record row index not greater than the previous one of the group
    BAD_CODE = 5       #: invalid coefficient code (negative zero or field out of range)
    PADDING = 6        #: non-zero bits in the unused part of a slot
    EARLY_LAST = 7     #: ``last`` on a word that is not the final word of the stream
    MISSING_LAST = 8   #: final word of the final group without ``last``
    BAD_ARGS = 9       #: ``start`` with ``n_groups == 0`` or ``n_rows > max_rows``


def _check(config) -> SDConfig:
    if not isinstance(config, SDConfig):
        raise TypeError(f"expected an SDConfig, got {config!r}")
    return config


def _weight_bits(config: SDConfig, weight_bits) -> int:
    if weight_bits is None:
        return config.rebuilt_weight_bits
    if isinstance(weight_bits, bool) or not isinstance(weight_bits, int):
        raise TypeError(f"weight_bits must be an int, got {weight_bits!r}")
    if not 2 <= weight_bits <= 64:
        raise ValueError(f"weight_bits must be in [2, 64], got {weight_bits!r}")
    return weight_bits


def row_tag_fields(config: SDConfig) -> dict:
    """Fields that identify a coefficient row; carried unchanged from decoder to MAC feed.

    ``row`` (``row_bits``), ``block`` (``block_bits``, ``row // block_rows``), ``group``
    (``group_bits``), ``new_block`` (first row of the group or block differs from the
    previous row's: the basis array swaps its banks), ``first`` / ``last`` (first / last
    row of the group) and ``empty`` (the single all-zero row of a group without kept rows).
    """
    cfg = _check(config)
    return {
        "row": unsigned(cfg.row_bits),
        "block": unsigned(cfg.block_bits),
        "group": unsigned(cfg.group_bits),
        "new_block": unsigned(1),
        "first": unsigned(1),
        "last": unsigned(1),
        "empty": unsigned(1),
    }


@lru_cache(maxsize=None)
def ce_word_layout(config: SDConfig) -> data.StructLayout:
    """One packed coefficient memory word: ``data`` (``ce_word_width``) and ``last``."""
    cfg = _check(config)
    return data.StructLayout({"data": unsigned(cfg.ce_word_width), "last": unsigned(1)})


@lru_cache(maxsize=None)
def decoded_row_layout(config: SDConfig) -> data.StructLayout:
    """A decoded coefficient row for all lanes (`SparseDecoder.rows`)."""
    cfg = _check(config)
    n = cfg.basis_size * cfg.terms
    return data.StructLayout({
        **row_tag_fields(cfg),
        "mask": data.ArrayLayout(unsigned(n), cfg.lanes),
        "sign": data.ArrayLayout(unsigned(n), cfg.lanes),
        "shift": data.ArrayLayout(data.ArrayLayout(unsigned(cfg.shift_code_bits), n),
                                  cfg.lanes),
    })


@lru_cache(maxsize=None)
def basis_word_layout(config: SDConfig) -> data.StructLayout:
    """One lane's ``S x S`` basis word (`BasisArray.basis`): ``lane`` and ``data``.

    ``data`` holds entry ``B[j][i]`` at bit ``(j * S + i) * basis_bits`` (signed).
    """
    cfg = _check(config)
    return data.StructLayout({"lane": unsigned(cfg.lane_bits),
                              "data": unsigned(cfg.basis_word_bits)})


@lru_cache(maxsize=None)
def weights_row_layout(config: SDConfig, weight_bits: int | None = None) -> data.StructLayout:
    """A row of ``lanes x S`` weights with its tag (`BasisArray.weights`, `DenseRowReader`).

    ``weight_bits`` defaults to ``rebuilt_weight_bits``.
    """
    cfg = _check(config)
    wb = _weight_bits(cfg, weight_bits)
    return data.StructLayout({
        **row_tag_fields(cfg),
        "weights": data.ArrayLayout(data.ArrayLayout(signed(wb), cfg.basis_size), cfg.lanes),
    })


@lru_cache(maxsize=None)
def dense_word_layout(config: SDConfig, weight_bits: int = 8) -> data.StructLayout:
    """One dense weight row (`DenseRowReader.words`): ``lanes x S`` signed weights + ``last``.

    Weight ``(l, i)`` sits at bit ``(l * S + i) * weight_bits`` of ``data``.
    """
    cfg = _check(config)
    wb = _weight_bits(cfg, weight_bits)
    return data.StructLayout({"data": unsigned(cfg.lanes * cfg.basis_size * wb),
                              "last": unsigned(1)})


@lru_cache(maxsize=None)
def mac_op_layout(config: SDConfig, weight_bits: int | None = None) -> data.StructLayout:
    """One multiply-accumulate operation for all lanes (`MacLanes.ops`)."""
    cfg = _check(config)
    wb = _weight_bits(cfg, weight_bits)
    return data.StructLayout({
        "weights": data.ArrayLayout(data.ArrayLayout(signed(wb), cfg.basis_size), cfg.lanes),
        "acts": data.ArrayLayout(signed(cfg.act_bits), cfg.basis_size),
        "addr": unsigned(cfg.acc_addr_bits),
        "first": unsigned(1),
        "last": unsigned(1),
    })


@lru_cache(maxsize=None)
def lane_quant_layout(config: SDConfig) -> data.StructLayout:
    """Bias / requantization parameters of one output channel (one quant memory word).

    Field order and widths match the quant word of ``docs/format.md``, so a quant memory
    word can be assigned to this layout directly.
    """
    cfg = _check(config)
    return data.StructLayout({"bias": signed(cfg.bias_bits),
                              "mult": unsigned(cfg.mult_bits),
                              "shift": unsigned(cfg.shift_bits)})


@lru_cache(maxsize=None)
def quant_layout(config: SDConfig) -> data.StructLayout:
    """`MacLanes.quant`: per-lane parameters and the layer's ``relu`` flag."""
    cfg = _check(config)
    return data.StructLayout({"lanes": data.ArrayLayout(lane_quant_layout(cfg), cfg.lanes),
                              "relu": unsigned(1)})


@lru_cache(maxsize=None)
def results_layout(config: SDConfig) -> data.StructLayout:
    """One output position for all lanes (`MacLanes.results`): ``addr`` and ``values``."""
    cfg = _check(config)
    return data.StructLayout({"addr": unsigned(cfg.acc_addr_bits),
                              "values": data.ArrayLayout(signed(cfg.act_bits), cfg.lanes)})

"""Layer descriptors: the fields the controller reads to run one layer on its own.

A descriptor is a slot of `DESC_SLOT_WORDS` 32-bit words in the descriptor RAM; field
``k`` of `FIELDS` lives in word ``k`` of the slot (one field per word keeps the register
map readable and lets the host write a field alone).  The host (``hw/program.py``)
computes every field, including the derived ones (divisors and limits for the row
split, strides split into quotient and remainder by ``S``, starting offsets of padded
windows, digit steps of the scatter counters), so the hardware needs no divider and no
multiplier outside the MAC lanes (``hw/arith.py``).

`descriptor_layout` gives the `StructLayout` the hardware holds a loaded descriptor in;
field widths come from `SDConfig` through `field_widths`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from hw.config import SDConfig
from hw.memories import addr_bits

__all__ = ["FIELDS", "FIELD_INDEX", "DESC_SLOT_WORDS", "FLAG_RELU", "FLAG_SCATTER",
           "FLAG_PRELOAD",
           "Geometry", "geometry", "act_bank_depth", "field_widths", "descriptor_layout",
           "encode_field"]

#: Words per descriptor slot in the descriptor RAM (fields use the first ``len(FIELDS)``).
DESC_SLOT_WORDS = 64

FLAG_RELU = 1 << 0      #: FLAGS bit: clamp outputs at zero
FLAG_SCATTER = 1 << 1   #: FLAGS bit: write outputs element by element as the input
#: vector of a fully connected layer (flatten), instead of as a feature map
FLAG_PRELOAD = 1 << 2   #: FLAGS bit: the layer's first row is in block 0 of group 0, so
#: its basis is loaded at layer start, before the decoder reaches the row

#: (name, signed?, meaning).  Order = word index inside the slot.
FIELDS: tuple[tuple[str, bool, str], ...] = (
    ("FLAGS", False, "bit 0 ReLU, bit 1 scatter output (next layer is fully connected), "
                     "bit 2 preload basis (group 0, block 0) at layer start"),
    ("CE_BASE", False, "first Ce memory word of the layer"),
    ("CE_WORDS", False, "Ce memory words of the layer (headers and records)"),
    ("BASIS_BASE", False, "first basis memory word of the layer"),
    ("QUANT_BASE", False, "quant memory word of output channel 0"),
    ("N_GROUPS", False, "lane groups = ceil(Cout / lanes)"),
    ("N_ROWS", False, "coefficient rows per filter R"),
    ("N_BLOCKS", False, "basis blocks per filter = ceil(R / block_rows)"),
    ("COUT", False, "output channels"),
    ("CIN", False, "input channels as the window generator sees them"),
    ("IN_H", False, "input height"),
    ("IN_W", False, "input width"),
    ("IN_WLAST", False, "valid width of the last input channel (FC padding)"),
    ("IN_WQ", False, "activation words per input line = ceil(IN_W / S)"),
    ("IN_BASE", False, "activation bank address of the input"),
    ("IN_PITCH", False, "bank words per input item of the batch"),
    ("IN_CGP", False, "bank words per input channel group = IN_H * IN_WQ"),
    ("KWS", False, "kernel width / S"),
    ("RPC", False, "rows per input channel = kh * KWS"),
    ("RPC_L", False, "rows per input channel group = RPC * lanes"),
    ("LAST_ROW", False, "first row of the last input channel = (CIN - 1) * RPC"),
    ("STRIDE_X", False, "horizontal stride"),
    ("STRIDE_Q", False, "STRIDE_X // S"),
    ("STRIDE_M", False, "STRIDE_X % S"),
    ("STRIDE_Y", False, "vertical stride"),
    ("NEG_PAD_X", True, "-(horizontal padding)"),
    ("PAD_Q", True, "NEG_PAD_X // S (floor)"),
    ("PAD_M", False, "NEG_PAD_X % S"),
    ("NEG_PAD_Y", True, "-(vertical padding)"),
    ("LINE0", True, "NEG_PAD_Y * IN_WQ"),
    ("LINE_STEP", False, "STRIDE_Y * IN_WQ"),
    ("OUT_H", False, "output height"),
    ("OUT_W", False, "output width"),
    ("BATCH", False, "items in the batch"),
    ("OUT_BASE", False, "activation bank address of the output"),
    ("OUT_PITCH", False, "bank words per output item of the batch"),
    ("OUT_WQ", False, "activation words per output line = ceil(OUT_W / S)"),
    ("OUT_CGP", False, "bank words per output channel group = OUT_H * OUT_WQ"),
    ("OUT_HW", False, "OUT_H * OUT_W (scatter: elements per output channel)"),
    ("TILE", False, "positions per tile = min(acc_depth, BATCH * OUT_H * OUT_W)"),
    ("N_TILES", False, "number of position tiles"),
    ("LAST_TILE", False, "positions in the last tile"),
    ("BASIS_GSTEP", False, "basis words per group = N_BLOCKS * lanes"),
    ("HW_Q", False, "OUT_HW // (S * lanes) (scatter: digits of one channel step)"),
    ("HW_L", False, "(OUT_HW // S) % lanes"),
    ("HW_S", False, "OUT_HW % S"),
    ("GHW_Q", False, "digits of one group step lanes * OUT_HW: (lanes * OUT_HW) // (S * lanes)"),
    ("GHW_L", False, "((lanes * OUT_HW) // S) % lanes"),
    ("GHW_S", False, "(lanes * OUT_HW) % S"),
)

FIELD_INDEX: dict[str, int] = {name: i for i, (name, _, _) in enumerate(FIELDS)}
assert len(FIELDS) <= DESC_SLOT_WORDS


def act_bank_depth(config: SDConfig) -> int:
    """Words per activation bank: ``act_depth`` words of ``S`` elements held as ``S``
    banks of ``lanes``-element words."""
    return -(-config.act_depth // config.lanes)


def _bits(value: int) -> int:
    return max(1, int(value).bit_length())


@dataclass(frozen=True)
class Geometry:
    """Widths of the descriptor fields and address generators of one configuration."""

    ce: int        #: Ce memory address bits
    basis: int     #: basis memory address bits
    quant: int     #: quant memory address bits
    act: int       #: activation bank address bits
    dim: int       #: image dimensions and element counts
    row: int       #: row index / count
    s_bits: int    #: 0 ... S - 1
    tile: int      #: 0 ... acc_depth


@lru_cache(maxsize=None)
def geometry(config: SDConfig) -> Geometry:
    """Widths derived from ``config`` (all address generators use these)."""
    elements = config.act_depth * config.basis_size
    return Geometry(
        ce=addr_bits(config.ce_depth), basis=addr_bits(config.basis_depth),
        quant=addr_bits(config.quant_depth), act=addr_bits(act_bank_depth(config)),
        dim=_bits(elements), row=config.row_bits,
        s_bits=_bits(config.basis_size - 1), tile=_bits(config.acc_depth))


@lru_cache(maxsize=None)
def field_widths(config: SDConfig) -> dict[str, tuple[int, bool]]:
    """``name -> (bits, signed)`` of every field for ``config``.

    Raises
    ------
    ValueError
        If a field would need more than 32 bits (a register word).
    """
    g = geometry(config)
    a1 = g.act + 1
    widths = {
        "FLAGS": 3, "CE_BASE": g.ce, "CE_WORDS": g.ce + 1, "BASIS_BASE": g.basis,
        "QUANT_BASE": g.quant, "N_GROUPS": config.group_bits, "N_ROWS": g.row,
        "N_BLOCKS": config.block_bits + 1, "COUT": _bits(config.quant_depth), "CIN": g.row,
        "IN_H": g.dim, "IN_W": g.dim, "IN_WLAST": g.dim, "IN_WQ": a1, "IN_BASE": g.act,
        "IN_PITCH": a1, "IN_CGP": a1, "KWS": g.row, "RPC": g.row,
        "RPC_L": _bits(config.max_rows * config.lanes), "LAST_ROW": g.row, "STRIDE_X": g.dim, "STRIDE_Q": g.dim, "STRIDE_M": g.s_bits,
        "STRIDE_Y": g.dim, "NEG_PAD_X": g.dim + 1, "PAD_Q": g.dim + 1, "PAD_M": g.s_bits,
        "NEG_PAD_Y": g.dim + 1, "LINE0": a1 + g.dim,
        "LINE_STEP": a1, "OUT_H": g.dim, "OUT_W": g.dim, "BATCH": g.dim, "OUT_BASE": g.act,
        "OUT_PITCH": a1, "OUT_WQ": a1, "OUT_CGP": a1, "OUT_HW": g.dim,
        "TILE": g.tile, "N_TILES": g.dim, "LAST_TILE": g.tile,
        "BASIS_GSTEP": g.basis + 1, "HW_Q": g.dim, "HW_L": config.lane_bits,
        "HW_S": g.s_bits, "GHW_Q": g.dim, "GHW_L": config.lane_bits, "GHW_S": g.s_bits,
    }
    out = {}
    for name, is_signed, _ in FIELDS:
        bits = widths[name]
        if bits > 32:
            raise ValueError(f"descriptor field {name} needs {bits} bits for this "
                             f"configuration, more than one 32-bit register")
        out[name] = (bits, is_signed)
    return out


@lru_cache(maxsize=None)
def descriptor_layout(config: SDConfig) -> data.StructLayout:
    """`StructLayout` of a loaded descriptor (one member per field)."""
    return data.StructLayout({
        name: (signed(bits) if sgn else unsigned(bits))
        for name, (bits, sgn) in field_widths(config).items()})


def encode_field(config: SDConfig, name: str, value: int) -> int:
    """The 32-bit register word of field ``name`` holding ``value``.

    Raises
    ------
    ValueError
        If ``value`` does not fit the field's width for ``config``.
    """
    bits, sgn = field_widths(config)[name]
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if sgn else (0, (1 << bits) - 1)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"descriptor field {name} = {value!r} does not fit "
                         f"{'signed' if sgn else 'unsigned'} {bits} bits [{lo}, {hi}]")
    return value & 0xFFFF_FFFF

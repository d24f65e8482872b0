"""Packed weight format v1 (``docs/format.md``): packer, validating unpacker, placement.

Three memories hold a network's weights, one image each, layers placed consecutively:

* ``ce``: the coefficient stream of every layer (group header + row records, each slot
  ``words_per_record`` words of ``ce_word_width`` bits, LSB first);
* ``basis``: one ``basis_word_bits`` word per (group, block, lane);
* ``quant``: one ``quant_word_bits`` word per output channel (bias | M | sh).

`decode_ce_stream` is the reference for the hardware `SparseDecoder`: the same rows,
the same checks, in the same order, with the same error codes (`CeError` mirrors
``hw.layouts.DecodeError``).  `unpack_layer` runs it and rebuilds the `SDWeight`;
every malformed word raises a `ValueError` naming the layer, the memory, the word
address and what was expected.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from golden.sdweight import SDWeight, rows_per_filter
from hw.config import SDConfig

__all__ = [
    "FORMAT_VERSION", "MEMORIES", "CeError", "CeStreamError", "DecodedRow",
    "memory_width", "memory_depth", "term_codes", "pack_ce", "pack_basis", "pack_quant",
    "decode_ce_stream", "unpack_ce", "unpack_basis", "unpack_quant", "LayerPlacement",
    "PackedNetwork", "pack_layers", "unpack_layer", "packed_storage_bits",
]

FORMAT_VERSION = 1

#: memory kinds, in address-map order
MEMORIES = ("ce", "basis", "quant")


def memory_width(config: SDConfig, kind: str) -> int:
    """Word width of memory ``kind``."""
    return {"ce": config.ce_word_width, "basis": config.basis_word_bits,
            "quant": config.quant_word_bits}[_kind(kind)]


def memory_depth(config: SDConfig, kind: str) -> int:
    """Depth (words) of memory ``kind``."""
    return {"ce": config.ce_depth, "basis": config.basis_depth,
            "quant": config.quant_depth}[_kind(kind)]


def _kind(kind: str) -> str:
    if kind not in MEMORIES:
        raise ValueError(f"unknown memory kind {kind!r}; known: {list(MEMORIES)}")
    return kind


class CeError(enum.IntEnum):
    """Ce stream errors; the values equal ``hw.layouts.DecodeError`` (the RTL's codes)."""

    NONE = 0
    BAD_TAG = 1
    BAD_COUNT = 2
    ROW_RANGE = 3
    ROW_ORDER = 4
    BAD_CODE = 5
    PADDING = 6
    EARLY_LAST = 7
    MISSING_LAST = 8
    BAD_ARGS = 9


class CeStreamError(ValueError):
    """A Ce stream the decoder rejects.

    Attributes
    ----------
    address : int
        Word address (from the start of the stream) of the word on which the decoder
        detects the error: the final word of the offending slot, or the word carrying
        an early ``last``.
    reason : str
    code : CeError
    """

    def __init__(self, address: int, reason: str, code: CeError):
        self.address, self.reason, self.code = int(address), reason, CeError(code)
        super().__init__(f"Ce stream word {self.address}: {reason} [{self.code.name}]")


@dataclass(frozen=True)
class DecodedRow:
    """One row as `hw.decoder.SparseDecoder` emits it (fields of ``decoded_row_layout``).

    ``mask[l]`` / ``sign[l]``: bit ``j * terms + t`` is term ``t`` of element ``j`` of
    lane ``l``; ``shift[l][j * terms + t]`` is ``e - exp_min`` (0 for a zero term).
    """

    group: int
    row: int
    block: int
    new_block: bool
    first: bool
    last: bool
    empty: bool
    mask: tuple[int, ...]
    sign: tuple[int, ...]
    shift: tuple[tuple[int, ...], ...]


# ------------------------------------------------------------------ packing
def term_codes(sd: SDWeight) -> torch.Tensor:
    """Term codes ``{sign, field}`` (int64), shape (Cout, R, S, terms)."""
    cfg = sd.config
    fld = torch.where(sd.mask, sd.exponent.to(torch.int64) - cfg.exp_min + 1, 0)
    return fld | (sd.sign.to(torch.int64) << cfg.exp_bits)


def _lane_padded(t: torch.Tensor, n_groups: int, lanes: int) -> torch.Tensor:
    """(Cout, ...) -> (n_groups, lanes, ...), missing lanes zero."""
    pad = n_groups * lanes - t.shape[0]
    if pad:
        t = torch.cat([t, torch.zeros((pad, *t.shape[1:]), dtype=t.dtype)])
    return t.reshape(n_groups, lanes, *t.shape[1:])


def _slot_words(value: int, config: SDConfig) -> list[int]:
    w, mask = config.ce_word_width, (1 << config.ce_word_width) - 1
    return [(value >> (k * w)) & mask for k in range(config.words_per_record)]


def pack_ce(sd: SDWeight) -> list[int]:
    """The layer's Ce stream: per group a header slot and one record slot per kept row."""
    cfg = sd.config
    g_n, lanes = sd.n_groups, cfg.lanes
    codes = _lane_padded(term_codes(sd), g_n, lanes)            # (G, L, R, S, T)
    per_rec = codes.permute(0, 2, 1, 3, 4).reshape(g_n, sd.rows, -1).numpy()  # (G, R, L*S*T)
    offs = [cfg.row_bits + k * cfg.code_bits for k in range(per_rec.shape[2])]
    payload = np.zeros((g_n, sd.rows), dtype=object)
    for k, off in enumerate(offs):                               # vectorised over records
        payload = payload + (per_rec[:, :, k].astype(object) << off)
    keep = sd.row_keep.numpy()
    words: list[int] = []
    for g in range(g_n):
        rows = np.nonzero(keep[g])[0]
        words += _slot_words(len(rows) | (cfg.header_tag << cfg.row_bits), cfg)
        for r in rows:
            words += _slot_words(int(r) | int(payload[g, r]), cfg)
    return words


def pack_basis(sd: SDWeight) -> list[int]:
    """Basis words, address ``(g * n_blocks + b) * lanes + l``; missing lanes zero."""
    cfg = sd.config
    bb = cfg.basis_bits
    b = _lane_padded(sd.basis.to(torch.int64), sd.n_groups, cfg.lanes)  # (G, L, NB, S, S)
    b = (b.permute(0, 2, 1, 3, 4).reshape(-1, cfg.basis_size ** 2).numpy()
         & ((1 << bb) - 1))                                       # two's complement fields
    words = np.zeros(b.shape[0], dtype=object)
    for k in range(b.shape[1]):
        words = words + (b[:, k].astype(object) << (k * bb))
    return [int(w) for w in words]


def pack_quant(bias_int, mult, shift, config: SDConfig, name: str = "layer") -> list[int]:
    """One word per output channel: ``bias | M << bias_bits | sh << (bias_bits + mult_bits)``."""
    cfg = config
    out = []
    for o, (b, m, s) in enumerate(zip(bias_int, mult, shift)):
        b, m, s = int(b), int(m), int(s)
        if not -(1 << (cfg.bias_bits - 1)) <= b < 1 << (cfg.bias_bits - 1):
            raise ValueError(f"layer {name}: bias {b} of channel {o} does not fit "
                             f"bias_bits={cfg.bias_bits}")
        if not 0 <= m < 1 << cfg.mult_bits:
            raise ValueError(f"layer {name}: multiplier {m} of channel {o} does not fit "
                             f"mult_bits={cfg.mult_bits}")
        if not 0 <= s < 1 << cfg.shift_bits:
            raise ValueError(f"layer {name}: shift {s} of channel {o} does not fit "
                             f"shift_bits={cfg.shift_bits}")
        out.append((b & ((1 << cfg.bias_bits) - 1)) | (m << cfg.bias_bits)
                   | (s << (cfg.bias_bits + cfg.mult_bits)))
    return out


# ------------------------------------------------------------------ decoding
def _check_word(w, width: int, addr: int) -> int:
    w = int(w)
    if not 0 <= w < 1 << width:
        raise CeStreamError(addr, f"word {w:#x} does not fit the {width}-bit word width",
                            CeError.PADDING)
    return w


def decode_ce_stream(words: Sequence[int], config: SDConfig, n_groups: int, n_rows: int,
                     last: Sequence[bool] | None = None) -> list[DecodedRow]:
    """Decode a Ce stream exactly as `hw.decoder.SparseDecoder` does, or raise.

    Parameters
    ----------
    words : sequence of int
        The stream, word 0 first (each ``< 2**ce_word_width``).
    config : SDConfig
    n_groups, n_rows : int
        The decoder's ``n_groups`` and ``n_rows`` (rows per filter ``R``) inputs.
    last : sequence of bool, optional
        The ``last`` flag of every word; default: set on the final word only.

    Returns
    -------
    list of DecodedRow
        One per kept row, and one ``empty`` row for a group without kept rows.

    Raises
    ------
    CeStreamError
        With the decoder's `CeError` code and the address of the word that reveals it.
        A slot is checked when its final word arrives, in this order: header tag, header
        count ``> n_rows``, header padding; record row ``>= n_rows``, row not increasing,
        invalid code, record padding; then ``last`` on a non-final word (EARLY_LAST, also
        on any non-final word of a slot) or missing on the final one (MISSING_LAST).
        When explicit ``last`` flags run out of words before the final slot (the
        hardware would still be waiting for words), the error has code ``NONE`` and the
        address ``len(words)``.
    """
    cfg = config
    n = len(words)
    flags = [False] * n if last is None else [bool(f) for f in last]
    if last is None and n:
        flags[-1] = True
    if len(flags) != n:
        raise ValueError(f"last has {len(flags)} flags for {n} words")
    if n_groups < 1 or n_rows > cfg.max_rows or n_rows < 0:
        raise CeStreamError(0, f"bad arguments n_groups={n_groups} (expected >= 1), "
                               f"n_rows={n_rows} (expected <= max_rows={cfg.max_rows})",
                            CeError.BAD_ARGS)
    W, wpr = cfg.ce_word_width, cfg.words_per_record
    S, T, L, cb, eb = cfg.basis_size, cfg.terms, cfg.lanes, cfg.code_bits, cfg.exp_bits
    fmask, row_mask = (1 << eb) - 1, (1 << cfg.row_bits) - 1
    levels = cfg.exp_levels
    out: list[DecodedRow] = []
    pos = 0

    def read_slot() -> tuple[int, int, bool]:
        """Assemble one slot; returns (value, address of its final word, its last flag)."""
        nonlocal pos
        value = 0
        for k in range(wpr):
            if pos >= n:
                raise CeStreamError(n, f"stream ends after {n} words inside group {group} "
                                       f"(expected {wpr - k} more word(s) of this slot; "
                                       f"truncated)", CeError.NONE)
            value |= _check_word(words[pos], W, pos) << (k * W)
            if flags[pos] and k < wpr - 1:
                raise CeStreamError(pos, f"'last' on word {k} of a {wpr}-word slot in group "
                                         f"{group} (stream truncated)", CeError.EARLY_LAST)
            pos += 1
        return value, pos - 1, flags[pos - 1]

    def check_last(addr: int, is_last: bool, final: bool, what: str) -> None:
        if is_last and not final:
            raise CeStreamError(addr, f"'last' on {what}, which is not the final slot of "
                                      f"group {n_groups - 1} (stream truncated)",
                                CeError.EARLY_LAST)
        if final and not is_last:
            raise CeStreamError(addr, f"{what} completes the final group but its word has no "
                                      f"'last' (trailing words after the stream?)",
                                CeError.MISSING_LAST)

    for group in range(n_groups):
        value, addr, is_last = read_slot()
        count, tag = value & row_mask, (value >> cfg.row_bits) & 0xFF
        if tag != cfg.header_tag:
            raise CeStreamError(addr, f"group {group} header has tag {tag:#04x}, expected "
                                      f"{cfg.header_tag:#04x}", CeError.BAD_TAG)
        if count > n_rows:
            raise CeStreamError(addr, f"group {group} header counts {count} rows, more than "
                                      f"the layer's R = {n_rows}", CeError.BAD_COUNT)
        if value >> cfg.header_bits:
            raise CeStreamError(addr, f"group {group} header has non-zero bits above bit "
                                      f"{cfg.header_bits} (expected zero padding)",
                                CeError.PADDING)
        final_group = group == n_groups - 1
        check_last(addr, is_last, count == 0 and final_group, f"the header of group {group}")
        if count == 0:
            zl = tuple(0 for _ in range(L))
            out.append(DecodedRow(group, 0, 0, True, True, True, True, zl, zl,
                                  tuple(tuple(0 for _ in range(S * T)) for _ in range(L))))
            continue
        prev_row = prev_block = None
        for k in range(count):
            value, addr, is_last = read_slot()
            row = value & row_mask
            if row >= n_rows:
                raise CeStreamError(addr, f"group {group} record {k}: row index {row} >= R = "
                                          f"{n_rows}", CeError.ROW_RANGE)
            if prev_row is not None and row <= prev_row:
                raise CeStreamError(addr, f"group {group} record {k}: row index {row} does not "
                                          f"follow {prev_row} (expected strictly increasing)",
                                    CeError.ROW_ORDER)
            masks, signs, shifts = [], [], []
            for lane in range(L):
                mbits = sbits = 0
                sh = []
                for jt in range(S * T):
                    code = (value >> (cfg.row_bits + (lane * S * T + jt) * cb)) & ((1 << cb) - 1)
                    fld, sgn = code & fmask, code >> eb
                    if (sgn and fld == 0) or fld > levels:
                        what = "negative zero" if fld == 0 else \
                            f"field {fld} > {levels} exponent levels"
                        raise CeStreamError(addr, f"group {group} row {row} lane {lane} "
                                                  f"element {jt // T} term {jt % T}: invalid "
                                                  f"code {code:#x} ({what})", CeError.BAD_CODE)
                    if fld:
                        mbits |= 1 << jt
                    sbits |= sgn << jt
                    sh.append(fld - 1 if fld else 0)
                masks.append(mbits)
                signs.append(sbits)
                shifts.append(tuple(sh))
            if value >> cfg.record_bits:
                raise CeStreamError(addr, f"group {group} row {row}: non-zero bits above bit "
                                          f"{cfg.record_bits} (expected zero padding)",
                                    CeError.PADDING)
            check_last(addr, is_last, final_group and k == count - 1,
                       f"row {row} of group {group}")
            block = row // cfg.block_rows
            out.append(DecodedRow(group, row, block, prev_row is None or block != prev_block,
                                  prev_row is None, k == count - 1, False, tuple(masks),
                                  tuple(signs), tuple(shifts)))
            prev_row, prev_block = row, block
    if pos < n:   # only reachable with explicit `last` flags (else MISSING_LAST fired)
        raise CeStreamError(pos, f"{n - pos} word(s) after the final group", CeError.MISSING_LAST)
    return out


def _layer_error(name: str, memory: str, base: int, exc: CeStreamError) -> ValueError:
    err = ValueError(f"layer {name}: {memory} memory address {base + exc.address}: "
                     f"{exc.reason} [{exc.code.name}]")
    err.address = base + exc.address
    err.code = exc.code
    return err


def unpack_ce(words: Sequence[int], config: SDConfig, weight_shape, name: str = "layer",
              base: int = 0):
    """Decode a layer's Ce stream into ``(mask, sign, exponent, row_keep)`` tensors.

    Raises ValueError naming the layer and the absolute ``ce`` address.
    """
    cfg = config
    cout = int(weight_shape[0])
    r = rows_per_filter(tuple(weight_shape), cfg.basis_size)
    n_groups = -(-cout // cfg.lanes)
    try:
        rows = decode_ce_stream(words, cfg, n_groups, r)
    except CeStreamError as exc:
        raise _layer_error(name, "ce", base, exc) from None
    S, T, L = cfg.basis_size, cfg.terms, cfg.lanes
    mask = torch.zeros(n_groups * L, r, S * T, dtype=torch.bool)
    sign = torch.zeros_like(mask)
    shift = torch.zeros(n_groups * L, r, S * T, dtype=torch.int64)
    keep = torch.zeros(n_groups, r, dtype=torch.bool)
    bit = torch.arange(S * T)
    for d in rows:
        if d.empty:
            continue
        keep[d.group, d.row] = True
        o = d.group * L
        mask[o:o + L, d.row] = (torch.tensor(d.mask)[:, None] >> bit) & 1 == 1
        sign[o:o + L, d.row] = (torch.tensor(d.sign)[:, None] >> bit) & 1 == 1
        shift[o:o + L, d.row] = torch.tensor(d.shift)
    extra = mask[cout:].nonzero()
    if extra.numel():
        lane_o, row = int(extra[0, 0]) + cout, int(extra[0, 1])
        raise ValueError(f"layer {name}: ce stream has a non-zero code for channel {lane_o} "
                         f"(row {row}), beyond the layer's {cout} output channels (expected "
                         f"zero lanes in the last group)")
    shape = (cout, r, S, T)
    mask, sign = mask[:cout].reshape(shape), sign[:cout].reshape(shape)
    exponent = torch.where(mask, shift[:cout].reshape(shape) + cfg.exp_min,
                           torch.tensor(cfg.exp_min)).to(torch.int8)
    return mask, sign, exponent, keep


def unpack_basis(words: Sequence[int], config: SDConfig, cout: int, n_blocks: int,
                 name: str = "layer", base: int = 0) -> torch.Tensor:
    """Basis words -> int32 tensor (Cout, n_blocks, S, S); padding lanes must be zero."""
    cfg = config
    L, S, bb = cfg.lanes, cfg.basis_size, cfg.basis_bits
    n_groups = -(-cout // L)
    expected = n_groups * n_blocks * L
    if len(words) != expected:
        raise ValueError(f"layer {name}: {len(words)} basis words at address {base}, expected "
                         f"{expected} (groups {n_groups} x blocks {n_blocks} x lanes {L})")
    vals = np.zeros((expected, S * S), np.int64)
    for a, w in enumerate(words):
        w = int(w)
        if not 0 <= w < 1 << cfg.basis_word_bits:
            raise ValueError(f"layer {name}: basis memory address {base + a}: word {w:#x} does "
                             f"not fit {cfg.basis_word_bits} bits")
        for k in range(S * S):
            f = (w >> (k * bb)) & ((1 << bb) - 1)
            vals[a, k] = f - (1 << bb) if f >> (bb - 1) else f
    b = torch.from_numpy(vals).reshape(n_groups, n_blocks, L, S, S).permute(0, 2, 1, 3, 4)
    b = b.reshape(n_groups * L, n_blocks, S, S)
    pad = b[cout:]
    if pad.numel() and pad.any():
        o = cout + int(pad.flatten(1).any(1).nonzero()[0, 0])
        g, lane = divmod(o, L)
        raise ValueError(f"layer {name}: basis memory address {base + g * n_blocks * L + lane}: "
                         f"lane {lane} of group {g} is beyond the {cout} output channels but "
                         f"non-zero (expected zero)")
    return b[:cout].to(torch.int32).contiguous()


def unpack_quant(words: Sequence[int], config: SDConfig, cout: int, name: str = "layer",
                 base: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quant words -> ``(bias_int, mult, shift)`` int64 arrays."""
    cfg = config
    if len(words) != cout:
        raise ValueError(f"layer {name}: {len(words)} quant words at address {base}, expected "
                         f"{cout} (one per output channel)")
    bias, mult, shift = (np.zeros(cout, np.int64) for _ in range(3))
    bb, mb = cfg.bias_bits, cfg.mult_bits
    for o, w in enumerate(words):
        w = int(w)
        if not 0 <= w < 1 << cfg.quant_word_bits:
            raise ValueError(f"layer {name}: quant memory address {base + o}: word {w:#x} does "
                             f"not fit {cfg.quant_word_bits} bits")
        b = w & ((1 << bb) - 1)
        bias[o] = b - (1 << bb) if b >> (bb - 1) else b
        mult[o] = (w >> bb) & ((1 << mb) - 1)
        shift[o] = w >> (bb + mb)
    return bias, mult, shift


# ------------------------------------------------------------------ placement
@dataclass(frozen=True)
class LayerPlacement:
    """Where one layer lives: per memory kind ``(base, words)``."""

    name: str
    ce: tuple[int, int]
    basis: tuple[int, int]
    quant: tuple[int, int]

    def span(self, kind: str) -> tuple[int, int]:
        return getattr(self, _kind(kind))


@dataclass
class PackedNetwork:
    """Memory images of a network plus each layer's placement."""

    config: SDConfig
    images: dict[str, list[int]]
    placements: list[LayerPlacement] = field(default_factory=list)

    def width(self, kind: str) -> int:
        return memory_width(self.config, kind)

    def layer_words(self, name: str, kind: str) -> list[int]:
        for p in self.placements:
            if p.name == name:
                base, count = p.span(kind)
                return self.images[kind][base:base + count]
        raise KeyError(f"no layer {name!r}")


def pack_layers(layers, config: SDConfig) -> PackedNetwork:
    """Pack `QLayer`\\ s consecutively into the three memories; check the depths.

    Raises ValueError naming the memory, the words needed, the depth and the words of
    every layer when a network does not fit.
    """
    images = {k: [] for k in MEMORIES}
    placements = []
    per_layer = []
    for lay in layers:
        if lay.config != config:
            raise ValueError(f"layer {lay.name}: packed for a different configuration")
        chunks = {"ce": pack_ce(lay.sd), "basis": pack_basis(lay.sd),
                  "quant": pack_quant(lay.bias_int, lay.mult, lay.shift, config, lay.name)}
        spans = {}
        for kind in MEMORIES:
            spans[kind] = (len(images[kind]), len(chunks[kind]))
            images[kind] += chunks[kind]
        placements.append(LayerPlacement(lay.name, spans["ce"], spans["basis"], spans["quant"]))
        per_layer.append((lay.name, {k: len(v) for k, v in chunks.items()}))
    for kind in MEMORIES:
        depth = memory_depth(config, kind)
        if len(images[kind]) > depth:
            detail = ", ".join(f"{n}: {c[kind]}" for n, c in per_layer)
            raise ValueError(f"the network needs {len(images[kind])} words of {kind} memory but "
                             f"the configuration has {kind}_depth={depth} ({detail}); use a "
                             f"larger configuration or prune more")
    return PackedNetwork(config, images, placements)


def unpack_layer(config: SDConfig, images: dict[str, Sequence[int]], placement: LayerPlacement,
                 weight_shape, basis_scale, name: str | None = None):
    """Rebuild ``(SDWeight, bias_int, mult, shift)`` of one layer from the images."""
    name = name or placement.name
    cfg = config
    shape = tuple(int(d) for d in weight_shape)
    cout = shape[0]
    r = rows_per_filter(shape, cfg.basis_size)
    n_blocks = -(-r // cfg.block_rows)

    def words(kind):
        base, count = placement.span(kind)
        img = images[kind]
        if base + count > len(img):
            raise ValueError(f"layer {name}: {kind} words [{base}, {base + count}) lie beyond "
                             f"the {len(img)}-word {kind} image (truncated?)")
        return list(img[base:base + count]), base

    ce, ce_base = words("ce")
    mask, sign, exponent, keep = unpack_ce(ce, cfg, shape, name, ce_base)
    bw, b_base = words("basis")
    basis = unpack_basis(bw, cfg, cout, n_blocks, name, b_base)
    qw, q_base = words("quant")
    bias, mult, shift = unpack_quant(qw, cfg, cout, name, q_base)
    scale = torch.as_tensor(np.asarray(basis_scale, np.float64))
    sd = SDWeight(config=cfg, weight_shape=shape, mask=mask, sign=sign, exponent=exponent,
                  basis=basis, basis_scale=scale, row_keep=keep, name=name)
    return sd, bias, mult, shift


def packed_storage_bits(config: SDConfig, placement: LayerPlacement) -> int:
    """Bits a layer occupies in the images (words x widths, summed over memories)."""
    return sum(placement.span(k)[1] * memory_width(config, k) for k in MEMORIES)

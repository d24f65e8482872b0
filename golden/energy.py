"""Energy model: published per-operation energies x event counts measured in the RTL.

The model multiplies the number of memory accesses and arithmetic operations an
accelerator performed on a layer (as counted by the counter registers of the simulated
RTL, see `hw/top.py`) by an energy per event taken from a published table.  It is meant
to compare the SmartDeal accelerator with the dense int8 baseline *on the same counts
basis*; it is not a sign-off power estimate of either design.

Source of the energies
----------------------
M. Horowitz, "1.1 Computing's energy problem (and what we can do about it)",
IEEE International Solid-State Circuits Conference (ISSCC) 2014, Digest of Technical
Papers, pp. 10-14, doi:10.1109/ISSCC.2014.6757323 -- the 45 nm, 0.9 V energy table:

===============================  =========
operation                        energy
===============================  =========
8-bit integer add                0.03 pJ
32-bit integer add               0.1 pJ
8-bit integer multiply           0.2 pJ
32-bit integer multiply          3.1 pJ
64-bit read, 8 KB SRAM cache     10 pJ
64-bit read, DRAM                1.3-2.6 nJ
===============================  =========

The same figures per 32-bit word (8 KB SRAM ~5 pJ, DRAM ~640 pJ) are the ones quoted by
S. Han et al., "Learning both weights and connections for efficient neural networks",
NeurIPS 2015, Table 1.

How per-width values are derived (assumptions of this model, stated in docs/energy.md)
------------------------------------------------------------------------------------
* Memory: energy proportional to the bits read or written.  SRAM: 10 pJ / 64 bit =
  0.15625 pJ/bit (8 KB array).  DRAM: the low end of the range, 1.28 nJ / 64 bit =
  20 pJ/bit (= 640 pJ per 32-bit word).  Writes cost the same as reads.
* Add: linear in the operand width through the two table points (ripple-carry adders
  grow linearly): ``E_add(n) = 0.03 + (n - 8) * (0.1 - 0.03) / 24`` pJ for n >= 8, and
  ``n * 0.03 / 8`` for n < 8.
* Multiply: proportional to the product of the operand widths (array multipliers grow
  with the number of partial-product bits), anchored at 8 x 8 bits = 0.2 pJ:
  ``E_mul(a, b) = 0.2 * a * b / 64`` pJ.  At 32 x 32 bits this gives 3.2 pJ against the
  table's 3.1 pJ (3 % high).
* Shift: the table has no shifter; a shift of a value to an ``n``-bit result is modelled
  as an add-class operation of width ``n`` (a barrel-shifter stage costs about one adder
  of its width).  This is an assumption, not a published figure.
* Requantization of one output: a ``acc_bits x mult_bits`` multiply plus an
  ``acc_bits`` add (bias); shifts, rounding and saturation are folded into that add.

What is counted (the fields of `AccelCounts`) comes from the event counters of the
simulated RTL (`hw.host.Counter`, mapped by `counts_from_rtl`): weight, basis and
bias/requantization words read, activation words read and written, weight rows rebuilt
(each costing the fixed shifts and adds of the basis array), multiply-accumulate ops
and results.  Each count carries the bit width it was made at, taken from the
configuration the RTL was built with, so the energy follows the hardware (e.g. the SD
lanes multiply a ``rebuilt_weight_bits``-wide weight, wider than the baseline's 8-bit
weight).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterable, Mapping

__all__ = [
    "EnergyTable", "HOROWITZ_45NM", "AccelCounts", "EnergyBreakdown", "SCENARIOS",
    "energy", "energy_ratio", "network_counts", "sd_widths", "dense_widths",
    "counts_from_rtl", "rebuild_ops_per_row", "RTL_COUNTERS", "HOROWITZ_CITATION",
]

#: Weight-memory scenarios: where the weight memory (Ce + basis, or dense int8 words) lives.
#: ``dram``: weights are streamed from off-chip DRAM as they are used (the SmartDeal paper's
#: setting); ``onchip``: weights sit in on-chip SRAM.  Activations and outputs are on chip
#: in both.
SCENARIOS = ("dram", "onchip")

HOROWITZ_CITATION = (
    'M. Horowitz, "1.1 Computing\'s energy problem (and what we can do about it)", '
    "ISSCC 2014, pp. 10-14, doi:10.1109/ISSCC.2014.6757323 (45 nm, 0.9 V)")


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def _check_width(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int bit width, got {value!r}")
    if not 1 <= value <= 4096:
        raise ValueError(f"{name} must be a bit width in [1, 4096], got {value!r}")


@dataclass(frozen=True)
class EnergyTable:
    """Published per-event energies (pJ) and the rules that scale them to any width.

    Parameters
    ----------
    add8_pj, add32_pj : float
        Energy of an 8-bit and a 32-bit integer add.
    mult8_pj, mult32_pj : float
        Energy of an 8-bit and a 32-bit integer multiply (``mult32_pj`` is kept for the
        record and for the check that the product-of-widths rule stays close to it).
    sram64_pj : float
        Energy of a 64-bit read from an 8 KB SRAM.
    dram64_pj : float
        Energy of a 64-bit DRAM access.
    source : str
        Citation of the table.
    """

    add8_pj: float = 0.03
    add32_pj: float = 0.1
    mult8_pj: float = 0.2
    mult32_pj: float = 3.1
    sram64_pj: float = 10.0
    dram64_pj: float = 1280.0
    source: str = HOROWITZ_CITATION

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if f.name != "source":
                _check_positive(f"EnergyTable.{f.name}", getattr(self, f.name))
        if self.add32_pj < self.add8_pj:
            raise ValueError(f"EnergyTable.add32_pj ({self.add32_pj}) must be >= "
                             f"add8_pj ({self.add8_pj})")

    # Per-width rules (see the module docstring for why each has this form).
    def add_pj(self, bits: int) -> float:
        """Energy of one ``bits``-wide integer add (linear in width)."""
        _check_width("add width", bits)
        if bits < 8:
            # Below the smallest table point: proportional to width (no negative energy).
            return bits * self.add8_pj / 8.0
        slope = (self.add32_pj - self.add8_pj) / 24.0
        return self.add8_pj + (bits - 8) * slope

    def shift_pj(self, bits: int) -> float:
        """Energy of one shift to a ``bits``-wide result, modelled as an add of that width."""
        return self.add_pj(bits)

    def mult_pj(self, a_bits: int, b_bits: int) -> float:
        """Energy of one ``a_bits x b_bits`` integer multiply (product of widths rule)."""
        _check_width("multiplier operand width", a_bits)
        _check_width("multiplier operand width", b_bits)
        return self.mult8_pj * a_bits * b_bits / 64.0

    @property
    def sram_pj_per_bit(self) -> float:
        return self.sram64_pj / 64.0

    @property
    def dram_pj_per_bit(self) -> float:
        return self.dram64_pj / 64.0

    def sram_pj(self, bits: int) -> float:
        """Energy of reading or writing ``bits`` bits of on-chip SRAM."""
        _check_width("SRAM access width", bits)
        return bits * self.sram_pj_per_bit

    def dram_pj(self, bits: int) -> float:
        """Energy of reading ``bits`` bits from DRAM."""
        _check_width("DRAM access width", bits)
        return bits * self.dram_pj_per_bit

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["sram_pj_per_bit"] = self.sram_pj_per_bit
        d["dram_pj_per_bit"] = self.dram_pj_per_bit
        return d


#: The table of Horowitz, ISSCC 2014 (45 nm).  DRAM at the low end of 1.3-2.6 nJ / 64 bit.
HOROWITZ_45NM = EnergyTable()

_COUNT_FIELDS = ("weight_words", "basis_words", "quant_reads", "act_reads", "out_writes",
                 "shifts", "adds", "macs", "requants")
_WIDTH_FIELDS = ("weight_word_bits", "basis_word_bits", "quant_word_bits", "act_word_bits",
                 "out_word_bits", "shift_bits", "add_bits", "mac_weight_bits", "act_bits",
                 "acc_bits", "mult_bits")


@dataclass(frozen=True)
class AccelCounts:
    """Events one accelerator performed on one layer (or a network), with their widths.

    Counts come from the counter registers of the simulated RTL; widths from the
    `SDConfig` the RTL was built with (`sd_widths` / `dense_widths`).

    Parameters
    ----------
    weight_words : int
        Words read from the weight memory (packed Ce words for SD, int8 weight words for
        the dense baseline), each ``weight_word_bits`` wide.
    basis_words : int
        Basis words read (SD only; 0 for dense), each ``basis_word_bits`` wide.
    quant_reads : int
        Bias/requantization words read (``quant_word_bits``); they belong to the stored
        weights of a layer (docs/format.md) and stream from DRAM with them.
    act_reads : int
        Activation memory words read (``act_word_bits`` each).
    out_writes : int
        Output (activation memory) words written (``out_word_bits``).
    shifts, adds : int
        Shifts (result ``shift_bits`` wide) and adds (``add_bits``) of the weight rebuild.
    macs : int
        Multiply-accumulates: ``mac_weight_bits x act_bits`` multiply + ``acc_bits`` add.
    requants : int
        Outputs requantized (``acc_bits x mult_bits`` multiply + ``acc_bits`` add).
    name : str
        Layer name, for reports.
    """

    weight_words: int
    weight_word_bits: int
    act_reads: int
    act_word_bits: int
    macs: int
    mac_weight_bits: int
    act_bits: int
    acc_bits: int
    basis_words: int = 0
    basis_word_bits: int = 1
    quant_reads: int = 0
    quant_word_bits: int = 1
    out_writes: int = 0
    out_word_bits: int = 8
    shifts: int = 0
    shift_bits: int = 1
    adds: int = 0
    add_bits: int = 1
    requants: int = 0
    mult_bits: int = 16
    name: str = "layer"

    def __post_init__(self):
        for f in _COUNT_FIELDS:
            _check_count(f"AccelCounts.{f} ({self.name})", getattr(self, f))
        for f in _WIDTH_FIELDS:
            _check_width(f"AccelCounts.{f} ({self.name})", getattr(self, f))

    @property
    def weight_bits_read(self) -> int:
        """Bits of weight memory read (weight words + basis words + quant words)."""
        return (self.weight_words * self.weight_word_bits
                + self.basis_words * self.basis_word_bits
                + self.quant_reads * self.quant_word_bits)

    def __add__(self, other: "AccelCounts") -> "AccelCounts":
        if not isinstance(other, AccelCounts):
            return NotImplemented
        mine = {f: getattr(self, f) for f in _WIDTH_FIELDS}
        theirs = {f: getattr(other, f) for f in _WIDTH_FIELDS}
        # Zero-count events carry no width information worth checking.
        for f in _WIDTH_FIELDS:
            if mine[f] != theirs[f] and self._uses(f) and other._uses(f):
                raise ValueError(f"cannot add counts of {self.name} and {other.name}: "
                                 f"{f} differs ({mine[f]} vs {theirs[f]})")
        widths = {f: (mine[f] if self._uses(f) else theirs[f]) for f in _WIDTH_FIELDS}
        counts = {f: getattr(self, f) + getattr(other, f) for f in _COUNT_FIELDS}
        return AccelCounts(**counts, **widths, name=f"{self.name}+{other.name}")

    def _uses(self, width_field: str) -> bool:
        users = {
            "weight_word_bits": ("weight_words",), "basis_word_bits": ("basis_words",),
            "quant_word_bits": ("quant_reads",),
            "act_word_bits": ("act_reads",), "out_word_bits": ("out_writes",),
            "shift_bits": ("shifts",), "add_bits": ("adds",),
            "mac_weight_bits": ("macs",), "act_bits": ("macs",),
            "acc_bits": ("macs", "requants"), "mult_bits": ("requants",),
        }[width_field]
        return any(getattr(self, u) for u in users)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def network_counts(layers: Iterable[AccelCounts], name: str = "network") -> AccelCounts:
    """Sum the counts of several layers (widths must agree where events were counted)."""
    layers = list(layers)
    if not layers:
        raise ValueError("network_counts needs at least one layer")
    total = layers[0]
    for layer in layers[1:]:
        total = total + layer
    return dataclasses.replace(total, name=name)


@dataclass(frozen=True)
class EnergyBreakdown:
    """Energy (pJ) of one `AccelCounts` under one scenario, by category."""

    name: str
    scenario: str
    weight_memory_pj: float
    activation_pj: float
    output_pj: float
    rebuild_pj: float
    mac_pj: float
    requant_pj: float

    @property
    def total_pj(self) -> float:
        return (self.weight_memory_pj + self.activation_pj + self.output_pj
                + self.rebuild_pj + self.mac_pj + self.requant_pj)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["total_pj"] = self.total_pj
        return d


def energy(counts: AccelCounts, scenario: str = "dram",
           table: EnergyTable = HOROWITZ_45NM) -> EnergyBreakdown:
    """Energy of the counted events under ``scenario`` (``"dram"`` or ``"onchip"``).

    In ``"dram"`` every weight-memory bit read (Ce/dense words, basis words and
    bias/requantization words) costs a DRAM access; in ``"onchip"`` an SRAM access.
    Activations and outputs are SRAM in both.
    """
    if not isinstance(counts, AccelCounts):
        raise TypeError(f"energy() expects AccelCounts, got {type(counts).__name__}")
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown energy scenario {scenario!r}; known: {list(SCENARIOS)}")
    c, t = counts, table
    per_bit = t.dram_pj_per_bit if scenario == "dram" else t.sram_pj_per_bit
    return EnergyBreakdown(
        name=c.name,
        scenario=scenario,
        weight_memory_pj=c.weight_bits_read * per_bit,
        activation_pj=c.act_reads * t.sram_pj(c.act_word_bits),
        output_pj=c.out_writes * t.sram_pj(c.out_word_bits),
        rebuild_pj=c.shifts * t.shift_pj(c.shift_bits) + c.adds * t.add_pj(c.add_bits),
        mac_pj=c.macs * (t.mult_pj(c.mac_weight_bits, c.act_bits) + t.add_pj(c.acc_bits)),
        requant_pj=c.requants * (t.mult_pj(c.acc_bits, c.mult_bits) + t.add_pj(c.acc_bits)),
    )


def energy_ratio(dense: AccelCounts, sd: AccelCounts, scenario: str = "dram",
                 table: EnergyTable = HOROWITZ_45NM) -> float:
    """Energy efficiency of SD over the dense baseline: ``E_dense / E_sd`` (> 1: SD wins)."""
    e_sd = energy(sd, scenario, table).total_pj
    e_dense = energy(dense, scenario, table).total_pj
    if e_sd <= 0:
        raise ValueError(f"SD energy of {sd.name} is zero: no events were counted")
    return e_dense / e_sd


def sd_widths(config) -> dict:
    """Event widths of the SD accelerator built from ``config`` (an `SDConfig`).

    Activation memory words are one bank word of ``lanes x act_bits`` (`hw.memories`).
    """
    return {
        "weight_word_bits": config.ce_word_width,
        "basis_word_bits": config.basis_word_bits,
        "quant_word_bits": config.quant_word_bits,
        "act_word_bits": config.lanes * config.act_bits,
        "out_word_bits": config.lanes * config.act_bits,
        "shift_bits": config.shifted_bits,
        "add_bits": config.rebuilt_weight_bits,
        "mac_weight_bits": config.rebuilt_weight_bits,
        "act_bits": config.act_bits,
        "acc_bits": config.acc_bits,
        "mult_bits": config.mult_bits,
    }


def dense_widths(config, weight_bits: int = 8) -> dict:
    """Event widths of the dense int8 baseline built from ``config``.

    Its weight word holds one row of every lane: ``lanes x S x weight_bits``
    (`hw.datapath.dense_word_bits`).
    """
    return {
        "weight_word_bits": config.lanes * config.basis_size * weight_bits,
        "basis_word_bits": 1,
        "quant_word_bits": config.quant_word_bits,
        "act_word_bits": config.lanes * config.act_bits,
        "out_word_bits": config.lanes * config.act_bits,
        "shift_bits": 1,
        "add_bits": 1,
        "mac_weight_bits": weight_bits,
        "act_bits": config.act_bits,
        "acc_bits": config.acc_bits,
        "mult_bits": config.mult_bits,
    }


#: Counters of `hw.host.Counter` the model needs (lower-case names).
RTL_COUNTERS = ("weight_reads", "basis_reads", "quant_reads", "act_reads", "act_writes",
                "rows", "mac_ops", "results")


def rebuild_ops_per_row(config) -> tuple[int, int]:
    """``(shifts, adds)`` the basis array performs for every rebuilt row it delivers.

    The array is a fixed datapath (`hw.basis_array`): per lane and per rebuilt weight,
    ``S * terms`` shifted terms (a logarithmic shift whose first mux level also applies the
    sign as a one's complement) feed an adder tree of ``S * terms - 1`` adders plus one
    incrementer that together absorb the ``S * terms`` carries of the one's complements
    (`hw.shifter.carry_sum`), whatever the coefficients are.  Every add and increment is
    priced as a full add at the widest width (``rebuilt_weight_bits``), which errs against
    SD.
    """
    per_weight_terms = config.basis_size * config.terms
    weights = config.lanes * config.basis_size
    shifts = weights * per_weight_terms
    adds = weights * per_weight_terms        # S*terms - 1 tree adders + one incrementer
    return shifts, adds


def counts_from_rtl(counters: Mapping[str, int], config, kind: str,
                    name: str = "layer") -> AccelCounts:
    """`AccelCounts` from the event counters of the simulated accelerator (`hw.host.Counter`).

    Parameters
    ----------
    counters : mapping
        Counter name (lower case, e.g. ``"weight_reads"``) -> value read from the RTL's
        counter registers; the names of `RTL_COUNTERS` are required, others (``stalls``)
        are ignored.
    config : SDConfig
        The configuration the accelerator was built with.
    kind : {"sd", "dense"}

    Notes
    -----
    ``mac_ops`` counts ops of ``lanes x S`` multiply-accumulates, ``results`` output
    positions x groups (``lanes`` requantizations each), ``rows`` weight rows delivered
    (rebuilt rows for SD, each costing `rebuild_ops_per_row`).
    """
    if kind not in ("sd", "dense"):
        raise ValueError(f"kind must be 'sd' or 'dense', got {kind!r}")
    c = {str(k).lower(): v for k, v in counters.items()}
    missing = [k for k in RTL_COUNTERS if k not in c]
    if missing:
        raise ValueError(f"{name}: RTL counters {missing} are missing; got {sorted(c)}")
    for k in RTL_COUNTERS:
        _check_count(f"RTL counter {k} ({name})", int(c[k]))
    widths = sd_widths(config) if kind == "sd" else dense_widths(config)
    lanes, s = config.lanes, config.basis_size
    shifts = adds = 0
    if kind == "sd":
        per_shift, per_add = rebuild_ops_per_row(config)
        shifts, adds = int(c["rows"]) * per_shift, int(c["rows"]) * per_add
    elif int(c["basis_reads"]):
        raise ValueError(f"{name}: the dense baseline reported {c['basis_reads']} basis reads")
    return AccelCounts(
        weight_words=int(c["weight_reads"]), basis_words=int(c["basis_reads"]),
        quant_reads=int(c["quant_reads"]), act_reads=int(c["act_reads"]),
        out_writes=int(c["act_writes"]), shifts=shifts, adds=adds,
        macs=int(c["mac_ops"]) * lanes * s, requants=int(c["results"]) * lanes,
        name=name, **widths)

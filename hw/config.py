"""The one configuration object of the SmartDeal toolchain.

`SDConfig` holds every hardware parameter of the accelerator.  The golden model, the
packer/exporter, the testbenches and the Amaranth HDL all read their widths, depths
and ranges from it; no width is retyped anywhere else.  Derived sizes are computed
here, in exactly one place, and every invariant is checked eagerly with a message
that names the parameter and the allowed range.

The coefficient code (see ``docs/format.md``) is ``{sign, field}``: ``field == 0``
means a zero coefficient (sign must then be 0), ``field == k + 1`` means magnitude
``2 ** (exp_min + k)``.  Encoding zero inside the code removes the per-element
bitmap of the reference implementation at the cost of one exponent level.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SDConfig", "PRESETS", "preset", "load_config"]


def _clog2(n: int) -> int:
    """Bits needed to hold ``n`` distinct values (``ceil(log2(n))``, at least 0)."""
    return max(0, (n - 1).bit_length())


def _bits_for(value: int) -> int:
    """Unsigned bits needed to hold the integer ``value`` itself (at least 1)."""
    return max(1, int(value).bit_length())


#: Fields added after the first release, with the default that means "as before"
#: (`SDConfig.fingerprint` leaves them out at that value).
_LATE_FIELDS = {"rebuild_cycles": 1}


@dataclass(frozen=True)
class SDConfig:
    """Immutable, self-validating parameters of one SmartDeal accelerator build.

    Parameters
    ----------
    basis_size : int
        ``S``: row length of the coefficient matrix and size of each ``S x S`` basis.
    lanes : int
        Parallel output-channel lanes.  Also the structural-sparsity group size: the
        ``lanes`` filters of one group share one row pattern and advance in lock-step.
    terms : int
        Power-of-two terms per coefficient (``c = sum_t +-2**e_t``); 1 or 2.
    act_bits : int
        Signed activation width (inputs and outputs of every layer).
    basis_bits : int
        Signed width of the integer basis entries ``B``.
    exp_bits : int
        Width of the exponent field of one coefficient code (the code adds a sign bit).
    exp_min, exp_max : int
        Inclusive exponent range of non-zero coefficients.  ``exp_max - exp_min + 1``
        levels must fit in ``2**exp_bits - 1`` (field value 0 encodes zero).
    block_rows : int
        Maximum number of coefficient rows sharing one basis (reference: ``64 * S``).
    acc_bits : int
        Signed accumulator width of the MAC lanes.
    bias_bits, mult_bits, shift_bits : int
        Widths of the per-channel bias (signed), requantization multiplier (unsigned)
        and requantization right shift (unsigned).
    max_rows : int
        Largest number of coefficient rows per filter a layer may have.
    ce_word_bits : int or None
        Word width of the packed coefficient memory.  ``None`` picks the record width
        (one record per word, one row per cycle).
    ce_depth, basis_depth, quant_depth, act_depth, out_depth : int
        Depths (in words) of the coefficient, basis, bias/requantization, activation
        and output memories.
    acc_depth : int
        Accumulators per lane: output positions (pixels x batch) one pass of a group
        can hold; a layer with more positions is processed in position tiles.
    rebuild_cycles : int
        Cycles the basis array spends per coefficient row (``k``): it rebuilds
        ``lanes // k`` lanes per cycle with one shared set of shifters and adder trees,
        so its area shrinks about ``k``-fold while it delivers one row every ``k``
        cycles.  1 = one row per cycle (full rate).  ``lanes`` must be a multiple of it.
        The MAC lanes hold a row for as many cycles as its tile has output positions
        (pixels x batch), so layers whose tile has fewer output positions than
        ``rebuild_cycles`` (a fully connected layer at batch 1) become rebuild-bound.
        It does not change the packed format.
    """

    basis_size: int = 3
    lanes: int = 4
    terms: int = 1
    act_bits: int = 8
    basis_bits: int = 8
    exp_bits: int = 3
    exp_min: int = -6
    exp_max: int = 0
    block_rows: int = 192
    acc_bits: int = 32
    bias_bits: int = 32
    mult_bits: int = 16
    shift_bits: int = 6
    max_rows: int = 1024
    ce_word_bits: int | None = None
    ce_depth: int = 4096
    basis_depth: int = 256
    quant_depth: int = 256
    act_depth: int = 4096
    out_depth: int = 4096
    acc_depth: int = 256
    rebuild_cycles: int = 1

    # ------------------------------------------------------------------ validation
    def __post_init__(self):
        for name, lo, hi in (
            ("basis_size", 2, 8),
            ("lanes", 1, 64),
            ("terms", 1, 2),
            ("act_bits", 2, 16),
            ("basis_bits", 2, 16),
            ("exp_bits", 1, 6),
            ("block_rows", 1, 1 << 16),
            ("acc_bits", 8, 64),
            ("bias_bits", 2, 64),
            ("mult_bits", 1, 32),
            ("shift_bits", 1, 7),
            ("max_rows", 1, 1 << 20),
            ("ce_depth", 1, 1 << 24),
            ("basis_depth", 1, 1 << 24),
            ("quant_depth", 1, 1 << 24),
            ("act_depth", 1, 1 << 24),
            ("out_depth", 1, 1 << 24),
            ("acc_depth", 1, 1 << 20),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"SDConfig.{name} must be an int, got {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"SDConfig.{name} must be in [{lo}, {hi}], got {value!r}")
        for name in ("exp_min", "exp_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"SDConfig.{name} must be an int, got {value!r}")
            if not -32 <= value <= 32:
                raise ValueError(f"SDConfig.{name} must be in [-32, 32], got {value!r}")
        if self.exp_max < self.exp_min:
            raise ValueError(
                f"SDConfig.exp_max ({self.exp_max}) must be >= exp_min ({self.exp_min})")
        if self.exp_levels > self.max_exp_levels:
            raise ValueError(
                f"SDConfig exponent range [{self.exp_min}, {self.exp_max}] has "
                f"{self.exp_levels} levels, but exp_bits={self.exp_bits} holds at most "
                f"{self.max_exp_levels} (2**exp_bits - 1; field 0 encodes zero); "
                f"raise exp_bits or narrow the range")
        if self.block_rows > self.max_rows:
            raise ValueError(
                f"SDConfig.block_rows ({self.block_rows}) must be <= max_rows ({self.max_rows})")
        if self.bias_bits > self.acc_bits:
            raise ValueError(
                f"SDConfig.bias_bits ({self.bias_bits}) must be <= acc_bits ({self.acc_bits})")
        min_acc = self.product_bits + 1
        if self.acc_bits < min_acc:
            raise ValueError(
                f"SDConfig.acc_bits ({self.acc_bits}) must be >= {min_acc} to hold one "
                f"weight x activation product ({self.rebuilt_weight_bits}-bit rebuilt "
                f"weight x {self.act_bits}-bit activation) plus a sign bit")
        k = self.rebuild_cycles
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"SDConfig.rebuild_cycles must be an int, got {k!r}")
        if not 1 <= k <= self.lanes:
            raise ValueError(f"SDConfig.rebuild_cycles must be in [1, lanes={self.lanes}], "
                             f"got {k!r}")
        if self.lanes % k:
            raise ValueError(f"SDConfig.rebuild_cycles ({k}) must divide lanes ({self.lanes}): "
                             f"the basis array rebuilds lanes // rebuild_cycles lanes per cycle")
        if self.ce_word_bits is not None:
            if isinstance(self.ce_word_bits, bool) or not isinstance(self.ce_word_bits, int):
                raise TypeError(f"SDConfig.ce_word_bits must be an int or None, "
                                f"got {self.ce_word_bits!r}")
            if not 8 <= self.ce_word_bits <= 1024:
                raise ValueError(f"SDConfig.ce_word_bits must be in [8, 1024] or None, "
                                 f"got {self.ce_word_bits!r}")
        if self.header_bits > self.record_bits:
            raise ValueError(
                f"SDConfig: group header ({self.header_bits} bits) does not fit in one "
                f"record ({self.record_bits} bits)")

    # ------------------------------------------------------------- derived widths
    @property
    def exp_levels(self) -> int:
        """Number of non-zero magnitudes a single term can take."""
        return self.exp_max - self.exp_min + 1

    @property
    def max_exp_levels(self) -> int:
        """Most levels the exponent field can encode (field 0 is zero)."""
        return (1 << self.exp_bits) - 1

    @property
    def max_shift(self) -> int:
        """Largest left shift applied to a basis entry (``exp_max - exp_min``)."""
        return self.exp_max - self.exp_min

    @property
    def shift_code_bits(self) -> int:
        """Width of an exponent offset ``e - exp_min`` as the decoder emits it."""
        return _bits_for(self.max_shift)

    @property
    def code_bits(self) -> int:
        """Bits of one power-of-two term code: sign + exponent field."""
        return 1 + self.exp_bits

    @property
    def element_code_bits(self) -> int:
        """Bits of one coefficient (all its terms)."""
        return self.terms * self.code_bits

    @property
    def row_bits(self) -> int:
        """Width of a row index and of a group's row count (0 ... max_rows)."""
        return _bits_for(self.max_rows)

    @property
    def header_tag(self) -> int:
        """8-bit tag that opens every group header (ASCII 'S' ^ 'D')."""
        return 0x5D

    @property
    def header_bits(self) -> int:
        """Meaningful bits of a group header: row count and tag."""
        return self.row_bits + 8

    @property
    def record_bits(self) -> int:
        """Bits of one packed row record: row index, then lanes x S x terms codes."""
        return self.row_bits + self.lanes * self.basis_size * self.element_code_bits

    @property
    def ce_word_width(self) -> int:
        """Word width of the coefficient memory (``ce_word_bits`` or the record width)."""
        return self.record_bits if self.ce_word_bits is None else self.ce_word_bits

    @property
    def words_per_record(self) -> int:
        """Coefficient memory words one record (or header) occupies, zero-padded."""
        return -(-self.record_bits // self.ce_word_width)

    @property
    def shifted_bits(self) -> int:
        """Signed width of one shifted term ``+-B << k``."""
        return self.basis_bits + self.max_shift + 1

    @property
    def rebuilt_weight_bits(self) -> int:
        """Signed width of a rebuilt weight: sum of ``S * terms`` shifted terms."""
        return self.shifted_bits + _clog2(self.basis_size * self.terms)

    @property
    def product_bits(self) -> int:
        """Signed width of one rebuilt weight x activation product."""
        return self.rebuilt_weight_bits + self.act_bits

    @property
    def basis_word_bits(self) -> int:
        """Word width of the basis memory: one lane's ``S x S`` basis."""
        return self.basis_size * self.basis_size * self.basis_bits

    @property
    def quant_word_bits(self) -> int:
        """Word width of the bias/requantization memory: bias, multiplier, shift."""
        return self.bias_bits + self.mult_bits + self.shift_bits

    @property
    def act_word_bits(self) -> int:
        """Word width of the activation memory: one row of ``S`` activations."""
        return self.basis_size * self.act_bits

    @property
    def act_min(self) -> int:
        return -(1 << (self.act_bits - 1))

    @property
    def act_max(self) -> int:
        return (1 << (self.act_bits - 1)) - 1

    @property
    def basis_min(self) -> int:
        return -(1 << (self.basis_bits - 1))

    @property
    def basis_max(self) -> int:
        return (1 << (self.basis_bits - 1)) - 1

    @property
    def acc_min(self) -> int:
        return -(1 << (self.acc_bits - 1))

    @property
    def acc_max(self) -> int:
        return (1 << (self.acc_bits - 1)) - 1

    @property
    def max_groups(self) -> int:
        """Most lane groups one layer can have (one quant word per output channel)."""
        return -(-self.quant_depth // self.lanes)

    @property
    def group_bits(self) -> int:
        """Width of a group index / group count (0 ... max_groups)."""
        return _bits_for(self.max_groups)

    @property
    def max_blocks(self) -> int:
        """Most basis blocks one filter can have."""
        return -(-self.max_rows // self.block_rows)

    @property
    def block_bits(self) -> int:
        """Width of a block index (0 ... max_blocks - 1)."""
        return max(1, _clog2(self.max_blocks))

    @property
    def lane_bits(self) -> int:
        """Width of a lane index."""
        return max(1, _clog2(self.lanes))

    @property
    def acc_addr_bits(self) -> int:
        """Width of an accumulator (output position) address."""
        return max(1, _clog2(self.acc_depth))

    @property
    def group_size(self) -> int:
        """Filters per structural-sparsity group (the lanes that run in lock-step)."""
        return self.lanes

    # ---------------------------------------------------------------- conversion
    def replace(self, **changes: Any) -> "SDConfig":
        """A copy with some fields changed (validated like a new object)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SDConfig":
        if not isinstance(data, dict):
            raise TypeError(f"SDConfig.from_dict expects a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SDConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "SDConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"SDConfig JSON is malformed: {exc}") from None
        return cls.from_dict(data)

    def fingerprint(self) -> str:
        """Short stable hash of the configuration (build caches, manifests, ``CONFIG_ID``).

        Fields added after the first release (`_LATE_FIELDS`) count only when they differ
        from their default, so a configuration keeps the fingerprint it had before they
        existed (manifests written then still check).
        """
        import hashlib
        fields = {k: v for k, v in self.to_dict().items()
                  if not (k in _LATE_FIELDS and v == _LATE_FIELDS[k])}
        text = json.dumps(fields, separators=(", ", ": "), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def summary(self) -> str:
        return (f"S={self.basis_size} lanes={self.lanes} terms={self.terms} "
                f"act={self.act_bits}b B={self.basis_bits}b code={self.code_bits}b "
                f"e=[{self.exp_min},{self.exp_max}] acc={self.acc_bits}b "
                f"record={self.record_bits}b word={self.ce_word_width}b"
                # the rebuild rate only when it is not the full rate, so existing
                # descriptions (build READMEs, FuseSoC cores) stay as they were
                + (f" rebuild={self.rebuild_cycles}cyc/row" if self.rebuild_cycles != 1 else ""))


PRESETS: dict[str, SDConfig] = {
    # The smallest build: two lanes, small memories.  Meant for small iCE40 parts, but it
    # does not fit one yet (docs/fpga.md: about 12 k LUT and 13 k FF against the UP5K's
    # 5 280), and the bundled network needs larger ce/quant memories than it has.
    "tiny": SDConfig(lanes=2, max_rows=255, block_rows=96, ce_depth=512, basis_depth=128,
                     quant_depth=64, act_depth=1024, out_depth=1024, acc_depth=64),
    "default": SDConfig(),
    "large": SDConfig(lanes=16, max_rows=4095, ce_depth=8192, basis_depth=2048,
                      quant_depth=1024, act_depth=16384, out_depth=16384, acc_depth=1024),
}


def preset(name: str) -> SDConfig:
    """Return the named preset, or raise a ValueError listing the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}") from None


def load_config(spec: "str | Path | SDConfig | None") -> SDConfig:
    """Resolve a preset name, a JSON file path or an `SDConfig` into an `SDConfig`."""
    if spec is None:
        return PRESETS["default"]
    if isinstance(spec, SDConfig):
        return spec
    text = str(spec)
    if text in PRESETS:
        return PRESETS[text]
    path = Path(text)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise ValueError(f"configuration file {path} does not exist")
        data = json.loads(path.read_text())
        # A manifest carries the configuration under "config".
        if isinstance(data, dict) and "config" in data and isinstance(data["config"], dict):
            data = data["config"]
        return SDConfig.from_dict(data)
    raise ValueError(f"unknown preset {text!r} and no such JSON file; "
                     f"known presets: {sorted(PRESETS)}")

"""`SDWeight`: one layer's weight in SmartDeal form, ``W ~= Ce . B``.

This dataclass is the hand-over between the decomposition (`golden.decompose`), the
SD layers, the bit-exact reference (`golden.reference`) and the packer (`golden.pack`).
Its storage accounting follows the packed format v1 of ``docs/format.md`` exactly, so the
bits counted here are the bits the exporter writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from hw.config import SDConfig

__all__ = ["SDWeight", "StorageBits", "rows_per_filter", "weight_to_rows", "rows_to_weight"]


def rows_per_filter(weight_shape: tuple[int, ...], basis_size: int) -> int:
    """Number of ``S``-element coefficient rows one flattened, zero-padded filter has."""
    k = math.prod(weight_shape[1:])
    return -(-k // basis_size)


def weight_to_rows(weight: torch.Tensor, basis_size: int) -> torch.Tensor:
    """View a ``(Cout, ...)`` weight as ``(Cout, R, S)`` rows (flatten, zero-pad to ``R*S``)."""
    cout = weight.shape[0]
    flat = weight.reshape(cout, -1)
    r = rows_per_filter(tuple(weight.shape), basis_size)
    pad = r * basis_size - flat.shape[1]
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    return flat.reshape(cout, r, basis_size)


def rows_to_weight(rows: torch.Tensor, weight_shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of `weight_to_rows`: drop the padding and restore ``weight_shape``."""
    cout = weight_shape[0]
    k = math.prod(weight_shape[1:])
    return rows.reshape(cout, -1)[:, :k].reshape(weight_shape)


@dataclass(frozen=True)
class StorageBits:
    """Bits of one layer's packed weights, by kind (format v1)."""

    codes: int      #: coefficient codes in stored records (padding lanes included)
    index: int      #: row indices, group headers and slot padding
    basis: int      #: integer basis words
    scales: int     #: bias / requantization words (one per output channel)
    weights: int    #: number of original weights (Cout x K)

    @property
    def total(self) -> int:
        return self.codes + self.index + self.basis + self.scales

    @property
    def bits_per_weight(self) -> float:
        return self.total / max(1, self.weights)

    def as_dict(self) -> dict:
        return {"codes": self.codes, "index": self.index, "basis": self.basis,
                "scales": self.scales, "total": self.total, "weights": self.weights,
                "bits_per_weight": self.bits_per_weight}


@dataclass(eq=False)
class SDWeight:
    """A weight ``(Cout, N)`` or ``(Cout, Cin, kh, kw)`` in SmartDeal form.

    Attributes
    ----------
    config : SDConfig
        The configuration the codes and basis were produced for.
    weight_shape : tuple of int
        Shape of the original dense weight.
    mask : torch.BoolTensor, shape (Cout, R, S, terms)
        True where a power-of-two term is non-zero.
    sign : torch.BoolTensor, shape (Cout, R, S, terms)
        True where the term is negative (False where ``mask`` is False).
    exponent : torch.Int8Tensor, shape (Cout, R, S, terms)
        Absolute exponent ``e`` in ``[exp_min, exp_max]`` (``exp_min`` where masked off).
    basis : torch.IntTensor (int32), shape (Cout, n_blocks, S, S)
        Integer basis, ``basis_bits`` signed; ``basis[o, b, j, i]``: row ``j`` is the
        coefficient element, column ``i`` the rebuilt weight element.
    basis_scale : torch.Tensor (float64), shape (Cout,)
        Per-output-channel scale of the integer basis.
    row_keep : torch.BoolTensor, shape (n_groups, R)
        Structural row pattern shared by the ``lanes`` filters of each group.
    name : str
        Layer name, for messages.
    """

    config: SDConfig
    weight_shape: tuple[int, ...]
    mask: torch.Tensor
    sign: torch.Tensor
    exponent: torch.Tensor
    basis: torch.Tensor
    basis_scale: torch.Tensor
    row_keep: torch.Tensor
    name: str = "weight"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.weight_shape = tuple(int(d) for d in self.weight_shape)
        self.validate()

    # ----------------------------------------------------------------- geometry
    @property
    def out_channels(self) -> int:
        return self.weight_shape[0]

    @property
    def kind(self) -> str:
        return "linear" if len(self.weight_shape) == 2 else "conv2d"

    @property
    def fan_in(self) -> int:
        return math.prod(self.weight_shape[1:])

    @property
    def rows(self) -> int:
        return rows_per_filter(self.weight_shape, self.config.basis_size)

    @property
    def n_blocks(self) -> int:
        return -(-self.rows // self.config.block_rows)

    @property
    def n_groups(self) -> int:
        return -(-self.out_channels // self.config.lanes)

    def block_of_row(self) -> torch.Tensor:
        """Block index of every row, shape (R,)."""
        return torch.arange(self.rows) // self.config.block_rows

    # --------------------------------------------------------------- validation
    def validate(self) -> None:
        """Check shapes, dtypes, code ranges and the structural pattern; raise ValueError."""
        cfg, n = self.config, self.name
        if len(self.weight_shape) not in (2, 4):
            raise ValueError(f"{n}: weight shape {self.weight_shape} is neither (Cout, N) "
                             f"nor (Cout, Cin, kh, kw)")
        shape = (self.out_channels, self.rows, cfg.basis_size, cfg.terms)
        for attr in ("mask", "sign", "exponent"):
            t = getattr(self, attr)
            if tuple(t.shape) != shape:
                raise ValueError(f"{n}: {attr} has shape {tuple(t.shape)}, expected {shape}")
        bshape = (self.out_channels, self.n_blocks, cfg.basis_size, cfg.basis_size)
        if tuple(self.basis.shape) != bshape:
            raise ValueError(f"{n}: basis has shape {tuple(self.basis.shape)}, expected {bshape}")
        if tuple(self.basis_scale.shape) != (self.out_channels,):
            raise ValueError(f"{n}: basis_scale has shape {tuple(self.basis_scale.shape)}, "
                             f"expected ({self.out_channels},)")
        if tuple(self.row_keep.shape) != (self.n_groups, self.rows):
            raise ValueError(f"{n}: row_keep has shape {tuple(self.row_keep.shape)}, "
                             f"expected ({self.n_groups}, {self.rows})")
        if self.basis.is_floating_point():
            raise ValueError(f"{n}: basis must be an integer tensor, got {self.basis.dtype}")
        if self.basis.numel() and (int(self.basis.min()) < cfg.basis_min
                                   or int(self.basis.max()) > cfg.basis_max):
            raise ValueError(f"{n}: basis values [{int(self.basis.min())}, "
                             f"{int(self.basis.max())}] exceed the {cfg.basis_bits}-bit range "
                             f"[{cfg.basis_min}, {cfg.basis_max}]")
        if not torch.isfinite(self.basis_scale).all() or (self.basis_scale <= 0).any():
            raise ValueError(f"{n}: basis_scale must be finite and > 0")
        # Boolean reductions (any, where on bool masks) are 10-60x slower on CPU than
        # the same reductions over a uint8 view, and this check runs on every
        # decomposed layer (it was a third of `decompose`'s time on a 512x512x3x3 conv),
        # hence the uint8 views below; the checks themselves are unchanged.
        mask8 = self.mask.to(torch.bool).view(torch.uint8)
        if self.mask.numel() and int(mask8.amax()):
            lo, hi = self.exponent.aminmax()
            if int(lo) < cfg.exp_min or int(hi) > cfg.exp_max:
                # Only live exponents count: masked-off entries are read as in-range.
                lo, hi = torch.where(mask8.bool(), self.exponent, cfg.exp_min).aminmax()
            if int(lo) < cfg.exp_min or int(hi) > cfg.exp_max:
                raise ValueError(f"{n}: exponents [{int(lo)}, {int(hi)}] exceed "
                                 f"the configured range [{cfg.exp_min}, {cfg.exp_max}]")
        sign8 = self.sign.to(torch.bool).view(torch.uint8)
        if self.mask.numel() and int(torch.gt(sign8, mask8).view(torch.uint8).amax()):
            raise ValueError(f"{n}: sign set on a zero term (negative zero)")
        # Structural pattern: a row dropped for a group is zero for all its filters.
        terms = mask8.flatten(2)                                   # (Cout, R, S*terms)
        lane_rows = terms[..., 0]
        for k in range(1, terms.shape[-1]):
            lane_rows = torch.maximum(lane_rows, terms[..., k])    # (Cout, R)
        group_of = torch.arange(self.out_channels) // cfg.lanes
        if lane_rows.numel() and int(torch.gt(lane_rows, self.row_keep[group_of]
                                              .to(torch.uint8)).view(torch.uint8).amax()):
            raise ValueError(f"{n}: a row outside the group's structural pattern is non-zero")

    # ----------------------------------------------------------- reconstruction
    def coefficients(self) -> torch.Tensor:
        """Real-valued ``Ce`` (sum of signed powers of two), shape (Cout, R, S), float64."""
        mag = torch.pow(2.0, self.exponent.to(torch.float64))
        val = torch.where(self.sign, -mag, mag) * self.mask
        return val.sum(dim=-1)

    def shift_codes(self) -> torch.Tensor:
        """Exponent offsets ``e - exp_min`` (int64), shape (Cout, R, S, terms)."""
        return (self.exponent.to(torch.int64) - self.config.exp_min) * self.mask

    def rebuilt_int(self) -> torch.Tensor:
        """Integer rebuilt weights by exact shift-and-add, shape (Cout, R, S), int64.

        ``w_int[o, r, i] = sum_j sum_t (-1)**sign * (B[o, b(r), j, i] << (e - exp_min))``.
        """
        k = self.shift_codes()
        factor = torch.where(self.sign, -1, 1).to(torch.int64) * self.mask * (1 << k)
        coef = factor.sum(dim=-1)                                  # (Cout, R, S) integer
        basis = self.basis.to(torch.int64)[:, self.block_of_row()]  # (Cout, R, S, S)
        return torch.einsum("orj,orji->ori", coef, basis)

    def weight_scale(self) -> torch.Tensor:
        """Real value of one integer weight unit per output channel, float64 (Cout,)."""
        return self.basis_scale.to(torch.float64) * 2.0 ** self.config.exp_min

    def reconstruct(self) -> torch.Tensor:
        """The float weight the hardware rebuilds, in the original shape (float32)."""
        rows = self.rebuilt_int().to(torch.float64) * self.weight_scale()[:, None, None]
        return rows_to_weight(rows, self.weight_shape).to(torch.float32)

    # ------------------------------------------------------------------ metrics
    @property
    def density(self) -> float:
        """Fraction of non-zero coefficients among all ``Cout x R x S`` positions."""
        nz = self.mask.any(dim=-1)
        return float(nz.float().mean()) if nz.numel() else 0.0

    def kept_rows(self) -> torch.Tensor:
        """Number of stored row records per group, shape (n_groups,)."""
        return self.row_keep.sum(dim=1)

    def storage_bits(self) -> StorageBits:
        """Bits of this layer in packed format v1 (exactly what `golden.pack` writes)."""
        cfg = self.config
        records = int(self.kept_rows().sum())
        slot = cfg.words_per_record * cfg.ce_word_width
        codes = records * cfg.lanes * cfg.basis_size * cfg.element_code_bits
        stream = (records + self.n_groups) * slot
        return StorageBits(
            codes=codes,
            index=stream - codes,
            basis=self.n_groups * self.n_blocks * cfg.lanes * cfg.basis_word_bits,
            scales=self.out_channels * cfg.quant_word_bits,
            weights=self.out_channels * self.fan_in,
        )

    def __repr__(self) -> str:
        sb = self.storage_bits()
        return (f"SDWeight({self.name}: {self.kind} {self.weight_shape}, R={self.rows}, "
                f"blocks={self.n_blocks}, groups={self.n_groups}, density={self.density:.3f}, "
                f"{sb.bits_per_weight:.2f} bits/weight)")

"""Power-of-two quantization of SmartDeal coefficients.

A coefficient is the sum of ``terms`` signed powers of two, each term ``0`` or
``+-2**e`` with ``e`` in ``[exp_min, exp_max]`` (see ``docs/format.md``).

Rounding rule (one term), for a magnitude ``m``:

* nearest value of ``{0} U {2**e : exp_min <= e <= exp_max}`` in *linear* distance;
* a tie goes to the larger magnitude, as in the reference implementation, whose
  ``lerr < rerr`` test picks the lower power only when it is strictly nearer.  So
  between two powers ``2**k <= m < 2**(k+1)`` the result is ``2**(k+1)`` exactly when
  ``m >= 1.5 * 2**k``;
* magnitudes above ``2**exp_max`` saturate to ``2**exp_max`` (the reference clips at
  ``max_C``); magnitudes below ``2**(exp_min - 1)`` (half the smallest level) become 0,
  ``2**(exp_min - 1)`` itself goes up to ``2**exp_min``;
* an optional ``threshold`` additionally zeroes every magnitude ``< threshold`` (the
  reference's element threshold).

Two terms (``c = +-2**a +-2**b``) are chosen greedily: the one-term rounding of ``x``,
then the one-term rounding of the residual, both within the same range.  Greedy is a
projection: it maps every representable two-term value to itself.

The rounding is done on the IEEE-754 bit pattern: adding half the mantissa range
(``0x400000`` for float32) to the magnitude's bits and clearing the mantissa gives the
power of two nearest in linear distance with ties up, because the top mantissa bit is
set exactly when ``m >= 1.5 * 2**k``.  This is exact (no ``log2`` rounding) and costs a
few integer passes, which matters in the decomposition's inner loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Pow2Codes", "pow2_round", "pow2_quantize", "codes_from_values", "check_exp_range",
           "project"]

# dtype -> (integer view dtype, mantissa bits, exponent bias)
_LAYOUT = {
    torch.float32: (torch.int32, 23, 127),
    torch.float64: (torch.int64, 52, 1023),
}


def check_exp_range(exp_min: int, exp_max: int, dtype: torch.dtype = torch.float32) -> None:
    """Raise ValueError unless ``[exp_min, exp_max]`` is a usable normal range of ``dtype``."""
    if isinstance(exp_min, bool) or isinstance(exp_max, bool) or not (
            isinstance(exp_min, int) and isinstance(exp_max, int)):
        raise ValueError(f"exponent range must be integers, got [{exp_min!r}, {exp_max!r}]")
    if exp_max < exp_min:
        raise ValueError(f"exponent range [{exp_min}, {exp_max}] is empty")
    if dtype not in _LAYOUT:
        raise ValueError(f"pow2 quantization supports float32/float64, got {dtype}")
    finfo = torch.finfo(dtype)
    lo, hi = math.frexp(finfo.tiny)[1], math.frexp(finfo.max)[1] - 2
    if exp_min - 1 < lo or exp_max > hi:
        raise ValueError(f"exponent range [{exp_min}, {exp_max}] does not fit {dtype} "
                         f"normal numbers [2**{lo}, 2**{hi}]")


def _bits_of(value: float, dtype: torch.dtype) -> int:
    """Integer bit pattern of a positive ``value`` in ``dtype``."""
    return int(torch.tensor(value, dtype=dtype).view(_LAYOUT[dtype][0]))


def pow2_round(x: torch.Tensor, exp_min: int, exp_max: int,
               threshold: float = 0.0) -> torch.Tensor:
    """One-term power-of-two rounding of ``x`` (same dtype and shape).

    Parameters
    ----------
    x : torch.Tensor
        float32 or float64 values, finite.
    exp_min, exp_max : int
        Inclusive exponent range of non-zero results.
    threshold : float
        Magnitudes strictly below it become 0 (on top of the half-smallest-level rule).

    Returns
    -------
    torch.Tensor
        ``0`` or ``+-2**e`` with ``exp_min <= e <= exp_max``, nearest in linear
        distance (ties to the larger magnitude).
    """
    dtype = x.dtype
    if dtype not in _LAYOUT:
        raise ValueError(f"pow2_round supports float32/float64 tensors, got {dtype}")
    idt, mbits, _ = _LAYOUT[dtype]
    nbits = torch.iinfo(idt).bits
    sign_mask = -(1 << (nbits - 1))               # the sign bit, as a signed integer
    mag_mask = (1 << (nbits - 1)) - 1
    exp_field = ((1 << (nbits - 1 - mbits)) - 1) << mbits
    half = 1 << (mbits - 1)          # adding it carries into the exponent iff m >= 1.5*2**k
    lo = _bits_of(2.0 ** exp_min, dtype)
    hi = _bits_of(2.0 ** exp_max, dtype)
    zero_below = _bits_of(2.0 ** (exp_min - 1), dtype)
    if threshold > 0.0:
        zero_below = max(zero_below, _bits_of(float(threshold), dtype))

    bits = x.contiguous().view(idt)
    mag = bits & mag_mask
    q = mag + half
    q &= exp_field
    q.clamp_(lo, hi)
    # Branch-free integer select (masked_fill/where on bool masks and integer shifts are
    # several times slower on CPU than add/and/clamp): ``keep`` is all ones (-1) where
    # the magnitude reaches the zero cut and 0 below it; the sign survives only there.
    # In-place ops: fewer fresh allocations, which cost page faults on large tensors.
    keep = mag.neg_().add_(zero_below - 1).clamp_(-1, 0)
    q |= bits & sign_mask
    q &= keep
    return q.view(dtype)


@dataclass(frozen=True)
class Pow2Codes:
    """Term codes of power-of-two coefficients, each tensor shaped ``(..., terms)``.

    Attributes
    ----------
    mask : torch.BoolTensor
        True where the term is non-zero.
    sign : torch.BoolTensor
        True where the term is negative (never where ``mask`` is False).
    exponent : torch.Int8Tensor
        ``e`` of each term; ``exp_min`` where ``mask`` is False.
    """

    mask: torch.Tensor
    sign: torch.Tensor
    exponent: torch.Tensor

    def values(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Sum of the terms, shape ``(...)``."""
        mag = torch.pow(2.0, self.exponent.to(dtype))
        return (torch.where(self.sign, -mag, mag) * self.mask).sum(dim=-1)


def _term_codes(q: torch.Tensor, exp_min: int) -> tuple[torch.Tensor, ...]:
    """mask/sign/exponent of one-term values ``q`` (already powers of two or 0)."""
    mask = q != 0
    sign = q < 0
    _, e = torch.frexp(q.abs())
    exponent = torch.where(mask, e.to(torch.int64) - 1, exp_min).to(torch.int8)
    return mask, sign, exponent


def pow2_quantize(x: torch.Tensor, exp_min: int, exp_max: int, terms: int = 1,
                  threshold: float = 0.0) -> tuple[torch.Tensor, Pow2Codes]:
    """Quantize ``x`` to sums of ``terms`` powers of two (greedy for ``terms == 2``).

    Returns
    -------
    values : torch.Tensor
        The quantized values, dtype and shape of ``x``.
    codes : Pow2Codes
        Their term codes, shaped ``x.shape + (terms,)``.
    """
    if terms not in (1, 2):
        raise ValueError(f"terms must be 1 or 2, got {terms!r}")
    check_exp_range(exp_min, exp_max, x.dtype)
    if not torch.isfinite(x).all():
        raise ValueError("pow2_quantize: input has NaN or infinite values")
    parts = []
    residual = x
    total = torch.zeros_like(x)
    for t in range(terms):
        q = pow2_round(residual, exp_min, exp_max, threshold if t == 0 else 0.0)
        parts.append(_term_codes(q, exp_min))
        total = total + q
        residual = x - total
    codes = Pow2Codes(*(torch.stack([p[i] for p in parts], dim=-1) for i in range(3)))
    return total, codes


def project(x: torch.Tensor, exp_min: int, exp_max: int, terms: int = 1,
            threshold: float = 0.0) -> torch.Tensor:
    """Values-only `pow2_quantize` (the hot-loop form: no codes, no validation)."""
    q = pow2_round(x, exp_min, exp_max, threshold)
    if terms == 2:
        q = q + pow2_round(x - q, exp_min, exp_max)
    return q


def codes_from_values(values: torch.Tensor, exp_min: int, exp_max: int,
                      terms: int = 1, name: str = "coefficients") -> Pow2Codes:
    """Term codes of values that are already representable; ValueError otherwise."""
    if not values.is_floating_point():
        values = values.to(torch.float64)
    q, codes = pow2_quantize(values, exp_min, exp_max, terms)
    bad = q != values
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name}: value {float(values[idx])!r} at {idx} is not a sum of "
                         f"{terms} power(s) of two in [2**{exp_min}, 2**{exp_max}]")
    return codes

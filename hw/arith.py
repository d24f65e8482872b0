"""Exact integer division without a divider: multiply by a reciprocal and shift.

The address generators of the accelerator split indices (a coefficient row into input
channel / kernel row / kernel column, a flat element index into activation word and
lane) by divisors that are either constants of the configuration (``S``, ``lanes``) or
per-layer values written by the host.  Both use the same exact identity: for
``0 <= x < 2**n`` and ``1 <= d <= 2**n``,

    x // d == (x * M) >> (2 * n)    with    M = ceil(2**(2n) / d)

because ``M * d - 2**(2n) = e < d`` and ``x * e < 2**(2n)``, so the error term stays below
``1 / d`` (see `magic`).  The host computes ``M`` for the per-layer divisors
(`magic`), the hardware only multiplies.
"""

from __future__ import annotations

from amaranth import Signal, unsigned

__all__ = ["magic", "magic_bits", "div_const", "divmod_const", "div_magic"]


def magic_bits(n: int) -> int:
    """Width of the reciprocal ``M`` for dividends of ``n`` bits (``d = 1`` needs ``2n+1``)."""
    return 2 * n + 1


def magic(d: int, n: int) -> int:
    """Reciprocal ``M = ceil(2**(2n) / d)`` so that ``x // d == (x * M) >> 2n`` for ``x < 2**n``.

    Raises
    ------
    ValueError
        If ``d`` is not in ``[1, 2**n]``.
    """
    if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= (1 << n):
        raise ValueError(f"divisor must be an int in [1, 2**{n}], got {d!r}")
    return -(-(1 << (2 * n)) // d)


def div_magic(m, x, reciprocal, n: int, name: str):
    """``x // d`` for ``x`` of ``n`` bits, ``reciprocal = magic(d, n)`` a signal (comb)."""
    q = Signal(unsigned(n), name=name)
    m.d.comb += q.eq((x * reciprocal) >> (2 * n))
    return q


def div_const(m, x, d: int, n: int, name: str):
    """``x // d`` for an unsigned ``x`` of ``n`` bits and a Python constant ``d`` (comb)."""
    if d < 1:
        raise ValueError(f"divisor must be >= 1, got {d!r}")
    q = Signal(unsigned(max(1, n)), name=name)
    if d & (d - 1) == 0:                      # power of two: a slice
        m.d.comb += q.eq(x >> (d.bit_length() - 1))
    else:
        m.d.comb += q.eq((x * magic(d, n)) >> (2 * n))
    return q


def divmod_const(m, x, d: int, n: int, name: str):
    """``(x // d, x % d)`` for an unsigned ``x`` of ``n`` bits and a constant ``d`` (comb)."""
    q = div_const(m, x, d, n, name + "_q")
    r = Signal(unsigned(max(1, (d - 1).bit_length())), name=name + "_r")
    if d & (d - 1) == 0:
        m.d.comb += r.eq(x & (d - 1))
    else:
        m.d.comb += r.eq(x - q * d)
    return q, r

"""Multiplier-free integer helpers of the address generators.

The accelerator's DSP blocks belong to the MAC lanes (an ECP5-25k has 28 and the default
preset's lanes use 20), so every address generator avoids ``*`` on run-time values:

* a constant factor becomes a sum of shifted copies (`mul_const`), which synthesis
  keeps in LUT carry chains instead of mapping it to a DSP block;
* a split of an index by run-time divisors is a restoring long division, one quotient
  bit per pipeline stage (`div_step`); the stage that finds a quotient bit also adds
  the matching shifted copy of an address stride, so ``quotient * stride`` costs no
  multiplier either (``hw/sequencer.py`` `RowAddress`);
* walks over positions and elements use incremental and mixed-radix counters
  (`mixed_add`) whose digit steps the host precomputes (``hw/program.py``).
"""

from __future__ import annotations

from amaranth import Mux, unsigned
from amaranth.hdl import Value

__all__ = ["mul_const", "div_step", "mixed_add", "mixed_layout"]


def mul_const(x, c: int) -> Value:
    """``x * c`` for a non-negative Python constant ``c``, as shifts and adds (no ``$mul``).

    Raises
    ------
    ValueError
        If ``c`` is negative or not an int.
    """
    if isinstance(c, bool) or not isinstance(c, int) or c < 0:
        raise ValueError(f"constant factor must be a non-negative int, got {c!r}")
    terms = [x << k for k in range(c.bit_length()) if (c >> k) & 1]
    if not terms:
        return x & 0
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def div_step(rem, divisor, k: int):
    """One restoring-division step: ``(bit, new_rem)`` with ``bit = rem >= divisor << k``.

    ``new_rem`` is ``rem - (divisor << k)`` when ``bit`` is set, else ``rem``; its width is
    that of ``rem``.  Steps for ``k = q - 1 ... 0`` give ``rem // divisor`` bit by bit when
    the quotient is below ``2 ** q``.
    """
    shifted = divisor << k
    bit = rem >= shifted
    return bit, Mux(bit, rem - shifted, rem)[:len(rem)]


def mixed_layout(q_bits: int, lane_bits: int, s_bits: int):
    """Digits of ``x = (q * lanes + l) * S + s``: the scatter element counters."""
    from amaranth.lib import data
    return data.StructLayout({"q": unsigned(q_bits), "l": unsigned(lane_bits),
                              "s": unsigned(s_bits)})


def mixed_add(a, dq, dl, ds, lanes: int, S: int):
    """Digits of ``a + (dq * lanes + dl) * S + ds`` for digit values ``dl < lanes``, ``ds < S``.

    ``a`` is a `mixed_layout` view; the result is a tuple ``(q, l, s)`` of values (carry
    between digits by one compare each, no division).
    """
    s_sum = a.s + ds
    c1 = s_sum >= S
    s_new = Mux(c1, s_sum - S, s_sum)
    l_sum = a.l + dl + c1
    c2 = l_sum >= lanes
    l_new = Mux(c2, l_sum - lanes, l_sum)
    q_new = a.q + dq + c2
    return q_new, l_new, s_new

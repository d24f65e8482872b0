"""Power-of-two shifter: one signed basis entry times ``+-2**k``, exactly.

A coefficient term ``+-2**e`` with ``e`` in ``[exp_min, exp_max]`` applied to a basis
entry ``b`` gives ``+-b * 2**e = +-(b << (e - exp_min)) * 2**exp_min``.  The hardware works
at the fixed scale ``2**exp_min``, so a term is a left shift by the offset
``k = e - exp_min`` (``0 ... max_shift``) and an optional negation: no rounding, no
multiplier.  ``shifted_bits = basis_bits + max_shift + 1`` holds every result, including
``-(basis_min << max_shift)``.

The cheap form the basis array uses is `ones_term`: the sign is applied as a one's
complement (``~(b << k) = -(b << k) - 1``) folded into the first 2:1 mux level of a
logarithmic shifter, the zero code gates the last level, and the missing ``+1`` is a carry
that `carry_level` injects into the adder tree (one per adder, for free).  A term then needs
``basis_bits + max_shift`` bits and one LUT4 per bit and shift level, with no negation.
`Pow2Shift` is the exact term on its own (shift, then conditional negation);
`Pow2Shifter` wraps it in a registered stream stage.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import SDConfig

__all__ = ["Pow2Shift", "Pow2Shifter", "ones_term", "ones_flip", "log_shift",
           "shift_levels", "shift_level", "level_reach", "carry_level", "carry_levels",
           "carry_sum", "shift_input_layout", "shift_output_layout"]


def _check_config(config) -> SDConfig:
    if not isinstance(config, SDConfig):
        raise TypeError(f"config must be an SDConfig, got {type(config).__name__}: {config!r}")
    return config


def shift_levels(max_shift: int) -> list[int]:
    """Shift-code bits a logarithmic shifter applies: ``b`` with ``2**b <= max_shift``."""
    return [b for b in range(max(1, max_shift).bit_length()) if (1 << b) <= max_shift]


def shift_level(value, bit, fill, b: int, reach: int, base_width: int):
    """One mux level of `log_shift`: ``bit ? (value << 2**b, low bits fill) : value``.

    ``reach`` is the largest shift possible after this level; the result is signed
    ``base_width + reach`` bits (``base_width``: the width of the unshifted value).
    """
    width = base_width + reach
    v = value.as_signed()
    moved = Cat(fill.replicate(1 << b), v)[:width].as_signed()
    return Mux(bit, moved, v)[:width].as_signed()


def level_reach(max_shift: int) -> list[int]:
    """Largest shift possible after each level of `shift_levels`."""
    out, reach = [], 0
    for b in shift_levels(max_shift):
        reach = min(max_shift, reach + (1 << b))
        out.append(reach)
    return out


def log_shift(value, shift, fill, max_shift: int):
    """``value << shift`` with the vacated low bits set to ``fill``: one 2:1 mux level per
    shift bit, each level only as wide as the shifts reachable so far.

    ``value`` is signed and the result is sign-extended to ``len(value) + max_shift``
    bits.  Codes above ``max_shift`` are invalid; their result is unspecified.
    """
    v = value.as_signed()
    for b, reach in zip(shift_levels(max_shift), level_reach(max_shift)):
        v = shift_level(v, shift[b], fill, b, reach, len(value))
    return v


def ones_flip(value, carry):
    """First step of `ones_term`: ``value`` inverted where ``carry`` (a negative term)."""
    return (value.as_signed() ^ carry.replicate(len(value)).as_signed()).as_signed()


def ones_term(value, sign, shift, enable, max_shift: int):
    """One's-complement term and its carry: ``term + carry == +-value << shift`` (or 0).

    Returns ``(term, carry)``: ``term`` is ``enable ? (sign ? ~(value << shift) :
    value << shift) : 0``, signed ``len(value) + max_shift`` bits (``~(b << k)`` is
    ``(~b) << k`` with ones shifted in, so the inversion rides on the first mux level);
    ``carry = sign & enable`` is the ``+1`` that completes the negation.  Codes above
    ``max_shift`` are invalid; their result is unspecified.  The basis array builds the
    same steps (`ones_flip`, `shift_level`, the gate) with a register after each level.
    """
    carry = sign & enable
    shifted = log_shift(ones_flip(value, carry), shift, carry, max_shift)
    # Gating after the shifter lets the last mux level (a LUT4 with a spare input) take
    # the enable, instead of one more LUT per bit in front.
    return Mux(enable, shifted, 0)[:len(value) + max_shift].as_signed(), carry


def carry_level(values, carries):
    """One level of an adder tree that also adds 1-bit ``carries``.

    Returns ``(next_values, carries_left)`` with the same total.  Values are added in
    pairs, every adder absorbing one carry for free: ``(2a + c) + (2b + c) =
    2(a + b + c)``, so the sum is the result without its low bit (one extra bit per
    operand).  An odd value out takes a carry too (an incrementer beside the adders)
    when more carries are left than adders to come, so a tree of ``n`` values absorbs
    ``n`` carries unless ``n`` is a power of two.
    """
    values, carries = list(values), list(carries)
    nxt = []
    for a, b in zip(values[0::2], values[1::2]):
        if carries:
            c = carries.pop(0)
            nxt.append((Cat(c, a).as_signed() + Cat(c, b).as_signed())[1:].as_signed())
        else:
            nxt.append(a + b)
    if len(values) % 2:
        odd = values[-1]
        adders_to_come = len(nxt)           # the next levels join len(nxt) + 1 values
        nxt.append(odd + carries.pop(0) if len(carries) > adders_to_come else odd)
    return nxt, carries


def carry_levels(n_values: int, n_carries: int) -> int:
    """Levels (one adder or incrementer deep each) `carry_sum` needs: `carry_level`
    levels until one value is left, plus one increment level for leftover carries."""
    levels = 0
    while n_values > 1:
        pairs, odd = divmod(n_values, 2)
        n_carries -= min(pairs, n_carries)
        if odd and n_carries > pairs:
            n_carries -= 1
        n_values = pairs + odd
        levels += 1
    return levels + (1 if n_carries else 0)


def carry_sum(values, carries):
    """``sum(values) + sum(carries)`` for 1-bit ``carries``: `carry_level` until one value
    is left, then any leftover carries added (`carry_levels` levels in all)."""
    values, carries = list(values), list(carries)
    if not values:
        raise ValueError("carry_sum needs at least one value")
    while len(values) > 1:
        values, carries = carry_level(values, carries)
    total = values[0]
    for c in carries:
        total = total + c
    return total


def shift_input_layout(config: SDConfig) -> data.StructLayout:
    """Payload of `Pow2Shifter.i`: the operands of one shift."""
    _check_config(config)
    return data.StructLayout({
        "value": signed(config.basis_bits),
        "sign": 1,
        "shift": config.shift_code_bits,
        "enable": 1,
    })


def shift_output_layout(config: SDConfig) -> data.StructLayout:
    """Payload of `Pow2Shifter.o`: the shifted term."""
    _check_config(config)
    return data.StructLayout({"result": signed(config.shifted_bits)})


class Pow2Shift(wiring.Component):
    """Combinational ``result = enable ? (-1)**sign * (value << shift) : 0``.

    Parameters
    ----------
    config : SDConfig
        Supplies ``basis_bits``, ``shift_code_bits`` and ``shifted_bits``.

    Attributes
    ----------
    value : In(signed(basis_bits))
        Basis entry.
    sign : In(1)
        1 negates the result.
    shift : In(shift_code_bits)
        Exponent offset ``e - exp_min``; valid range ``0 ... config.max_shift``.  Larger
        codes are invalid (the decoder flags them); the result is then unspecified.
    enable : In(1)
        0 for a zero coefficient term: the result is 0 whatever the other inputs.
    result : Out(signed(shifted_bits))
        Exact result.

    Notes
    -----
    Purely combinational (latency 0): a logarithmic shifter and a conditional negation.
    """

    def __init__(self, config: SDConfig):
        self.config = _check_config(config)
        super().__init__({
            "value": In(signed(config.basis_bits)),
            "sign": In(1),
            "shift": In(config.shift_code_bits),
            "enable": In(1),
            "result": Out(signed(config.shifted_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        # A lone exact term: shift, then negate.  (Inside the basis array the negation
        # is deferred to the adder tree, see `ones_term`; here there is no tree, and an
        # increment after `ones_term` would cost as much as the negation.)
        shifted = log_shift(self.value, self.shift, Const(0, 1), self.config.max_shift)
        # shifted_bits has one bit more than `shifted`: -(basis_min << max_shift) fits.
        m.d.comb += self.result.eq(Mux(self.enable, Mux(self.sign, -shifted, shifted), 0))
        return m


class Pow2Shifter(wiring.Component):
    """Registered stream stage around `Pow2Shift`.

    Parameters
    ----------
    config : SDConfig
        Hardware parameters; see `shift_input_layout` / `shift_output_layout`.

    Attributes
    ----------
    i : In(stream.Signature(shift_input_layout(config)))
        Operands: ``value``, ``sign``, ``shift``, ``enable``.
    o : Out(stream.Signature(shift_output_layout(config)))
        ``result``, registered.

    Notes
    -----
    Latency 1 cycle (an operand accepted on clock edge ``n`` is presented on ``o`` from
    edge ``n`` on, i.e. one cycle after it was offered with ``o.ready`` high), throughput
    one transfer per cycle.  ``i.ready = ~o.valid | o.ready``: the stage takes a new
    operand whenever its output register is empty or being emptied, so ``i.ready``
    depends combinationally on ``o.ready``.  ``o.valid`` is never dropped before
    ``o.ready``.
    """

    LATENCY = 1

    def __init__(self, config: SDConfig):
        self.config = _check_config(config)
        super().__init__({
            "i": In(stream.Signature(shift_input_layout(config))),
            "o": Out(stream.Signature(shift_output_layout(config))),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = Pow2Shift(self.config)
        m.d.comb += [
            core.value.eq(self.i.payload.value),
            core.sign.eq(self.i.payload.sign),
            core.shift.eq(self.i.payload.shift),
            core.enable.eq(self.i.payload.enable),
            self.i.ready.eq(~self.o.valid | self.o.ready),
        ]
        with m.If(self.i.ready):
            m.d.sync += self.o.valid.eq(self.i.valid)
            with m.If(self.i.valid):
                m.d.sync += self.o.payload.result.eq(core.result)
        return m

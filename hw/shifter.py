"""Power-of-two shifter: one signed basis entry times ``+-2**k``, exactly.

A coefficient term ``+-2**e`` with ``e`` in ``[exp_min, exp_max]`` applied to a basis
entry ``b`` gives ``+-b * 2**e = +-(b << (e - exp_min)) * 2**exp_min``.  The hardware works
at the fixed scale ``2**exp_min``, so a term is a left shift by the offset
``k = e - exp_min`` (``0 ... max_shift``) and an optional negation: no rounding, no
multiplier.  ``shifted_bits = basis_bits + max_shift + 1`` holds every result, including
``-(basis_min << max_shift)``.

`Pow2Shift` is the combinational core the basis array instantiates once per
(lane, basis row, column, term); `Pow2Shifter` wraps it in a registered stream stage.
"""

from __future__ import annotations

from amaranth import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import SDConfig

__all__ = ["Pow2Shift", "Pow2Shifter", "shift_input_layout", "shift_output_layout"]


def _check_config(config) -> SDConfig:
    if not isinstance(config, SDConfig):
        raise TypeError(f"config must be an SDConfig, got {type(config).__name__}: {config!r}")
    return config


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
        codes are invalid (the decoder flags them); the result is then
        ``value << shift`` truncated to ``shifted_bits``.
    enable : In(1)
        0 for a zero coefficient term: the result is 0 whatever the other inputs.
    result : Out(signed(shifted_bits))
        Exact result.

    Notes
    -----
    Purely combinational (latency 0).  Cost: a barrel shifter and a conditional negation.
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
        # Sized so that value << max_shift is exact; the negation of its most negative
        # value still fits because shifted_bits has one bit more than the magnitude.
        shifted = Signal(signed(self.config.shifted_bits))
        m.d.comb += shifted.eq(self.value << self.shift)
        with m.If(~self.enable):
            m.d.comb += self.result.eq(0)
        with m.Elif(self.sign):
            m.d.comb += self.result.eq(-shifted)
        with m.Else():
            m.d.comb += self.result.eq(shifted)
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

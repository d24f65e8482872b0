"""8N1 UART receiver and transmitter with byte streams (board host link).

Both run from the system clock with an integer divisor ``clocks_per_bit = clk_hz // baud``
(the rate error of the rounding is reported by `divisor` and must stay under 2 %).
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UartRx", "UartTx", "divisor"]


def divisor(clk_hz: float, baud: int) -> int:
    """Clock cycles per UART bit; raises ValueError when the rate error exceeds 2 %."""
    if clk_hz <= 0 or baud <= 0:
        raise ValueError(f"clk_hz and baud must be > 0, got clk_hz={clk_hz!r}, baud={baud!r}")
    div = round(clk_hz / baud)
    if div < 4:
        raise ValueError(f"UART: {clk_hz:g} Hz is too slow for {baud} baud "
                         f"({clk_hz / baud:.2f} clocks per bit, need >= 4)")
    error = abs(clk_hz / div - baud) / baud
    if error > 0.02:
        raise ValueError(f"UART: {baud} baud from {clk_hz:g} Hz has a {error:.1%} rate error "
                         f"(divisor {div}); choose a baud rate closer to clk_hz / n")
    return div


def _check_div(clocks_per_bit) -> int:
    if isinstance(clocks_per_bit, bool) or not isinstance(clocks_per_bit, int):
        raise TypeError(f"clocks_per_bit must be an int, got {clocks_per_bit!r}")
    if clocks_per_bit < 4:
        raise ValueError(f"clocks_per_bit must be >= 4, got {clocks_per_bit}")
    return clocks_per_bit


class UartRx(wiring.Component):
    """UART receiver, 8 data bits, no parity, 1 stop bit.

    Parameters
    ----------
    clocks_per_bit : int
        System clock cycles per bit (>= 4).

    Attributes
    ----------
    rx : In(1)
        Serial input (idle high); synchronised internally.
    bytes : Out(stream.Signature(8))
        Received bytes.  A byte is held until taken; a byte that completes while the
        previous one is still held is dropped and sets ``overrun``.
    overrun : Out(1)
        Sticky: a byte was lost.
    framing_error : Out(1)
        Sticky: a stop bit was 0 (the byte is dropped).

    Notes
    -----
    Samples each bit in its middle: a byte is available ``9.5 * clocks_per_bit + 3``
    cycles after its start bit's falling edge.
    """

    def __init__(self, clocks_per_bit: int):
        self.clocks_per_bit = _check_div(clocks_per_bit)
        super().__init__({
            "rx": In(1, init=1),
            "bytes": Out(stream.Signature(8)),
            "overrun": Out(1),
            "framing_error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        div = self.clocks_per_bit
        rx = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, rx, init=1)
        timer = Signal(range(div))
        bits = Signal(4)
        shreg = Signal(8)

        with m.If(self.bytes.ready):
            m.d.sync += self.bytes.valid.eq(0)
        with m.If(timer != 0):
            m.d.sync += timer.eq(timer - 1)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += timer.eq(div // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    with m.If(rx):          # a glitch, not a start bit
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [timer.eq(div - 1), bits.eq(0)]
                        m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [shreg.eq(Cat(shreg[1:], rx)),
                                 bits.eq(bits + 1), timer.eq(div - 1)]
                    with m.If(bits == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(~rx):
                        m.d.sync += self.framing_error.eq(1)
                    with m.Elif(self.bytes.valid & ~self.bytes.ready):
                        m.d.sync += self.overrun.eq(1)
                    with m.Else():
                        m.d.sync += [self.bytes.payload.eq(shreg), self.bytes.valid.eq(1)]
                    m.next = "IDLE"
        return m


class UartTx(wiring.Component):
    """UART transmitter, 8 data bits, no parity, 1 stop bit.

    Parameters
    ----------
    clocks_per_bit : int
        System clock cycles per bit (>= 4).

    Attributes
    ----------
    bytes : In(stream.Signature(8))
        Bytes to send; one is taken when the transmitter is idle.
    tx : Out(1)
        Serial output (idle high).
    """

    def __init__(self, clocks_per_bit: int):
        self.clocks_per_bit = _check_div(clocks_per_bit)
        super().__init__({
            "bytes": In(stream.Signature(8)),
            "tx": Out(1, init=1),
        })

    def elaborate(self, platform):
        m = Module()
        div = self.clocks_per_bit
        timer = Signal(range(div))
        # start bit, 8 data bits, stop bit, shifted out LSB first
        frame = Signal(10, init=0x3FF)
        left = Signal(range(11))
        m.d.comb += [self.tx.eq(frame[0]), self.bytes.ready.eq(left == 0)]
        with m.If(self.bytes.valid & self.bytes.ready):
            m.d.sync += [frame.eq(1 << 9 | self.bytes.payload << 1), left.eq(10),
                         timer.eq(div - 1)]
        with m.Elif(left != 0):
            with m.If(timer == 0):
                m.d.sync += [frame.eq(1 << 9 | frame >> 1), left.eq(left - 1),
                             timer.eq(div - 1)]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
        return m

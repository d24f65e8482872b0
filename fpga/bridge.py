"""UART command bridge to the accelerator's AXI4-Lite and AXI4-Stream host interface.

A board has a serial port, the accelerator has an AXI4-Lite register block and
AXI4-Stream ports.  `UartAxiBridge` turns framed commands from the host into AXI
transactions, so the whole accelerator is usable through two pins.  The byte protocol
(all multi-byte fields little endian; ``fpga.protocol`` builds and parses it on the host):

=====  ==================================  ==============================================
cmd    request bytes after the command     reply
=====  ==================================  ==============================================
0x01   addr[4] data[4]                     ``0xA0 | bresp``            (register write)
0x02   addr[4]                             data[4], ``0xA0 | rresp``   (register read)
0x03   count[2] user[1], count x word      ``0xA0`` after the last word (stream in; the
       (``in_bytes`` each)                 last word carries ``tlast``, ``user`` drives
                                           ``tuser``)
0x04   count[2]                            count x (word[``out_bytes``], flags[1]);
                                           flags bit 0 = ``tlast``     (stream out)
0x05   --                                  ``'S' 'D' 0x01 in_bytes out_bytes``   (info)
other  --                                  ``0xEE``
=====  ==================================  ==============================================

A command whose bytes stop arriving for ``timeout_bytes`` byte times is dropped with a
``0xEE`` reply; a byte received while a stream-out command waits for data aborts it with
``0xEE``.  Port names follow the AXI conventions vendor tools recognise
(``m_axil_awaddr``, ``m_axis_tdata``, ...).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from fpga.uart import UartRx, UartTx, _check_div

__all__ = ["UartAxiBridge", "ACK", "NAK", "CMD", "INFO_MAGIC", "PROTOCOL_VERSION"]

ACK = 0xA0
NAK = 0xEE
CMD = {"write": 0x01, "read": 0x02, "stream_in": 0x03, "stream_out": 0x04, "info": 0x05}
INFO_MAGIC = b"SD"
PROTOCOL_VERSION = 1


def _bytes(bits: int) -> int:
    return -(-bits // 8)


class UartAxiBridge(wiring.Component):
    """UART -> AXI4-Lite master + AXI4-Stream master/slave command bridge.

    Parameters
    ----------
    clocks_per_bit : int
        UART divisor (see `fpga.uart.divisor`).
    addr_width : int
        AXI4-Lite address width (data is 32 bits).
    in_width, out_width : int
        ``tdata`` widths of the stream to the accelerator (``m_axis``) and from it
        (``s_axis``); words travel as ``ceil(width / 8)`` bytes.
    user_width : int
        ``m_axis_tuser`` width (0: no ``tuser`` port), at most 8.
    timeout_bytes : int
        Inter-byte timeout of a command, in byte times.

    Attributes
    ----------
    rx, tx : In(1), Out(1)
        Serial lines.
    m_axil_* : AXI4-Lite master (aw, w, b, ar, r channels).
    m_axis_* : AXI4-Stream master (``tdata``, ``tlast``, ``tvalid``, ``tready``, ``tuser``).
    s_axis_* : AXI4-Stream slave (``tdata``, ``tlast``, ``tvalid``, ``tready``).
    error : Out(1)
        Sticky UART overrun or framing error (for an LED).
    """

    def __init__(self, clocks_per_bit: int, *, addr_width: int = 32, in_width: int = 32,
                 out_width: int = 32, user_width: int = 0, timeout_bytes: int = 64):
        self.clocks_per_bit = _check_div(clocks_per_bit)
        for name, value, lo, hi in (("addr_width", addr_width, 1, 32),
                                    ("in_width", in_width, 1, 1024),
                                    ("out_width", out_width, 1, 1024),
                                    ("user_width", user_width, 0, 8),
                                    ("timeout_bytes", timeout_bytes, 2, 1 << 16)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {value!r}")
        self.addr_width, self.in_width, self.out_width = addr_width, in_width, out_width
        self.user_width, self.timeout_bytes = user_width, timeout_bytes
        self.in_bytes, self.out_bytes = _bytes(in_width), _bytes(out_width)
        members = {
            "rx": In(1, init=1), "tx": Out(1, init=1), "error": Out(1),
            "m_axil_awaddr": Out(addr_width), "m_axil_awprot": Out(3),
            "m_axil_awvalid": Out(1), "m_axil_awready": In(1),
            "m_axil_wdata": Out(32), "m_axil_wstrb": Out(4),
            "m_axil_wvalid": Out(1), "m_axil_wready": In(1),
            "m_axil_bresp": In(2), "m_axil_bvalid": In(1), "m_axil_bready": Out(1),
            "m_axil_araddr": Out(addr_width), "m_axil_arprot": Out(3),
            "m_axil_arvalid": Out(1), "m_axil_arready": In(1),
            "m_axil_rdata": In(32), "m_axil_rresp": In(2),
            "m_axil_rvalid": In(1), "m_axil_rready": Out(1),
            "m_axis_tdata": Out(in_width), "m_axis_tlast": Out(1),
            "m_axis_tvalid": Out(1), "m_axis_tready": In(1),
            "s_axis_tdata": In(out_width), "s_axis_tlast": In(1),
            "s_axis_tvalid": In(1), "s_axis_tready": Out(1),
        }
        if user_width:
            members["m_axis_tuser"] = Out(user_width)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.urx = urx = UartRx(self.clocks_per_bit)
        m.submodules.utx = utx = UartTx(self.clocks_per_bit)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx),
                     self.error.eq(urx.overrun | urx.framing_error)]

        # Receive buffer: bytes shift in from the top, so after a field of n bytes it
        # sits in the top n bytes (no byte-position decoder needed).
        rb = 8 * max(8, self.in_bytes)
        rxbuf = Signal(rb)
        tb = 8 * max(5, self.out_bytes + 1)
        txbuf = Signal(tb)
        txleft = Signal(range(tb // 8 + 1))
        need = Signal(range(rb // 8 + 1))
        cmd = Signal(8)
        remaining = Signal(16)
        user = Signal(8)
        aw_done = Signal()
        w_done = Signal()
        timeout = self.timeout_bytes * 10 * self.clocks_per_bit
        idle = Signal(range(timeout + 1))

        byte = urx.bytes.payload
        take = urx.bytes.valid & urx.bytes.ready

        def top(nbytes):
            return rxbuf[rb - 8 * nbytes:]

        def send(value, nbytes):
            return [txbuf.eq(value), txleft.eq(nbytes)]

        m.d.comb += [
            self.m_axil_awaddr.eq(top(8)[:self.addr_width]),
            self.m_axil_wdata.eq(top(4)[:32]),
            self.m_axil_wstrb.eq(0xF),
            self.m_axil_araddr.eq(top(4)[:self.addr_width]),
            self.m_axis_tdata.eq(top(self.in_bytes)[:self.in_width]),
            self.m_axis_tlast.eq(remaining == 1),
            utx.bytes.payload.eq(txbuf[:8]),
            utx.bytes.valid.eq(txleft != 0),
        ]
        if self.user_width:
            m.d.comb += self.m_axis_tuser.eq(user[:self.user_width])
        with m.If(take):
            m.d.sync += rxbuf.eq(Cat(rxbuf[8:], byte))

        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += urx.bytes.ready.eq(1)
                with m.If(take):
                    m.d.sync += [cmd.eq(byte), remaining.eq(0)]
                    with m.Switch(byte):
                        with m.Case(CMD["write"]):
                            m.d.sync += need.eq(8)
                            m.next = "RECEIVE"
                        with m.Case(CMD["read"]):
                            m.d.sync += need.eq(4)
                            m.next = "RECEIVE"
                        with m.Case(CMD["stream_in"]):
                            m.d.sync += need.eq(3)
                            m.next = "RECEIVE"
                        with m.Case(CMD["stream_out"]):
                            m.d.sync += need.eq(2)
                            m.next = "RECEIVE"
                        with m.Case(CMD["info"]):
                            info = Cat(Const(INFO_MAGIC[0], 8), Const(INFO_MAGIC[1], 8),
                                       Const(PROTOCOL_VERSION, 8), Const(self.in_bytes, 8),
                                       Const(self.out_bytes, 8))
                            m.d.sync += send(info, 5)
                            m.next = "SEND"
                        with m.Default():
                            m.d.sync += send(NAK, 1)
                            m.next = "SEND"
            with m.State("RECEIVE"):
                # Collects `need` bytes of the current field, then dispatches on `cmd`.
                m.d.comb += urx.bytes.ready.eq(1)
                with m.If(take):
                    m.d.sync += need.eq(need - 1)
                    with m.If(need == 1):
                        m.next = "DISPATCH"
                with m.Elif(idle == timeout):
                    m.d.sync += [send(NAK, 1), remaining.eq(0), cmd.eq(0)]
                    m.next = "SEND"
            with m.State("DISPATCH"):
                with m.Switch(cmd):
                    with m.Case(CMD["write"]):
                        m.d.sync += [aw_done.eq(0), w_done.eq(0)]
                        m.next = "WRITE"
                    with m.Case(CMD["read"]):
                        m.next = "READ_ADDR"
                    with m.Case(CMD["stream_in"]):
                        # Header: count[2] then user[1]; words follow.
                        with m.If(remaining == 0):
                            count = top(3)[:16]
                            m.d.sync += [remaining.eq(count), user.eq(top(1))]
                            with m.If(count == 0):
                                m.d.sync += send(ACK, 1)
                                m.next = "SEND"
                            with m.Else():
                                m.d.sync += need.eq(self.in_bytes)
                                m.next = "RECEIVE"
                        with m.Else():
                            m.next = "PUSH"
                    with m.Case(CMD["stream_out"]):
                        count = top(2)[:16]
                        m.d.sync += remaining.eq(count)
                        with m.If(count == 0):
                            m.d.sync += send(ACK, 1)
                            m.next = "SEND"
                        with m.Else():
                            m.next = "PULL"
            with m.State("WRITE"):
                m.d.comb += [self.m_axil_awvalid.eq(~aw_done), self.m_axil_wvalid.eq(~w_done)]
                aw = aw_done | self.m_axil_awready
                w = w_done | self.m_axil_wready
                m.d.sync += [aw_done.eq(aw), w_done.eq(w)]
                with m.If(aw & w):
                    m.next = "WRITE_RESP"
            with m.State("WRITE_RESP"):
                m.d.comb += self.m_axil_bready.eq(1)
                with m.If(self.m_axil_bvalid):
                    m.d.sync += send(ACK | self.m_axil_bresp, 1)
                    m.next = "SEND"
            with m.State("READ_ADDR"):
                m.d.comb += self.m_axil_arvalid.eq(1)
                with m.If(self.m_axil_arready):
                    m.next = "READ_DATA"
            with m.State("READ_DATA"):
                m.d.comb += self.m_axil_rready.eq(1)
                with m.If(self.m_axil_rvalid):
                    m.d.sync += send(Cat(self.m_axil_rdata, ACK | self.m_axil_rresp), 5)
                    m.next = "SEND"
            with m.State("PUSH"):
                m.d.comb += self.m_axis_tvalid.eq(1)
                with m.If(self.m_axis_tready):
                    m.d.sync += remaining.eq(remaining - 1)
                    with m.If(remaining == 1):
                        m.d.sync += send(ACK, 1)
                        m.next = "SEND"
                    with m.Else():
                        m.d.sync += need.eq(self.in_bytes)
                        m.next = "RECEIVE"
            with m.State("PULL"):
                m.d.comb += [self.s_axis_tready.eq(1), urx.bytes.ready.eq(1)]
                with m.If(take):
                    m.d.comb += self.s_axis_tready.eq(0)
                    m.d.sync += [send(NAK, 1), remaining.eq(0)]
                    m.next = "SEND"
                with m.Elif(self.s_axis_tvalid):
                    flags = Cat(self.s_axis_tlast, Const(0, 7))
                    m.d.sync += [send(Cat(self.s_axis_tdata, Const(0, 8 * self.out_bytes - self.out_width), flags),
                                      self.out_bytes + 1),
                                 remaining.eq(remaining - 1)]
                    m.next = "SEND"
            with m.State("SEND"):
                with m.If(utx.bytes.ready & (txleft != 0)):
                    m.d.sync += [txbuf.eq(txbuf >> 8), txleft.eq(txleft - 1)]
                    with m.If(txleft == 1):
                        with m.If((cmd == CMD["stream_out"]) & (remaining != 0)):
                            m.next = "PULL"
                        with m.Else():
                            m.next = "IDLE"

        # The inter-byte timeout runs only while a command's bytes are being received.
        with m.If(take | ~fsm.ongoing("RECEIVE")):
            m.d.sync += idle.eq(0)
        with m.Elif(idle != timeout):
            m.d.sync += idle.eq(idle + 1)
        return m

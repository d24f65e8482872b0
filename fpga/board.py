"""Board wrappers: the accelerator plus the UART bridge on a real board's pins.

Two boards, each with a constraint file written for it (``fpga/boards/``):

* **ULX3S** (ECP5 LFE5U-85F, also 25F/45F, CABGA381): 25 MHz clock on G2, the FT231X serial port
  (FPGA receives on M1 ``ftdi_txd``, transmits on L4 ``ftdi_rxd``), button F1 (R1) as
  reset, eight LEDs.
* **iCEBreaker** (iCE40UP5K, SG48): 12 MHz clock on pin 35, the FT2232H serial port
  (RX pin 6, TX pin 9), user button (pin 10, active low) as reset, red/green LEDs
  (active low).

`BoardTop` holds a power-on reset, the `fpga.bridge.UartAxiBridge` and the accelerator
core, connected by the AXI port names (``s_axil_*``, ``s_axis_*``, ``m_axis_*``); the core
runs from the board clock.  LEDs: heartbeat, UART error, and up to six single-bit status
outputs of the core (``busy``, ``done``, ``irq``, ``error`` when it has them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from amaranth import ClockDomain, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from fpga.bridge import UartAxiBridge
from fpga.uart import divisor

__all__ = ["Board", "BOARDS", "board", "BoardTop", "BOARD_DIR", "axi_ports"]

BOARD_DIR = Path(__file__).parent / "boards"


@dataclass(frozen=True)
class Board:
    """A development board: device, clock, pins the wrapper uses, constraint file."""

    name: str
    device: str           #: `fpga.devices` name
    clk_hz: float
    constraints: str      #: file name in ``fpga/boards``
    clk_pin: str
    rx_pin: str
    tx_pin: str
    reset_pin: str
    reset_active_low: bool
    leds: tuple[str, ...]
    leds_active_low: bool
    extra_high: tuple[str, ...] = ()   #: outputs tied high (e.g. ULX3S ESP32 GPIO0)

    @property
    def constraints_path(self) -> Path:
        return BOARD_DIR / self.constraints

    @property
    def top_name(self) -> str:
        return f"sd_board_{self.name}"


BOARDS: dict[str, Board] = {
    "ulx3s": Board("ulx3s", "ecp5-85k", 25e6, "ulx3s.lpf", "clk_25mhz", "ftdi_txd",
                   "ftdi_rxd", "btn_f1", False, ("led",), False, ("wifi_gpio0",)),
    "icebreaker": Board("icebreaker", "ice40-up5k", 12e6, "icebreaker.pcf", "clk_12mhz",
                        "rx", "tx", "btn_n", True, ("ledr_n", "ledg_n"), True),
}


def board(name: "str | Board") -> Board:
    if isinstance(name, Board):
        return name
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r}; known boards: {sorted(BOARDS)}") from None


_AXIL = ("awaddr", "awprot", "awvalid", "awready", "wdata", "wstrb", "wvalid", "wready",
         "bresp", "bvalid", "bready", "araddr", "arprot", "arvalid", "arready", "rdata",
         "rresp", "rvalid", "rready")
_AXIS = ("tdata", "tvalid", "tready", "tlast", "tuser", "tdest", "tkeep")


def _member(core, prefix: str, name: str):
    """Port ``<prefix>_<name>`` of the core, flat or as member ``name`` of ``prefix``."""
    flat = getattr(core, f"{prefix}_{name}", None)
    if flat is not None:
        return flat
    group = getattr(core, prefix, None)
    return getattr(group, name, None) if group is not None else None


def axi_ports(core) -> dict[str, dict]:
    """The core's AXI ports by interface: ``axil`` (slave), ``axis_in``, ``axis_out``."""
    found: dict[str, dict] = {}
    for key, prefixes, names in (("axil", ("s_axil", "s_axi"), _AXIL),
                                 ("axis_in", ("s_axis",), _AXIS),
                                 ("axis_out", ("m_axis",), _AXIS)):
        for prefix in prefixes:
            ports = {n: p for n in names if (p := _member(core, prefix, n)) is not None}
            if ports:
                found[key] = ports
                break
    missing = [k for k in ("axil",) if k not in found]
    if missing:
        raise ValueError(f"core {type(core).__name__} has no AXI4-Lite slave port "
                         f"(s_axil_* or s_axi_*); the board wrapper needs one")
    return found


class BoardTop(wiring.Component):
    """Board top: pins in and out, accelerator core and UART bridge inside.

    Parameters
    ----------
    board : Board or str
        Target board.
    core : wiring.Component
        The accelerator (an AXI4-Lite slave, optionally AXI4-Stream in/out).
    baud : int
        UART rate.
    por_bits : int
        The core and bridge are held in reset for ``2**por_bits`` cycles after
        configuration (and while the reset button is pressed, synchronised).
    """

    def __init__(self, board: "str | Board", core, *, baud: int = 115200, por_bits: int = 16):
        if isinstance(por_bits, bool) or not isinstance(por_bits, int) or not 1 <= por_bits <= 32:
            raise ValueError(f"por_bits must be an int in [1, 32], got {por_bits!r}")
        self.por_bits = por_bits
        self.board = b = globals()["board"](board)
        self.core = core
        self.baud = baud
        self.clocks_per_bit = divisor(b.clk_hz, baud)
        self.ports = axi_ports(core)
        members = {
            b.clk_pin: In(1),
            b.rx_pin: In(1, init=1),
            b.tx_pin: Out(1, init=1),
            b.reset_pin: In(1, init=1 if b.reset_active_low else 0),
        }
        if b.leds == ("led",):
            members["led"] = Out(8)
        else:
            for led in b.leds:
                members[led] = Out(1)
        for pin in b.extra_high:
            members[pin] = Out(1)
        super().__init__(members)

    def _bridge(self) -> UartAxiBridge:
        axil = self.ports["axil"]
        ain = self.ports.get("axis_in", {})
        aout = self.ports.get("axis_out", {})
        return UartAxiBridge(
            self.clocks_per_bit,
            addr_width=len(axil["awaddr"]),
            in_width=len(ain["tdata"]) if "tdata" in ain else 8,
            out_width=len(aout["tdata"]) if "tdata" in aout else 8,
            user_width=min(8, len(ain["tuser"] if "tuser" in ain else ain.get("tdest", Signal(0)))),
        )

    def elaborate(self, platform):
        b = self.board
        m = Module()
        m.domains.sync = sync = ClockDomain("sync")
        m.domains.por = por = ClockDomain("por", reset_less=True)
        clk = getattr(self, b.clk_pin)
        m.d.comb += [sync.clk.eq(clk), por.clk.eq(clk)]

        # Power-on reset counter and a two-flop synchronised reset button.
        count = Signal(self.por_bits)
        button = Signal(2)
        m.d.por += button.eq(button << 1 | (~getattr(self, b.reset_pin) if b.reset_active_low
                                            else getattr(self, b.reset_pin)))
        with m.If(~count.all()):
            m.d.por += count.eq(count + 1)
        m.d.comb += sync.rst.eq(~count.all() | button[1])

        m.submodules.core = core = self.core
        m.submodules.bridge = bridge = self._bridge()
        m.d.comb += [bridge.rx.eq(getattr(self, b.rx_pin)), getattr(self, b.tx_pin).eq(bridge.tx)]
        self._connect(m, bridge)

        heartbeat = Signal(25)
        m.d.sync += heartbeat.eq(heartbeat + 1)
        status = [heartbeat[-1], bridge.error]
        for name in ("busy", "done", "irq", "error"):
            sig = getattr(core, name, None)
            if isinstance(sig, Signal) and len(sig) == 1:
                status.append(sig)
        leds = [self.led[i] for i in range(8)] if b.leds == ("led",) else \
            [getattr(self, n) for n in b.leds]
        for led, value in zip(leds, status):
            m.d.comb += led.eq(~value if b.leds_active_low else value)
        for pin in b.extra_high:
            m.d.comb += getattr(self, pin).eq(1)
        return m

    def _connect(self, m: Module, bridge: UartAxiBridge) -> None:
        axil = self.ports["axil"]
        for name, port in axil.items():
            theirs = getattr(bridge, f"m_axil_{name}")
            # awready/wready/bresp/bvalid/arready/rdata/rresp/rvalid flow core -> bridge
            if name in ("awready", "wready", "bresp", "bvalid", "arready", "rdata", "rresp",
                        "rvalid"):
                m.d.comb += theirs.eq(port)
            else:
                m.d.comb += port.eq(theirs)
        ain = self.ports.get("axis_in", {})
        for name, port in ain.items():
            if name == "tready":
                m.d.comb += bridge.m_axis_tready.eq(port)
            elif name in ("tuser", "tdest"):
                m.d.comb += port.eq(bridge.m_axis_tuser)
            elif name == "tkeep":
                m.d.comb += port.eq(-1)
            else:
                m.d.comb += port.eq(getattr(bridge, f"m_axis_{name}"))
        aout = self.ports.get("axis_out", {})
        for name, port in aout.items():
            if name == "tready":
                m.d.comb += port.eq(bridge.s_axis_tready)
            elif name in ("tdata", "tvalid", "tlast"):
                m.d.comb += getattr(bridge, f"s_axis_{name}").eq(port)

"""Host side of the UART bridge protocol (see `fpga.bridge`).

`BridgeClient` talks to a board through any object with ``write(bytes)`` and
``read(n) -> bytes`` (a ``serial.Serial`` from pyserial, opened with a timeout, works)::

    import serial
    from fpga.protocol import BridgeClient
    host = BridgeClient(serial.Serial("/dev/ttyUSB0", 115200, timeout=1))
    host.info()                         # {'version': 1, 'in_bytes': ..., 'out_bytes': ...}
    host.write(0x00, 1)                 # AXI4-Lite register write
    host.read(0x04)                     # AXI4-Lite register read
    host.stream_in(words, user=0)       # AXI4-Stream words to the accelerator
    host.stream_out(16)                 # 16 (word, tlast) pairs from the accelerator

The encoders are pure functions so that a testbench can drive the same bytes.
"""

from __future__ import annotations

import struct

from fpga.bridge import ACK, CMD, INFO_MAGIC, NAK

__all__ = ["BridgeClient", "BridgeError", "encode_write", "encode_read", "encode_stream_in",
           "encode_stream_out", "encode_info", "word_bytes"]


class BridgeError(RuntimeError):
    """The bridge answered with an error (NAK, AXI error response) or not at all."""


def word_bytes(width: int) -> int:
    return -(-width // 8)


def _u32(value: int, what: str) -> bytes:
    if not 0 <= value < 1 << 32:
        raise ValueError(f"{what} must be in [0, 2**32), got {value!r}")
    return struct.pack("<I", value)


def encode_write(addr: int, data: int) -> bytes:
    return bytes([CMD["write"]]) + _u32(addr, "address") + _u32(data, "data")


def encode_read(addr: int) -> bytes:
    return bytes([CMD["read"]]) + _u32(addr, "address")


def encode_stream_in(words, width: int, user: int = 0) -> bytes:
    """Command bytes that send ``words`` (ints < 2**width) as one AXI4-Stream packet."""
    words = [int(w) for w in words]
    if not 0 < len(words) < 1 << 16:
        raise ValueError(f"a stream-in command carries 1 ... 65535 words, got {len(words)}")
    if not 0 <= user < 256:
        raise ValueError(f"user must be in [0, 256), got {user!r}")
    nb = word_bytes(width)
    out = bytearray([CMD["stream_in"]]) + struct.pack("<H", len(words)) + bytes([user])
    for i, w in enumerate(words):
        if not 0 <= w < 1 << width:
            raise ValueError(f"stream word {i} = {w:#x} does not fit {width} bits")
        out += w.to_bytes(nb, "little")
    return bytes(out)


def encode_stream_out(count: int) -> bytes:
    if not 0 < count < 1 << 16:
        raise ValueError(f"a stream-out command reads 1 ... 65535 words, got {count}")
    return bytes([CMD["stream_out"]]) + struct.pack("<H", count)


def encode_info() -> bytes:
    return bytes([CMD["info"]])


def _check_ack(byte: int, what: str) -> None:
    if byte == NAK:
        raise BridgeError(f"{what}: the bridge answered NAK (unknown command, timeout or abort)")
    if byte & 0xFC != ACK:
        raise BridgeError(f"{what}: unexpected reply byte {byte:#04x}")
    if byte & 3:
        kind = {1: "EXOKAY", 2: "SLVERR", 3: "DECERR"}[byte & 3]
        raise BridgeError(f"{what}: AXI response {kind}")


class BridgeClient:
    """Blocking client of the UART bridge over a byte port."""

    def __init__(self, port, in_width: "int | None" = None, out_width: "int | None" = None):
        self.port = port
        self.in_width, self.out_width = in_width, out_width

    def _read(self, n: int, what: str) -> bytes:
        data = self.port.read(n)
        if len(data) != n:
            raise BridgeError(f"{what}: expected {n} reply bytes, got {len(data)} "
                              f"(board not connected, wrong baud rate or bitstream?)")
        return data

    def info(self) -> dict:
        self.port.write(encode_info())
        data = self._read(5, "info")
        if data[:2] != INFO_MAGIC:
            raise BridgeError(f"info: not a SmartDeal bridge (reply {data.hex()})")
        return {"version": data[2], "in_bytes": data[3], "out_bytes": data[4]}

    def write(self, addr: int, data: int) -> None:
        self.port.write(encode_write(addr, data))
        _check_ack(self._read(1, f"write {addr:#x}")[0], f"write {addr:#x}")

    def read(self, addr: int) -> int:
        self.port.write(encode_read(addr))
        data = self._read(5, f"read {addr:#x}")
        _check_ack(data[4], f"read {addr:#x}")
        return struct.unpack("<I", data[:4])[0]

    def stream_in(self, words, user: int = 0) -> None:
        if self.in_width is None:
            raise ValueError("BridgeClient.stream_in needs in_width")
        self.port.write(encode_stream_in(words, self.in_width, user))
        _check_ack(self._read(1, "stream in")[0], "stream in")

    def stream_out(self, count: int) -> list[tuple[int, bool]]:
        if self.out_width is None:
            raise ValueError("BridgeClient.stream_out needs out_width")
        nb = word_bytes(self.out_width)
        self.port.write(encode_stream_out(count))
        out = []
        for i in range(count):
            data = self._read(nb + 1, f"stream out word {i}")
            out.append((int.from_bytes(data[:nb], "little"), bool(data[nb] & 1)))
        return out

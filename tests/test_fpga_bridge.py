# amaranth: UnusedElaboratable=no
"""UART bridge: commands in on the serial line, AXI transactions and replies out.

Amaranth simulator.  The testbench has its own UART line driver/decoder, an AXI4-Lite
register-file model, an AXI4-Stream sink and source with random stalls; expected replies
are computed from those models and the protocol table, never from the DUT.
"""

from __future__ import annotations

import random
import struct

import pytest
from amaranth.sim import Simulator

from fpga.bridge import ACK, NAK, UartAxiBridge
from fpga.protocol import (encode_info, encode_read, encode_stream_in, encode_stream_out,
                           encode_write)
from fpga.uart import divisor

DIV = 8           # clocks per UART bit
ERR_BASE = 0x100  # the register model answers SLVERR at and above this address


class BridgeTB:
    """Line driver + decoder, AXI4-Lite slave model, stream sink and source."""

    def __init__(self, dut: UartAxiBridge, seed: int = 1):
        self.dut = dut
        self.rng = random.Random(seed)
        self.regs: dict[int, int] = {}
        self.sunk: list[tuple[int, int, int]] = []     # (tdata, tlast, tuser)
        self.source: list[tuple[int, int]] = []        # (tdata, tlast) to offer
        self.reply = bytearray()

    async def send(self, ctx, data: bytes, gap: int = 0):
        for byte in data:
            for bit in [0, *((byte >> i) & 1 for i in range(8)), 1]:
                ctx.set(self.dut.rx, bit)
                await ctx.tick().repeat(DIV)
            if gap:
                await ctx.tick().repeat(gap)

    async def receive(self, ctx, n: int, limit: int = 20000):
        for _ in range(limit):
            if len(self.reply) >= n:
                out, self.reply[:] = bytes(self.reply[:n]), self.reply[n:]
                return out
            await ctx.tick()
        raise AssertionError(f"expected {n} reply bytes, got {bytes(self.reply)!r} "
                             f"within {limit} cycles")

    async def line_decoder(self, ctx):
        prev = 1
        while True:
            _, _, tx = await ctx.tick().sample(self.dut.tx)
            if prev and not tx:
                await ctx.tick().repeat(DIV // 2)
                assert ctx.get(self.dut.tx) == 0, "start bit not held"
                byte = 0
                for i in range(8):
                    await ctx.tick().repeat(DIV)
                    byte |= ctx.get(self.dut.tx) << i
                await ctx.tick().repeat(DIV)
                assert ctx.get(self.dut.tx) == 1, "stop bit is 0"
                self.reply.append(byte)
                tx = 1
            prev = tx

    async def axil_slave(self, ctx):
        d = self.dut
        aw = w = None
        while True:
            ctx.set(d.m_axil_awready, self.rng.random() < 0.5)
            ctx.set(d.m_axil_wready, self.rng.random() < 0.5)
            ctx.set(d.m_axil_arready, self.rng.random() < 0.5)
            (_, _, awv, awr, awaddr, wv, wr, wdata, wstrb, bv, br, arv, arr, araddr,
             rv, rr) = await ctx.tick().sample(
                d.m_axil_awvalid, d.m_axil_awready, d.m_axil_awaddr, d.m_axil_wvalid,
                d.m_axil_wready, d.m_axil_wdata, d.m_axil_wstrb, d.m_axil_bvalid,
                d.m_axil_bready, d.m_axil_arvalid, d.m_axil_arready, d.m_axil_araddr,
                d.m_axil_rvalid, d.m_axil_rready)
            if awv and awr:
                aw = awaddr
            if wv and wr:
                assert wstrb == 0xF
                w = wdata
            if bv and br:
                ctx.set(d.m_axil_bvalid, 0)
            if rv and rr:
                ctx.set(d.m_axil_rvalid, 0)
            if aw is not None and w is not None and not ctx.get(d.m_axil_bvalid):
                ok = aw < ERR_BASE
                if ok:
                    self.regs[aw] = w
                ctx.set(d.m_axil_bresp, 0 if ok else 2)
                ctx.set(d.m_axil_bvalid, 1)
                aw = w = None
            if arv and arr:
                ok = araddr < ERR_BASE
                ctx.set(d.m_axil_rdata, self.regs.get(araddr, 0) if ok else 0)
                ctx.set(d.m_axil_rresp, 0 if ok else 2)
                ctx.set(d.m_axil_rvalid, 1)

    async def stream_sink(self, ctx):
        d = self.dut
        while True:
            ctx.set(d.m_axis_tready, self.rng.random() < 0.6)
            _, _, v, r, data, last, user = await ctx.tick().sample(
                d.m_axis_tvalid, d.m_axis_tready, d.m_axis_tdata, d.m_axis_tlast,
                d.m_axis_tuser)
            if v and r:
                self.sunk.append((data, last, user))

    async def stream_source(self, ctx):
        d = self.dut
        while True:
            if self.source and not ctx.get(d.s_axis_tvalid) and self.rng.random() < 0.5:
                data, last = self.source[0]
                ctx.set(d.s_axis_tdata, data)
                ctx.set(d.s_axis_tlast, last)
                ctx.set(d.s_axis_tvalid, 1)
            _, _, v, r = await ctx.tick().sample(d.s_axis_tvalid, d.s_axis_tready)
            if v and r:
                self.source.pop(0)
                ctx.set(d.s_axis_tvalid, 0)


def _run(dut, tb: BridgeTB, body):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for proc in (tb.line_decoder, tb.axil_slave, tb.stream_sink, tb.stream_source):
        sim.add_testbench(proc, background=True)
    sim.add_testbench(body)
    sim.run()


def _dut():
    return UartAxiBridge(DIV, addr_width=12, in_width=20, out_width=12, user_width=3,
                         timeout_bytes=3)


def test_register_write_read_and_error_response():
    dut = _dut()
    tb = BridgeTB(dut, seed=3)

    async def body(ctx):
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(5)
        await tb.send(ctx, encode_info())
        assert await tb.receive(ctx, 5) == b"SD" + bytes([1, 3, 2])
        for addr, value in ((0x10, 0xDEADBEEF), (0x14, 0x00000001), (0x10, 0x12345678)):
            await tb.send(ctx, encode_write(addr, value))
            assert await tb.receive(ctx, 1) == bytes([ACK])
        assert tb.regs == {0x10: 0x12345678, 0x14: 1}
        await tb.send(ctx, encode_read(0x10), gap=3)
        assert await tb.receive(ctx, 5) == struct.pack("<I", 0x12345678) + bytes([ACK])
        await tb.send(ctx, encode_write(0x200, 7))
        assert await tb.receive(ctx, 1) == bytes([ACK | 2]), "SLVERR must reach the host"
        await tb.send(ctx, encode_read(0x204))
        assert await tb.receive(ctx, 5) == bytes(4) + bytes([ACK | 2])
        assert 0x200 not in tb.regs

    _run(dut, tb, body)


def test_stream_in_and_out_with_stalls():
    dut = _dut()
    tb = BridgeTB(dut, seed=5)
    words = [0xABCDE, 0x00001, 0xFFFFF, 0x12345]
    tb.source = [(0x123, 0), (0xFFF, 0), (0x800, 1)]

    async def body(ctx):
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(5)
        await tb.send(ctx, encode_stream_in(words, 20, user=5))
        assert await tb.receive(ctx, 1) == bytes([ACK])
        assert tb.sunk == [(w, int(i == len(words) - 1), 5) for i, w in enumerate(words)], \
            f"stream words/tlast/tuser differ: {tb.sunk}"
        await tb.send(ctx, encode_stream_out(3))
        got = await tb.receive(ctx, 9)
        assert got == bytes([0x23, 0x01, 0, 0xFF, 0x0F, 0, 0x00, 0x08, 1]), got.hex()
        assert tb.source == []

    _run(dut, tb, body)


def test_unknown_command_timeout_and_abort_answer_nak():
    dut = _dut()
    tb = BridgeTB(dut, seed=7)

    async def body(ctx):
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(5)
        await tb.send(ctx, bytes([0x7F]))
        assert await tb.receive(ctx, 1) == bytes([NAK])
        # A write whose bytes stop after the address: dropped after the timeout.
        await tb.send(ctx, encode_write(0x20, 0x55)[:5])
        assert await tb.receive(ctx, 1) == bytes([NAK])
        assert 0x20 not in tb.regs
        # Stream-out with no data available, aborted by the host sending a byte.
        await tb.send(ctx, encode_stream_out(1))
        await ctx.tick().repeat(50)
        await tb.send(ctx, bytes([0x00]))
        assert await tb.receive(ctx, 1) == bytes([NAK])
        # The bridge still works afterwards.
        await tb.send(ctx, encode_write(0x20, 0x55))
        assert await tb.receive(ctx, 1) == bytes([ACK])
        assert tb.regs[0x20] == 0x55

    _run(dut, tb, body)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="user_width"):
        UartAxiBridge(8, user_width=9)
    with pytest.raises(ValueError, match="clocks_per_bit"):
        UartAxiBridge(2)
    with pytest.raises(ValueError, match="rate error"):
        divisor(1_000_000, 115200)
    assert divisor(25e6, 115200) == 217
    with pytest.raises(ValueError, match="does not fit 20 bits"):
        encode_stream_in([1 << 20], 20)

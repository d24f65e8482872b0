# amaranth: UnusedElaboratable=no
"""Board wrapper: the UART bridge reaches the real accelerator's AXI4-Lite registers.

Amaranth simulation of `BoardTop` (iCEBreaker pin-out) around the `tiny` SD accelerator:
commands go in on the ``rx`` pin, replies are decoded from ``tx``.  Expected register
values come from `hw.host` constants and the configuration, not from the DUT.  The baud
rate is raised to 8 clocks per bit and the power-on reset shortened to keep it fast.
"""

from __future__ import annotations

import struct

import pytest
from amaranth.sim import Simulator

from fpga.board import BOARDS, BoardTop, axi_ports, board
from fpga.bridge import ACK
from fpga.protocol import encode_info, encode_read, encode_write
from hw.config import preset
from hw.host import ID_SD, Reg
from hw.top import SDAccelerator

DIV = 8


async def _wait(ctx, n: int):
    # plain ticks: `tick().repeat` raises DomainReset during the power-on reset
    for _ in range(n):
        await ctx.tick()


def test_uart_reaches_the_accelerator_registers():
    cfg = preset("tiny")
    dut = BoardTop("icebreaker", SDAccelerator(cfg), baud=12_000_000 // DIV, por_bits=4)
    assert dut.clocks_per_bit == DIV
    replies = bytearray()

    async def clock(ctx):
        while True:
            ctx.set(dut.clk_12mhz, 0)
            await ctx.delay(5e-9)
            ctx.set(dut.clk_12mhz, 1)
            await ctx.delay(5e-9)

    async def line_decoder(ctx):
        prev = 1
        while True:
            _, _, tx = await ctx.tick().sample(dut.tx)
            if prev and not tx:
                byte = 0
                await _wait(ctx, DIV // 2)
                for i in range(8):
                    await _wait(ctx, DIV)
                    byte |= ctx.get(dut.tx) << i
                await _wait(ctx, DIV)
                replies.append(byte)
                tx = 1
            prev = tx

    async def send(ctx, data: bytes):
        for byte in data:
            for bit in [0, *((byte >> i) & 1 for i in range(8)), 1]:
                ctx.set(dut.rx, bit)
                await _wait(ctx, DIV)

    async def receive(ctx, n: int):
        for _ in range(4000):
            if len(replies) >= n:
                out = bytes(replies[:n])
                del replies[:n]
                return out
            await ctx.tick()
        raise AssertionError(f"expected {n} reply bytes, got {bytes(replies)!r}")

    async def body(ctx):
        ctx.set(dut.rx, 1)
        ctx.set(dut.btn_n, 1)
        await _wait(ctx, 30)
        await send(ctx, encode_info())
        assert await receive(ctx, 5) == b"SD\x01\x04\x04"        # 32-bit stream words
        await send(ctx, encode_read(Reg.ID))
        assert await receive(ctx, 5) == struct.pack("<I", ID_SD) + bytes([ACK])
        await send(ctx, encode_read(Reg.PARAMS0))
        want = cfg.basis_size | cfg.lanes << 8 | cfg.act_bits << 16 | cfg.terms << 24
        assert await receive(ctx, 5) == struct.pack("<I", want) + bytes([ACK])
        await send(ctx, encode_write(Reg.WATCHDOG, 0x1234))
        assert await receive(ctx, 1) == bytes([ACK])
        await send(ctx, encode_read(Reg.WATCHDOG))
        assert await receive(ctx, 5) == struct.pack("<I", 0x1234) + bytes([ACK])
        # heartbeat LED is driven (active low); the UART error LED is off
        assert ctx.get(dut.ledg_n) == 1

    sim = Simulator(dut)
    sim.add_process(clock)
    sim.add_testbench(line_decoder, background=True)
    sim.add_testbench(body)
    sim.run()


def test_board_definitions_and_bad_input():
    for b in BOARDS.values():
        assert b.constraints_path.is_file(), b.constraints_path
        text = b.constraints_path.read_text()
        for pin in (b.clk_pin, b.rx_pin, b.tx_pin, b.reset_pin, *b.extra_high):
            assert pin in text, f"{b.name}: pin {pin} not constrained"
    with pytest.raises(ValueError, match="unknown board 'arty'"):
        board("arty")
    with pytest.raises(ValueError, match="no AXI4-Lite slave"):
        axi_ports(object())
    with pytest.raises(ValueError, match="rate error"):
        BoardTop("icebreaker", object(), baud=1_400_000)

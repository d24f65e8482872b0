"""Python host driver of the simulated accelerator, over its real AXI ports.

`AccelDriver` talks to a cocotb handle of `hw.top.AcceleratorTop` (SD or dense) the way
a processor would: AXI4-Lite register reads/writes (`cocotbext.axi.AxiLiteMaster`), memory
loads and read commands as AXI4-Stream frames (`AxiStreamSource`), read data back from
the AXI4-Stream master (`AxiStreamSink`).  Nothing touches internal signals.  While the
accelerator runs a network, the driver waits on the ``irq`` pin, so no Python runs per
clock cycle (the clock is cocotb's GPI clock).

Typical use inside a cocotb test::

    drv = AccelDriver(dut, config)
    await drv.reset()
    await drv.load_weights(images)             # {"ce": [...], "basis": [...], "quant": [...]}
    await drv.load_program(program)            # hw.program.Program
    y = await drv.infer(x_int)                 # (B, *in_shape) -> (B, *out_shape)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, First, RisingEdge, Timer
from cocotbext.axi import (AxiLiteBus, AxiLiteMaster, AxiStreamBus, AxiStreamFrame,
                           AxiStreamSink, AxiStreamSource)

from hw.config import SDConfig
from hw.descriptor import DESC_SLOT_WORDS
from hw.host import (CTRL_ABORT, CTRL_CLEAR_COUNTERS, CTRL_CLEAR_STREAM_ERROR, CTRL_START,
                     DESC_BASE, ID_DENSE, ID_SD, LAYER_CYCLES_BASE, Counter, MemId, Reg,
                     StreamCmd, beats_per_word, header_word)
from hw.program import ActLayout, Program
from hw.top import memory_map

__all__ = ["AccelDriver", "RunStatus", "AccelError"]

PERIOD_NS = 10


class AccelError(RuntimeError):
    """The accelerator ended a run with STATUS.ERROR (or did not finish)."""

    def __init__(self, message: str, status: "RunStatus | None" = None):
        super().__init__(message)
        self.status = status


@dataclass
class RunStatus:
    """STATUS and counters after a run."""

    busy: bool
    done: bool
    error: bool
    stream_error: bool
    error_code: int
    error_layer: int
    layer: int
    cycles: int

    @classmethod
    def from_word(cls, word: int, cycles: int) -> "RunStatus":
        return cls(busy=bool(word & 1), done=bool(word & 2), error=bool(word & 4),
                   stream_error=bool(word & 8), error_code=(word >> 8) & 0xFF,
                   error_layer=(word >> 16) & 0xFF, layer=(word >> 24) & 0xFF,
                   cycles=cycles)


def _words_to_bytes(words, width: int) -> bytes:
    nb = beats_per_word(width)
    out = bytearray()
    for w in words:
        w = int(w)
        if not 0 <= w < 1 << width:
            raise ValueError(f"word {w:#x} does not fit {width} bits")
        out += w.to_bytes(4 * nb, "little")
    return bytes(out)


class AccelDriver:
    """Host driver of one simulated accelerator.

    Parameters
    ----------
    dut : cocotb handle of the top module
    config : SDConfig
    kind : {"sd", "dense"}
    free_run : bool or None
        Let the core run on the wrapper's internal clock while waiting for ``irq``
        (`golden.rtl_runner.accelerator_verilog` with ``self_clocked``); default: when
        the top has a ``free_run`` input.
    """

    def __init__(self, dut, config: SDConfig, kind: str = "sd", free_run: bool | None = None):
        self.dut, self.config, self.kind = dut, config, kind
        self.free_run = hasattr(dut, "free_run") if free_run is None else free_run
        if self.free_run:
            dut.free_run.value = 0
        self._clock = Clock(dut.clk, PERIOD_NS, unit="ns")
        self._clock.start()
        for name in ("cocotb.sd_top", "cocotb"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst)
        self.source = AxiStreamSource(AxiStreamBus.from_prefix(dut, "s_axis"), dut.clk,
                                      dut.rst)
        self.sink = AxiStreamSink(AxiStreamBus.from_prefix(dut, "m_axis"), dut.clk, dut.rst)
        for ext in (self.axil.write_if, self.axil.read_if, self.source, self.sink):
            ext.log.setLevel(logging.WARNING)
        self.mem = memory_map(config, kind)
        self.program: Program | None = None
        #: wall and CPU seconds and cycles spent in `wait_done` (autonomous runs)
        self.run_wall_s = 0.0
        self.run_cpu_s = 0.0
        self.run_cycles = 0

    # ----------------------------------------------------------------- basics
    async def reset(self, cycles: int = 4) -> None:
        """Synchronous reset of the whole accelerator (memories keep their contents)."""
        self.dut.rst.value = 1
        for _ in range(cycles):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0
        for _ in range(2):
            await RisingEdge(self.dut.clk)

    async def read_reg(self, addr: int) -> int:
        return int(await self.axil.read_dword(int(addr)))

    async def write_reg(self, addr: int, value: int) -> None:
        await self.axil.write_dword(int(addr), int(value) & 0xFFFF_FFFF)

    async def check_identity(self) -> None:
        """Check the ID and CONFIG_ID registers against ``kind`` and the configuration."""
        ident = await self.read_reg(Reg.ID)
        want = ID_SD if self.kind == "sd" else ID_DENSE
        if ident != want:
            raise AccelError(f"ID register reads {ident:#010x}, expected {want:#010x}")
        cid = await self.read_reg(Reg.CONFIG_ID)
        if cid != int(self.config.fingerprint()[:8], 16):
            raise AccelError(f"CONFIG_ID {cid:#010x} does not match the configuration "
                             f"{self.config.fingerprint()}")

    async def status(self) -> RunStatus:
        word = await self.read_reg(Reg.STATUS)
        lo = await self.read_reg(Reg.CYCLES_LO)
        hi = await self.read_reg(Reg.CYCLES_HI)
        return RunStatus.from_word(word, lo | hi << 32)

    async def counters(self) -> dict[str, int]:
        return {c.name: await self.read_reg(Reg.COUNTERS + 4 * c) for c in Counter}

    async def layer_cycles(self, n: int) -> list[int]:
        return [await self.read_reg(LAYER_CYCLES_BASE + 4 * i) for i in range(n)]

    # ------------------------------------------------------------------ memories
    def _mem(self, name: str) -> dict:
        key = {"ce": "weights", "dense": "weights"}.get(name, name)
        if key not in self.mem:
            raise ValueError(f"the {self.kind} accelerator has no memory {name!r}; "
                             f"it has {sorted(self.mem)}")
        return self.mem[key]

    async def write_memory(self, name: str, address: int, words, chunk: int = 512) -> None:
        """Write ``words`` at ``address`` of memory ``name`` through the stream port."""
        info = self._mem(name)
        words = [int(w) for w in words]
        if address < 0 or address + len(words) > info["depth"]:
            raise ValueError(f"{name}: words [{address}, {address + len(words)}) outside "
                             f"the memory (depth {info['depth']})")
        for i in range(0, len(words), chunk):
            part = words[i:i + chunk]
            head = (header_word(StreamCmd.WRITE, info["id"], address + i).to_bytes(4, "little")
                    + len(part).to_bytes(4, "little"))
            await self.source.send(AxiStreamFrame(head + _words_to_bytes(part, info["width"])))
        await self.source.wait()

    async def read_memory(self, name: str, address: int, count: int) -> list[int]:
        """Read ``count`` words from memory ``name`` through the stream ports."""
        info = self._mem(name)
        head = (header_word(StreamCmd.READ, info["id"], address).to_bytes(4, "little")
                + int(count).to_bytes(4, "little"))
        await self.source.send(AxiStreamFrame(head))
        frame = await self.sink.recv()
        data = bytes(frame.tdata)
        nb = 4 * beats_per_word(info["width"])
        if len(data) != nb * count:
            raise AccelError(f"read of {count} {name} words returned {len(data)} bytes, "
                             f"expected {nb * count}")
        mask = (1 << info["width"]) - 1
        return [int.from_bytes(data[k * nb:(k + 1) * nb], "little") & mask
                for k in range(count)]

    async def load_weights(self, images: dict) -> None:
        """Write weight-memory images (``{"ce"|"dense": words, "basis": .., "quant": ..}``)."""
        for name, words in images.items():
            if len(words):
                await self.write_memory(name, 0, words)

    async def write_activations(self, layout: ActLayout, x) -> None:
        words = layout.pack(np.asarray(x), self.config.act_bits)
        act = self.mem["act"]
        for bank, by_addr in words.items():
            if not by_addr:
                continue
            lo = min(by_addr)
            vals = [by_addr[a] for a in range(lo, max(by_addr) + 1)]
            await self.write_memory("act", (bank << act["bank_shift"]) | lo, vals)

    async def read_activations(self, layout: ActLayout, batch: int) -> np.ndarray:
        act = self.mem["act"]
        lo, n = layout.base, layout.pitch * batch
        words = {}
        for bank in range(self.config.basis_size):
            vals = await self.read_memory("act", (bank << act["bank_shift"]) | lo, n)
            words[bank] = {lo + k: v for k, v in enumerate(vals)}
        return layout.unpack(words, batch, self.config.act_bits)

    # ------------------------------------------------------------------ programs
    async def load_program(self, program: Program) -> None:
        """Write the descriptors and N_LAYERS of ``program``."""
        if program.config != self.config:
            raise ValueError("program was compiled for a different configuration")
        for index, value in program.descriptor_words():
            await self.write_reg(DESC_BASE + 4 * index, value)
        await self.write_reg(Reg.N_LAYERS, len(program.layers))
        self.program = program

    async def start(self) -> None:
        await self.write_reg(Reg.CTRL, CTRL_START)
        # START clears DONE/ERROR in the write's handshake cycle, so irq is low by now
        # unless the run already ended (a run takes more cycles than the response).
        if int(self.dut.irq.value):
            st = await self.status()
            if st.busy or not (st.done or st.error):
                raise AccelError(f"irq still high after START: {st}", st)

    async def abort(self) -> None:
        await self.write_reg(Reg.CTRL, CTRL_ABORT)

    async def clear_stream_error(self) -> None:
        await self.write_reg(Reg.CTRL, CTRL_CLEAR_STREAM_ERROR)

    async def clear_counters(self) -> None:
        await self.write_reg(Reg.CTRL, CTRL_CLEAR_COUNTERS)

    async def wait_done(self, timeout_cycles: int = 10_000_000) -> RunStatus:
        """Wait for ``irq`` (no Python per cycle), then read STATUS.

        With ``free_run`` the testbench clock is stopped (at a low phase, every bus idle)
        and the core runs on the model's own clock until ``irq``.
        """
        dut = self.dut
        t0, c0 = time.perf_counter(), time.process_time()
        if not int(dut.irq.value):
            if self.free_run:
                await FallingEdge(dut.clk)
                self._clock.stop()
                dut.free_run.value = 1
            edge = RisingEdge(dut.irq)
            result = await First(edge, Timer(timeout_cycles * PERIOD_NS, unit="ns"))
            if self.free_run:
                dut.free_run.value = 0
                await Timer(PERIOD_NS, unit="ns")
                self._clock.start(start_high=False)
                await RisingEdge(dut.clk)
            if result is not edge:
                st = await self.status()
                raise AccelError(f"the accelerator did not finish within {timeout_cycles} "
                                 f"cycles (status {st})", st)
        self.run_wall_s += time.perf_counter() - t0
        self.run_cpu_s += time.process_time() - c0
        st = await self.status()
        self.run_cycles += st.cycles
        return st

    async def run(self, timeout_cycles: int = 10_000_000, check: bool = True) -> RunStatus:
        """START, wait for completion; raise `AccelError` on STATUS.ERROR if ``check``."""
        await self.start()
        st = await self.wait_done(timeout_cycles)
        if check and st.error:
            raise AccelError(f"run ended with error code {st.error_code:#x} in layer "
                             f"{st.error_layer}", st)
        return st

    async def infer(self, x_int, timeout_cycles: int = 10_000_000) -> np.ndarray:
        """Network outputs for a batch ``x_int`` (``(B, *input shape)``) of the program."""
        prog = self.program
        if prog is None:
            raise RuntimeError("load_program first")
        x = np.asarray(x_int)
        if x.shape[0] != prog.batch:
            raise ValueError(f"the program runs batches of {prog.batch}, got {x.shape[0]}")
        await self.write_activations(prog.input_layout, x)
        await self.run(timeout_cycles)
        return await self.read_activations(prog.output_layout, prog.batch)

"""cocotb side of ``smartdeal sim`` / ``smartdeal demo`` and of the speed benchmark.

`golden.rtl_runner` pickles a *job* (a prepared network: program, input batches, memory
images and whether to load them) and points `JOB_ENV` at it; the tests here run it on
the accelerator through its AXI ports (`tb.accel_driver.AccelDriver`) and write the
results next to the job.  They never compare against the golden model themselves — the
caller does, so that a run reports every mismatch instead of stopping at the first.

* `infer` — every batch from one START each; writes the outputs (``.npy``), per-batch
  cycles, per-layer cycles of the first batch and the event counters; a progress file
  counts finished items for the caller's progress bar.
* `speed` — autonomous runs vs a loop that drives the model from Python every cycle.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cocotb
import numpy as np
from cocotb.triggers import RisingEdge

from hw.config import SDConfig
from tb.common import load_pickled_env

JOB_ENV = "SMARTDEAL_JOB"


def _job() -> dict:
    return load_pickled_env(JOB_ENV, "golden.rtl_runner")


async def _setup(dut, job):
    from tb.accel_driver import AccelDriver
    cfg = SDConfig.from_json(job["config"])
    drv = AccelDriver(dut, cfg, job["kind"])
    await drv.reset()
    await drv.check_identity()
    net = job["network"]
    if net.get("load_weights", True):
        await drv.load_weights(net["images"])
    await drv.load_program(net["program"])
    return drv, net


@cocotb.test()
async def infer(dut):
    """Run every batch of the job's network; save outputs, cycles and counters."""
    job = _job()
    drv, net = await _setup(dut, job)
    prog = net["program"]
    outputs, cycles = [], []
    layer_cycles = None
    progress = Path(job["progress_path"])
    done = 0
    for x in net["inputs"]:
        outputs.append(await drv.infer(x))
        st = await drv.status()
        cycles.append(st.cycles)
        if layer_cycles is None:
            layer_cycles = await drv.layer_cycles(len(prog.layers))
        done += len(x)
        progress.write_text(str(min(done, net["n_items"])))   # the last batch is padded
    counters = await drv.counters()          # of the last batch
    np.save(job["output_path"], np.concatenate(outputs))
    Path(job["result_path"]).write_text(json.dumps({
        "cycles": cycles, "layer_cycles": layer_cycles, "counters": counters,
        "run_wall_s": drv.run_wall_s, "run_cpu_s": drv.run_cpu_s,
        "run_cycles": drv.run_cycles}, default=int))


@cocotb.test()
async def speed(dut):
    """Simulated cycles per second: autonomous runs vs a loop driving every cycle."""
    job = _job()
    drv, net = await _setup(dut, job)
    prog = net["program"]
    x = net["inputs"][0]
    drv.run_wall_s, drv.run_cpu_s, drv.run_cycles = 0.0, 0.0, 0
    for _ in range(job["runs"]):
        # the input region is reused by later layers (ping-pong): write it every run
        await drv.write_activations(prog.input_layout, x)
        await drv.run()
    got = await drv.read_activations(prog.output_layout, prog.batch)
    # a testbench that toggles an input and waits for the clock edge on every cycle
    n = job["loop_cycles"]
    t0, c0 = time.perf_counter(), time.process_time()
    for k in range(n):
        dut.m_axis_tready.value = k & 1
        await RisingEdge(dut.clk)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    dut.m_axis_tready.value = 1
    np.save(job["output_path"], got)
    Path(job["result_path"]).write_text(json.dumps({
        "autonomous_cycles_per_s": drv.run_cycles / drv.run_wall_s,
        "autonomous_cycles_per_cpu_s": drv.run_cycles / max(drv.run_cpu_s, 1e-9),
        "loop_cycles_per_s": n / wall, "loop_cycles_per_cpu_s": n / max(cpu, 1e-9),
        "ratio": (drv.run_cycles / drv.run_wall_s) / (n / wall),
        "cycles": drv.run_cycles, "wall_s": drv.run_wall_s, "cpu_s": drv.run_cpu_s},
        default=int))

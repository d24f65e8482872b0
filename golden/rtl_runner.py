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
           "run_accelerator", "accelerator_verilog"]


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


def accelerator_verilog(config: SDConfig, kind: str = "sd", top: str | None = None,
                        **kwargs) -> tuple[str, str]:
    """``(verilog_text, top)``: the accelerator and the ``sd_ram`` module in one file."""
    from hw.memories import SD_RAM_VERILOG
    from hw.top import AcceleratorTop
    from tb.harness import to_verilog
    top = top or f"{kind}_accel"
    text = to_verilog(AcceleratorTop(config, kind, **kwargs), top)
    return text + "\n" + SD_RAM_VERILOG, top


def accelerator_factory(kind: str = "sd", **kwargs):
    """A ``factory(config)`` for `tb.harness.run_cocotb`: Verilog text of the accelerator
    (top module ``<kind>_accel``) with the ``sd_ram`` module appended."""

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
    """Build (cached) the accelerator for ``config`` and run cocotb ``testcase`` on it."""
    from tb.harness import run_cocotb
    top = f"{kind}_accel"
    return run_cocotb(accelerator_factory(kind, **design_kwargs), config,
                      test_module=test_module, toplevel=top, name=name or top,
                      testcase=testcase, extra_env=extra_env, timeout_s=timeout_s,
                      waves=waves, verilog_sources=[_public_ports_file(top)],
                      build_args=["--no-public-flat-rw"])

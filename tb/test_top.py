"""End-to-end tests of the SD accelerator and the dense baseline under Verilator.

Each pytest function prepares a *case* on the Python side — a quantized network, its
memory images, the compiled program, input batches and the expected outputs from
``golden/reference.py`` — pickles it, and runs one of the cocotb tests below on the
Verilator model through `tb.harness.run_cocotb`.  The cocotb side drives only the AXI
ports (`tb.accel_driver.AccelDriver`) and compares every output element with the
expected value (`Scoreboard`).  One Verilator build per (design, configuration) is reused
by every test of that design.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import tempfile
from pathlib import Path

import cocotb
import numpy as np
import pytest
from cocotb.triggers import RisingEdge, Timer

from hw.config import SDConfig
from tb.common import load_pickled_env

CASE_ENV = "SMARTDEAL_CASE"


# =========================================================================== cocotb side
def _load_case() -> dict:
    return load_pickled_env(CASE_ENV, "pytest")


def _save_result(case: dict, key: str, value) -> None:
    out = Path(case["result_path"])
    data = json.loads(out.read_text()) if out.is_file() else {}
    data[key] = value
    out.write_text(json.dumps(data, indent=1, default=int))


def _compare(got: np.ndarray, want: np.ndarray, what: str) -> int:
    """Assert equality; the message names the first differing element."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != expected {want.shape}"
    bad = np.argwhere(got != want)
    if bad.size:
        idx = tuple(int(v) for v in bad[0])
        raise AssertionError(f"{what}: {len(bad)} of {got.size} outputs differ; first at "
                             f"{idx}: RTL {int(got[idx])} != golden {int(want[idx])}")
    return got.size


async def _driver(dut, case):
    from tb.accel_driver import AccelDriver
    cfg = SDConfig.from_json(case["config"])
    drv = AccelDriver(dut, cfg, case["kind"])
    await drv.reset()
    await drv.check_identity()
    return drv


async def _run_network(drv, net: dict, label: str) -> dict:
    """Run every batch of ``net`` (program + inputs + expected), compare, return stats."""
    await drv.load_program(net["program"])
    compared = 0
    cycles = []
    layer_cycles = None
    for b, (x, want) in enumerate(zip(net["inputs"], net["expected"])):
        got = await drv.infer(x)
        compared += _compare(got, want, f"{label} batch {b}")
        st = await drv.status()
        cycles.append(st.cycles)
        if layer_cycles is None:
            layer_cycles = await drv.layer_cycles(len(net["program"].layers))
    counters = await drv.counters()
    return {"compared": compared, "cycles": cycles, "layer_cycles": layer_cycles,
            "counters": counters}


@cocotb.test()
async def network(dut):
    """Every network of the case, whole network per start, bit-exact vs golden."""
    case = _load_case()
    drv = await _driver(dut, case)
    results = {}
    for label, net in case["networks"].items():
        if net.get("load_weights", True):
            await drv.load_weights(net["images"])
        results[label] = await _run_network(drv, net, label)
    _save_result(case, "network", results)


@cocotb.test()
async def reload(dut):
    """Network A, then network B's weights written at run time, both bit-exact."""
    case = _load_case()
    drv = await _driver(dut, case)
    for label in ("A", "B"):
        net = case["reload"][label]
        await drv.load_weights(net["images"])
        await _run_network(drv, net, f"reload {label}")


@cocotb.test()
async def faults(dut):
    """Corrupted Ce word -> error status and counter, run ends; reset; runs again."""
    from hw.host import Reg
    from hw.layouts import DecodeError
    case = _load_case()
    drv = await _driver(dut, case)
    net = case["networks"][next(iter(case["networks"]))]
    await drv.load_weights(case["images"])
    await drv.load_program(net["program"])
    x, want = net["inputs"][0], net["expected"][0]
    fault = case["fault"]
    errs0 = await drv.read_reg(Reg.ERR_COUNT)
    # 1. an invalid code in a record: the decoder flags it, the run ends with an error
    await drv.write_memory(fault["memory"], fault["address"], [fault["bad_word"]])
    await drv.write_activations(net["program"].input_layout, x)
    st = await drv.run(check=False)
    assert st.error and not st.busy, f"corrupted weights did not end the run: {st}"
    assert st.error_code == DecodeError.BAD_CODE, f"error code {st.error_code:#x}"
    assert st.error_layer == fault["layer"], f"error layer {st.error_layer}"
    assert await drv.read_reg(Reg.ERR_COUNT) == errs0 + 1
    assert int(dut.irq.value) == 1
    # 2. repair the word, run again without any reset: bit-exact
    await drv.write_memory(fault["memory"], fault["address"], [fault["good_word"]])
    got = await drv.infer(x)
    _compare(got, want, "after repairing the weights")
    # 3. reset in the middle of a layer, then run again
    await drv.write_activations(net["program"].input_layout, x)
    await drv.start()
    for _ in range(fault["reset_after"]):
        await RisingEdge(dut.clk)
    st = await drv.status()
    assert st.busy, "the run finished before the reset; make reset_after smaller"
    await drv.reset()
    st = await drv.status()
    assert not st.busy and not st.error and not st.done, f"state after reset: {st}"
    await drv.load_program(net["program"])     # registers are reset, the RAM keeps them
    got = await drv.infer(x)
    _compare(got, want, "after a reset during a layer")
    # 4. ABORT during a run, then run again
    await drv.write_activations(net["program"].input_layout, x)
    await drv.start()
    for _ in range(fault["reset_after"]):
        await RisingEdge(dut.clk)
    await drv.abort()
    st = await drv.status()
    assert not st.busy and not st.error, f"state after abort: {st}"
    got = await drv.infer(x)
    _compare(got, want, "after an abort")
    # 5. the watchdog ends a run that makes no progress (here: the descriptor fetch is
    #    longer than a 3-cycle limit), and N_LAYERS = 0 is refused
    from hw.controller import CtrlError
    errs1 = await drv.read_reg(Reg.ERR_COUNT)    # the reset above cleared it
    await drv.write_reg(Reg.WATCHDOG, 3)
    st = await drv.run(check=False)
    assert st.error and st.error_code == CtrlError.WATCHDOG, f"watchdog: {st}"
    await drv.write_reg(Reg.WATCHDOG, 1 << 16)
    await drv.write_reg(Reg.N_LAYERS, 0)
    st = await drv.run(check=False)
    assert st.error and st.error_code == CtrlError.NO_LAYERS, f"no layers: {st}"
    assert await drv.read_reg(Reg.ERR_COUNT) == errs1 + 2
    await drv.load_program(net["program"])
    got = await drv.infer(x)
    _compare(got, want, "after the watchdog and N_LAYERS errors")
    # 6. a malformed stream frame is reported and dropped
    await drv.source.send(bytes(4))                       # header beat with tlast only
    await drv.source.wait()
    st = await drv.status()
    assert st.stream_error, "a truncated frame did not set STREAM_ERROR"
    await drv.clear_stream_error()
    assert not (await drv.status()).stream_error


@cocotb.test()
async def soak(dut):
    """Many runs with random back-pressure on the read-back stream: nothing lost."""
    case = _load_case()
    drv = await _driver(dut, case)
    soak = case["soak"]
    await drv.load_weights(case["images"])
    net = case["networks"][soak["network"]]
    await drv.load_program(net["program"])
    rng = random.Random(soak["seed"])
    total_cycles = 0
    compared = 0
    i = 0
    while total_cycles < soak["min_cycles"]:
        b = i % len(net["inputs"])
        x, want = net["inputs"][b], net["expected"][b]
        await drv.write_activations(net["program"].input_layout, x)
        st = await drv.run()
        total_cycles += st.cycles
        # read back with random stalls on m_axis (tready)
        drv.sink.set_pause_generator(iter(lambda: rng.random() < soak["stall"], None))
        got = await drv.read_activations(net["program"].output_layout, net["program"].batch)
        drv.sink.clear_pause_generator()
        compared += _compare(got, want, f"soak run {i}")
        i += 1
    assert drv.sink.empty(), "the read-back stream delivered more frames than requested"
    _save_result(case, "soak", {"runs": i, "cycles": total_cycles, "compared": compared})


# ============================================================================ pytest side
def case_dir() -> Path:
    from tb.harness import SIM_ROOT
    d = SIM_ROOT / "cases"
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_case(case: dict, name: str) -> Path:
    d = case_dir()
    fd, tmp = tempfile.mkstemp(dir=d, prefix=name, suffix=".pkl")
    result = Path(tmp).with_suffix(".json")
    case["result_path"] = str(result)
    with os.fdopen(fd, "wb") as fh:
        pickle.dump(case, fh)
    return Path(tmp)


def run_case(kind: str, config: SDConfig, case: dict, testcase, timeout_s: float = 600,
             **design_kwargs) -> dict:
    """Run cocotb ``testcase`` on the ``kind`` accelerator with ``case``; return results."""
    from golden.rtl_runner import run_accelerator
    path = write_case(case, kind)
    try:
        run_accelerator(config, kind, test_module="tb.test_top", testcase=testcase,
                        extra_env={CASE_ENV: str(path)}, timeout_s=timeout_s,
                        **design_kwargs)
        result = Path(case["result_path"])
        return json.loads(result.read_text()) if result.is_file() else {}
    finally:
        path.unlink(missing_ok=True)
        Path(case["result_path"]).unlink(missing_ok=True)


# --------------------------------------------------------------------------- cases
#: lanes = 1 (with a small accumulator, so layers are cut into many position tiles)
ONE_LANE = SDConfig(lanes=1, max_rows=255, block_rows=16, ce_depth=1024, basis_depth=256,
                    quant_depth=64, act_depth=512, out_depth=512, acc_depth=8)
#: the time-multiplexed rebuild (one lane per cycle, four cycles per row), with small basis
#: blocks (bank swaps while a row's later lanes are still rebuilt) and position tiles
TIME_MULTIPLEXED = SDConfig(lanes=4, rebuild_cycles=4, max_rows=255, block_rows=8,
                            ce_depth=1024, basis_depth=256, quant_depth=64, act_depth=1024,
                            out_depth=1024, acc_depth=16)
#: The digits images the e2e test runs (the demo runs the whole test set).
DIGITS_IMAGES = 24
DIGITS_BATCH = 4


def random_networks(config: SDConfig, seed: int) -> dict:
    """Random networks for ``config``: odd sizes, sizes not a multiple of S, padding,
    stride 2, several groups, an empty group, FC after conv, batches, position tiles."""
    from golden.rtl_runner import prepare_network
    from tb.random_net import ConvSpec, LinearSpec, random_inputs, random_qnet
    shapes = [
        ((1, 7, 5), [ConvSpec(cout=3, k=3, padding=1), LinearSpec(cout=5)], 1),
        ((2, 6, 7), [ConvSpec(cout=5, k=3, stride=2, padding=1),
                     ConvSpec(cout=config.lanes + 3, k=3, padding=0),
                     LinearSpec(cout=4, relu=True), LinearSpec(cout=3)], 2),
        ((10,), [LinearSpec(cout=7, relu=True), LinearSpec(cout=2 * config.lanes + 1)], 3),
        ((3, 9, 4), [ConvSpec(cout=4, k=3, kh=2, stride=1, padding=2),
                     ConvSpec(cout=3, k=6, kh=3, stride=3, padding=1)], 1),
    ]
    nets = {}
    for i, (shape, layers, batch) in enumerate(shapes):
        q = random_qnet(config, shape, layers, seed=seed * 10 + i, empty_group=(i == 1))
        x = random_inputs(config, shape, 2 * batch, seed * 10 + i)
        nets[f"random{i}"] = prepare_network(q, x, batch=batch)
    return nets


def digits_qnet(config: SDConfig):
    """The bundled digits network for ``config`` and its integer test images."""
    from golden.data import load_digits_split
    from scripts.verilog import bundled_qnet
    qnet, _ = bundled_qnet(config)
    split = load_digits_split()
    return qnet, qnet.quantize_input(split.x_test), split.y_test.numpy()


def fault_spec(config: SDConfig, images: dict, program, layer: int = 1) -> dict:
    """A negative-zero code in the first record of ``layer`` (and the word to repair it)."""
    desc = program.descriptors[layer]
    addr = desc["CE_BASE"] + config.words_per_record       # first record after the header
    good = images["ce"][addr]
    off = config.row_bits                                  # lane 0, element 0, term 0
    mask = ((1 << config.code_bits) - 1) << off
    bad = (good & ~mask) | ((1 << config.exp_bits) << off)  # {sign=1, field=0}
    return {"memory": "ce", "address": addr, "good_word": good, "bad_word": bad,
            "layer": layer, "reset_after": 300}


@pytest.mark.sim
def test_sd_accelerator():
    """SD accelerator, default configuration, digits network baked into the Verilog.

    Bit-exact digits subset (weights baked, no load), random layers, runtime reload
    A -> B, faults (bad code, reset and abort mid-layer, bad stream frame) and a soak of
    >= 10**6 cycles with random back-pressure on the read-back stream.
    """
    from golden.rtl_runner import prepare_network
    from hw.config import preset
    cfg = preset("default")
    qnet, x, _ = digits_qnet(cfg)
    digits = prepare_network(qnet, x[:DIGITS_IMAGES], batch=DIGITS_BATCH)
    digits["load_weights"] = False                       # they are baked in
    nets = {"digits": digits, **random_networks(cfg, seed=2)}
    case = {"config": cfg.to_json(), "kind": "sd", "networks": nets,
            "images": digits["images"],
            "reload": {"A": nets["random1"], "B": digits},
            "fault": fault_spec(cfg, digits["images"], digits["program"]),
            "soak": {"network": "digits", "min_cycles": 1_000_000, "stall": 0.5, "seed": 7}}
    res = run_case("sd", cfg, case, ["network", "reload", "faults", "soak"],
                   init=digits["images"])
    assert res["network"]["digits"]["compared"] == DIGITS_IMAGES * 10 * 1 * 1
    assert res["soak"]["cycles"] >= 1_000_000


@pytest.mark.sim
def test_dense_accelerator(tmp_path):
    """Dense int8 baseline, weights from $readmemh files: the digits network, then other
    weights in the same files with the same (cached) Verilog, both bit-exact."""
    from golden import memfile
    from golden.rtl_runner import prepare_network
    from hw.config import preset
    from hw.datapath import dense_word_bits
    from tb.harness import SIM_ROOT
    from tb.random_net import ConvSpec, LinearSpec, random_inputs, random_qnet
    cfg = preset("default")
    qnet, x, _ = digits_qnet(cfg)
    files = SIM_ROOT / "dense_readmem"
    files.mkdir(parents=True, exist_ok=True)
    init_files = {"dense": str(files / "dense.hex"), "quant": str(files / "quant.hex")}
    widths = {"dense": dense_word_bits(cfg), "quant": cfg.quant_word_bits}
    other = random_qnet(cfg, (1, 8, 8), [ConvSpec(8, 3, 2, 1), LinearSpec(10)], seed=5)
    for label, net in (("digits", prepare_network(qnet, x[:DIGITS_IMAGES],
                                                  batch=DIGITS_BATCH, kind="dense")),
                       ("other", prepare_network(other, random_inputs(cfg, (1, 8, 8), 4, 6),
                                                 batch=2, kind="dense"))):
        for name, path in init_files.items():
            memfile.write_readmemh(path, net["images"][name], widths[name])
        net["load_weights"] = False                      # $readmemh loaded them
        case = {"config": cfg.to_json(), "kind": "dense", "networks": {label: net}}
        res = run_case("dense", cfg, case, "network", init_files=init_files)
        shape = net["program"].output_layout.shape
        assert res["network"][label]["compared"] == (len(net["inputs"]) * net["program"].batch
                                                     * int(np.prod(shape)))


@pytest.mark.sim
def test_one_lane_random_layers():
    """lanes = 1, many position tiles: random conv / FC layers bit-exact."""
    res = run_case("sd", ONE_LANE, {"config": ONE_LANE.to_json(), "kind": "sd",
                                    "networks": random_networks(ONE_LANE, seed=1)},
                   "network")
    assert len(res["network"]) == 4


@pytest.mark.sim
def test_time_multiplexed_rebuild_random_layers():
    """rebuild_cycles = 4: random conv / FC layers bit-exact, including fully connected
    layers whose tiles have fewer positions than 4 (the rebuild-bound case)."""
    res = run_case("sd", TIME_MULTIPLEXED,
                   {"config": TIME_MULTIPLEXED.to_json(), "kind": "sd",
                    "networks": random_networks(TIME_MULTIPLEXED, seed=3)}, "network")
    assert len(res["network"]) == 4

"""The digits network on the Verilator-simulated accelerators (issue 6).

Runs the quantized digits network on the SD accelerator and on the dense int8 baseline
built from the same configuration, through the top's own cocotb test
(``tb/test_top.py::network``: AXI host interface, bit-exact comparison of every output
with ``golden/reference.py``), and reads from the simulated RTL

* the cycles of every layer (``LAYER_CYCLES`` registers) against the ideal
  ``kept rows x output positions`` of `hw.program.layer_ideal_cycles` (no pipeline fill
  allowed for: the figure errs against the hardware);
* the event counters (`hw.host.Counter`) of the whole network and, for the energy model,
  of every layer alone: each layer is also run as a one-layer network on its golden
  integer input, in the same simulation, so its counters are its own;
* the weight memory bits each accelerator holds for the network (the memory images the
  host loads, at the memory widths of `hw.top.memory_map`).

Batches: one image per run (``batch=1``) and ``batch=4`` (4 x 64 conv1 output pixels
fill the 256 accumulators of the default preset); the cycles target uses batch 4, where
the schedule reaches steady state, and the per-layer figures of both are reported.
"""

from __future__ import annotations

import time

import numpy as np

from . import digits
from .context import Context
from .core import NotAvailable, SectionOutput, Stat, require
from .plots import grouped_bars

__all__ = ["run", "rtl_runs", "network_qnet", "BATCHES"]

BATCHES = (1, 4)
IMAGES = {True: 4, False: 16}          # quick, full: test images per network run
CYCLES_BATCH = 4
SIM_TIMEOUT_S = 1500


def network_qnet(ctx: Context):
    """The quantized network the accelerators run, and where its weights came from.

    The shipped SD checkpoint when there is one; else the model the accuracy section
    fine-tuned in this invocation; else the dense model converted with the shipped
    pruning, without fine-tuning (cycles and counters depend on the structure, not on
    how well the weights are trained).
    """
    def build():
        models = require("golden.models", "load_checkpoint")
        qnet_mod = require("golden.qnet", "build_qnet")
        from hw.config import SDConfig
        source, model, cfg = None, None, SDConfig()
        shipped = getattr(models, "DEFAULT_CHECKPOINT", None)
        if shipped is not None and shipped.is_file():
            model, cfg = models.load_checkpoint(shipped)
            source = "shipped SD checkpoint"
        elif "sd_model" in ctx.shared:
            model, source = ctx.shared["sd_model"], "accuracy section's fine-tuned model"
        else:
            training = require("golden.training", "DEFAULT_PRUNE")
            dense, _ = digits.dense_model(ctx)
            model = digits.sd_from_dense(dense, cfg, prune=training.DEFAULT_PRUNE)
            source = "dense model converted with the shipped pruning (not fine-tuned)"
        d = digits.data(ctx)
        return qnet_mod.build_qnet(model.eval(), cfg, d.x_train), source

    return ctx.cached("rtl_qnet", build)


def _one_layer(qnet, i: int):
    from golden.qnet import QNet
    lay = qnet.layers[i]
    return QNet(config=qnet.config, input_shape=tuple(lay.in_shape),
                input_scale=lay.in_scale, layers=[lay])


#: Image names of the packed network (`golden.rtl_runner.pack_network`) -> memory of
#: `hw.top.memory_map`.
_IMAGE_MEMORY = {"ce": "weights", "dense": "weights", "basis": "basis", "quant": "quant"}


def _weight_bits(images: dict, mm: dict) -> dict:
    unknown = sorted(set(images) - set(_IMAGE_MEMORY))
    if unknown:
        raise ValueError(f"memory images {unknown} have no known memory; "
                         f"known: {sorted(_IMAGE_MEMORY)}")
    out = {name: len(words) * mm[_IMAGE_MEMORY[name]]["width"]
           for name, words in images.items()}
    out["total"] = sum(out.values())
    return out


def rtl_runs(ctx: Context) -> dict:
    """Run both accelerators once per invocation; cycles, counters, memory bits."""
    def build():
        require("hw.top", "AcceleratorTop", "memory_map")
        runner = require("golden.rtl_runner", "prepare_network", "run_accelerator")
        tb_top = require("tb.test_top", "run_case")
        from hw.top import memory_map
        qnet, source = network_qnet(ctx)
        cfg = qnet.config
        d = digits.data(ctx)
        n = IMAGES[ctx.quick]
        x = qnet.quantize_input(d.x_test[:n].numpy())
        acts = qnet.run_int(x, return_all=True)
        inputs = [x] + [a.reshape(len(x), *qnet.layers[i + 1].in_shape)
                        for i, a in enumerate(acts[:-1])]
        names = [lay.name for lay in qnet.layers]
        out = {"config": cfg.to_dict(), "source": source, "images": n, "layers": names,
               "batches": list(BATCHES), "kinds": {}}
        for kind in ctx.bar(("sd", "dense"), desc="rtl"):
            nets = {}
            for b in BATCHES:
                nets[f"net_b{b}"] = runner.prepare_network(qnet, x, kind=kind, batch=b)
                for i in range(len(names)):
                    nets[f"{names[i]}_b{b}"] = runner.prepare_network(
                        _one_layer(qnet, i), inputs[i][:b], kind=kind, batch=b)
            case = {"config": cfg.to_json(), "kind": kind, "networks": nets}
            t0 = time.perf_counter()
            res = tb_top.run_case(kind, cfg, case, "network", timeout_s=SIM_TIMEOUT_S)
            wall = time.perf_counter() - t0
            got = res.get("network")
            if not got:
                raise RuntimeError(f"the {kind} accelerator run returned no results")
            runs = {}
            for label, net in nets.items():
                r = got[label]
                runs[label] = {"cycles": r["cycles"], "layer_cycles": r["layer_cycles"],
                               "ideal": [int(v) for v in net["ideal"]],
                               "counters": {k.lower(): int(v) for k, v in r["counters"].items()},
                               "compared": r["compared"], "batch": int(net["program"].batch),
                               "items": int(net["n_items"])}
            images = nets["net_b1"]["images"]
            out["kinds"][kind] = {"runs": runs, "wall_s": wall,
                                  "weight_bits": _weight_bits(images, memory_map(cfg, kind)),
                                  "compared": sum(r["compared"] for r in runs.values())}
        return out

    return ctx.cached("rtl_runs", build)


def _over(cycles: list, ideal: list) -> list:
    return [c / i - 1.0 if i else float("nan") for c, i in zip(cycles, ideal)]


def run(ctx: Context) -> SectionOutput:
    data = rtl_runs(ctx)
    names = data["layers"]
    values: dict = {"source": data["source"], "images": data["images"], "layers": names}
    for kind in ("sd", "dense"):
        k = data["kinds"][kind]
        per_batch = {}
        for b in data["batches"]:
            r = k["runs"][f"net_b{b}"]
            per_batch[b] = {
                "layer_cycles": r["layer_cycles"], "ideal": r["ideal"],
                "over_ideal": _over(r["layer_cycles"], r["ideal"]),
                "cycles_per_run": Stat.of(r["cycles"], "cycles"),
                "cycles_per_image": Stat.of([c / b for c in r["cycles"]], "cycles"),
                "mac_utilisation": sum(r["ideal"]) / max(1, min(r["cycles"])),
                "counters": r["counters"],
            }
        values[kind] = {"batches": per_batch, "weight_bits": k["weight_bits"],
                        "outputs_compared": k["compared"], "mismatches": 0,
                        "sim_wall_s": k["wall_s"]}
    sd, dense = values["sd"], values["dense"]
    cb = CYCLES_BATCH
    values["sd_cycles_per_image"] = sd["batches"][cb]["cycles_per_image"]
    values["dense_cycles_per_image"] = dense["batches"][cb]["cycles_per_image"]
    values["worst_over_ideal_pct"] = 100 * max(sd["batches"][cb]["over_ideal"])
    values["dense_worst_over_ideal_pct"] = 100 * max(dense["batches"][cb]["over_ideal"])
    values["weight_memory_ratio"] = sd["weight_bits"]["total"] / dense["weight_bits"]["total"]
    values["weight_memory_ratio_no_quant"] = (
        (sd["weight_bits"]["total"] - sd["weight_bits"].get("quant", 0))
        / (dense["weight_bits"]["total"] - dense["weight_bits"].get("quant", 0)))
    measured = {"rtl.cycles_over_ideal": max(sd["batches"][cb]["over_ideal"]),
                "rtl.weight_memory_ratio": values["weight_memory_ratio"]}
    unavailable = {"rtl.sim_cycles_per_s": (
        "no simulation-speed benchmark in the tree yet (autonomous Verilator run vs a "
        "cocotb per-cycle loop, from the top's runner)")}
    try:
        speed = require("golden.rtl_runner", "sim_speed")
        s = speed.sim_speed(data["config"])
        values["sim_speed"] = s
        measured["rtl.sim_cycles_per_s"] = float(s["cycles_per_s"])
        values["sim_speed_ratio"] = s.get("ratio")
        unavailable = {}
    except NotAvailable:
        pass
    labels = [f"{n} b{b}" for b in data["batches"] for n in names]
    plot = grouped_bars(
        labels,
        {"SD cycles": [sd["batches"][b]["layer_cycles"][i] for b in data["batches"]
                       for i in range(len(names))],
         "SD ideal": [sd["batches"][b]["ideal"][i] for b in data["batches"]
                      for i in range(len(names))],
         "dense cycles": [dense["batches"][b]["layer_cycles"][i] for b in data["batches"]
                          for i in range(len(names))]},
        ctx.img_dir / "rtl_cycles.png", "cycles per run (log)",
        "Layer cycles on the simulated RTL vs ideal (kept rows x positions)", log=True)
    notes = [
        f"Network: {data['source']}; {data['images']} test images per run, every output "
        f"compared with the golden integer reference ({sd['outputs_compared']:,} SD and "
        f"{dense['outputs_compared']:,} dense outputs, 0 mismatches — a mismatch fails the "
        f"cocotb test and this section).",
        *[f"Batch {b}: SD layer cycles {sd['batches'][b]['layer_cycles']} vs ideal "
          f"{sd['batches'][b]['ideal']} (over ideal "
          f"{', '.join(f'{100 * o:.1f}%' for o in sd['batches'][b]['over_ideal'])}); dense "
          f"{dense['batches'][b]['layer_cycles']}; cycles per image SD "
          f"{sd['batches'][b]['cycles_per_image']}, dense "
          f"{dense['batches'][b]['cycles_per_image']}." for b in data["batches"]],
        f"Weight memory bits (Ce/dense words + basis + bias/requantization): SD "
        f"{sd['weight_bits']['total']:,}, dense {dense['weight_bits']['total']:,} "
        f"(ratio {values['weight_memory_ratio']:.3f}; "
        f"{values['weight_memory_ratio_no_quant']:.3f} without the bias/requantization words "
        f"both hold).",
    ]
    tables = [{"title": "Layer cycles per run on the simulated RTL",
               "header": ["layer", "batch", "SD cycles", "ideal", "SD over ideal (%)",
                          "dense cycles", "dense ideal", "dense over ideal (%)"],
               "rows": [[n, b, sd["batches"][b]["layer_cycles"][i], sd["batches"][b]["ideal"][i],
                         100 * sd["batches"][b]["over_ideal"][i],
                         dense["batches"][b]["layer_cycles"][i],
                         dense["batches"][b]["ideal"][i],
                         100 * dense["batches"][b]["over_ideal"][i]]
                        for b in data["batches"] for i, n in enumerate(names)]}]
    if np.isnan(measured["rtl.cycles_over_ideal"]):
        raise RuntimeError("a layer has an ideal cycle count of 0")
    return SectionOutput(values=values, measured=measured, plots=[plot], notes=notes,
                         unavailable=unavailable, tables=tables)

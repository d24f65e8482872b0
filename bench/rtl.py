"""The digits network on the Verilator-simulated accelerators (issue 6).

Runs the quantized digits network on the SD accelerator and on the dense int8 baseline
built from the same configuration with the runner of ``smartdeal sim`` / ``demo``
(`golden.rtl_runner.run_network`: AXI host interface, every output compared here with
``golden/reference.py``; a mismatch fails the section), and reads from the simulated RTL

* the cycles of every layer (``LAYER_CYCLES`` registers) against the ideal
  ``kept rows x output positions`` of `hw.program.layer_ideal_cycles`, plus the
  documented pipeline fill (`hw.program.ACTIVATION_FILL` per layer and
  `hw.program.first_layer_fill` for a run's first layer); the over-ideal figures without
  the fill are reported next to them;
* the event counters (`hw.host.Counter`) of the whole network and, for the energy model,
  of every layer alone: each layer is also run as a one-layer network on its golden
  integer input, in the same simulation, so its counters are its own;
* the weight memory bits each accelerator holds for the network (the memory images the
  host loads, at the memory widths of `hw.top.memory_map`);
* the simulation speed (`golden.rtl_runner.measure_sim_speed`: autonomous runs vs a
  cocotb loop driving every cycle), median of repeated measurements.

Batches: one image per run (``batch=1``) and ``batch=4`` (4 x 64 conv1 output pixels
fill the 256 accumulators of the default preset); the cycles target is the worst layer
over both batches.

The SD network runs are repeated with the time-multiplexed weight rebuild
(``rebuild_cycles`` = `REBUILD_VARIANT`, same weights and images), so the cycles that its
smaller basis array costs are measured next to the full-rate ones (no target; the area
side is in ``docs/fpga.md``).
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
SIM_TIMEOUT_S = 600
#: `SDConfig.rebuild_cycles` of the time-multiplexed variant measured next to full rate
REBUILD_VARIANT = 4


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


def _run(runner, qnet, x, kind: str, batch: int, label: str, config=None) -> dict:
    """One `golden.rtl_runner.run_network` call; every output checked against golden."""
    r = runner.run_network(qnet, x, kind=kind, batch=batch, timeout_s=SIM_TIMEOUT_S,
                           config=config)
    if r.mismatches:
        raise AssertionError(f"{kind} accelerator, {label}: {r.mismatches} of "
                             f"{r.outputs.size} outputs differ from golden/reference.py")
    return {"cycles": [int(c) for c in r.cycles],
            "layer_cycles": [int(c) for c in r.layer_cycles],
            "ideal": [int(v) for v in r.ideal],
            "counters": {k.lower(): int(v) for k, v in r.counters.items()},
            "compared": int(r.outputs.size), "batch": int(r.batch), "items": int(len(x)),
            "sim_wall_s": float(r.sim_wall_s), "run_wall_s": float(r.run_wall_s)}


def rtl_runs(ctx: Context) -> dict:
    """Run both accelerators once per invocation; cycles, counters, memory bits."""
    def build():
        require("hw.top", "memory_map")
        runner = require("golden.rtl_runner", "run_network", "pack_network")
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
        # Per-layer runs feed the energy model; --quick runs them for the headline batch.
        layer_batches = (BATCHES[0],) if ctx.quick else BATCHES
        out["layer_batches"] = list(layer_batches)
        jobs = [(kind, b, None) for kind in ("sd", "dense") for b in BATCHES]
        jobs += [(kind, b, i) for kind in ("sd", "dense") for b in layer_batches
                 for i in range(len(names))]
        jobs += [("sd_rebuild", b, None) for b in BATCHES]
        runs: dict = {"sd": {}, "dense": {}, "sd_rebuild": {}}
        t0 = {"sd": 0.0, "dense": 0.0, "sd_rebuild": 0.0}
        variant = cfg.replace(rebuild_cycles=REBUILD_VARIANT)
        out["rebuild_variant"] = variant.rebuild_cycles
        for kind, b, i in ctx.bar(jobs, desc="rtl runs"):
            start = time.perf_counter()
            if kind == "sd_rebuild":
                runs[kind][f"net_b{b}"] = _run(
                    runner, qnet, x, "sd", b, f"network, batch {b}, rebuild_cycles="
                    f"{variant.rebuild_cycles}", config=variant)
            elif i is None:
                runs[kind][f"net_b{b}"] = _run(runner, qnet, x, kind, b, f"network, batch {b}")
            else:
                runs[kind][f"{names[i]}_b{b}"] = _run(
                    runner, _one_layer(qnet, i), inputs[i][:b], kind, b,
                    f"{names[i]} alone, batch {b}")
            t0[kind] += time.perf_counter() - start
        for kind in ("sd", "dense"):
            images, _, _ = runner.pack_network(qnet, kind)
            out["kinds"][kind] = {"runs": runs[kind], "wall_s": t0[kind],
                                  "weight_bits": _weight_bits(images, memory_map(cfg, kind)),
                                  "compared": sum(r["compared"] for r in runs[kind].values())}
        out["rebuild_runs"] = runs["sd_rebuild"]
        return out

    return ctx.cached("rtl_runs", build)


def sim_speed(ctx: Context) -> dict | None:
    """Simulated cycles per second (`golden.rtl_runner.measure_sim_speed`), or None."""
    try:
        runner = require("golden.rtl_runner", "measure_sim_speed")
    except NotAvailable:
        return None
    qnet, _ = network_qnet(ctx)
    d = digits.data(ctx)
    x = qnet.quantize_input(d.x_test[:4].numpy())
    reps = ctx.repeats(full=3, quick=1)
    got = [runner.measure_sim_speed(qnet, x, kind="sd", batch=4, verbose=False)
           for _ in ctx.bar(range(reps), desc="sim speed")]
    return {k: Stat.of([g[k] for g in got]) for k in (
        "autonomous_cycles_per_s", "autonomous_cycles_per_cpu_s", "loop_cycles_per_s",
        "loop_cycles_per_cpu_s", "ratio")}


def _over(cycles: list, ideal: list) -> list:
    return [c / i - 1.0 if i else float("nan") for c, i in zip(cycles, ideal)]


def _with_fill(ideal: list, cfg) -> list:
    """Ideal cycles plus the pipeline fill the top documents (`hw.program`)."""
    prog = require("hw.program", "ACTIVATION_FILL", "first_layer_fill")
    out = [i + prog.ACTIVATION_FILL for i in ideal]
    out[0] += prog.first_layer_fill(cfg)
    return out


def run(ctx: Context) -> SectionOutput:
    from hw.config import SDConfig
    data = rtl_runs(ctx)
    cfg = SDConfig.from_dict(data["config"])
    names = data["layers"]
    values: dict = {"source": data["source"], "images": data["images"], "layers": names}
    for kind in ("sd", "dense"):
        k = data["kinds"][kind]
        per_batch = {}
        for b in data["batches"]:
            r = k["runs"][f"net_b{b}"]
            per_batch[b] = {
                "layer_cycles": r["layer_cycles"], "ideal": _with_fill(r["ideal"], cfg),
                "ideal_no_fill": r["ideal"],
                "over_ideal": _over(r["layer_cycles"], _with_fill(r["ideal"], cfg)),
                "over_ideal_no_fill": _over(r["layer_cycles"], r["ideal"]),
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
    bs = data["batches"]
    values["worst_over_ideal_pct"] = 100 * max(max(sd["batches"][b]["over_ideal"]) for b in bs)
    values["dense_worst_over_ideal_pct"] = 100 * max(
        max(dense["batches"][b]["over_ideal"]) for b in bs)
    values["worst_over_ideal_no_fill_pct"] = 100 * max(
        max(sd["batches"][b]["over_ideal_no_fill"]) for b in bs)
    rk = data["rebuild_variant"]
    values["rebuild_variant"] = {
        "rebuild_cycles": rk,
        "batches": {b: {"layer_cycles": r["layer_cycles"],
                        "cycles_per_image": Stat.of([c / b for c in r["cycles"]], "cycles"),
                        "vs_full_rate": min(r["cycles"]) / max(1, min(
                            data["kinds"]["sd"]["runs"][f"net_b{b}"]["cycles"])),
                        "outputs_compared": r["compared"]}
                    for b, r in ((r["batch"], r) for r in data["rebuild_runs"].values())}}
    values["weight_memory_ratio"] = sd["weight_bits"]["total"] / dense["weight_bits"]["total"]
    values["weight_memory_ratio_no_quant"] = (
        (sd["weight_bits"]["total"] - sd["weight_bits"].get("quant", 0))
        / (dense["weight_bits"]["total"] - dense["weight_bits"].get("quant", 0)))
    measured = {"rtl.cycles_over_ideal": values["worst_over_ideal_pct"] / 100,
                "rtl.weight_memory_ratio": values["weight_memory_ratio"]}
    unavailable = {}
    speed = sim_speed(ctx)
    if speed is None:
        unavailable["rtl.sim_cycles_per_s"] = ("no simulation-speed benchmark in the tree "
                                               "(golden.rtl_runner.measure_sim_speed)")
    else:
        values["sim_speed"] = speed
        values["sim_cycles_per_s"] = speed["autonomous_cycles_per_s"]
        values["sim_speed_ratio"] = speed["ratio"]
        measured["rtl.sim_cycles_per_s"] = speed["autonomous_cycles_per_s"].median
    labels = [f"{n} b{b}" for b in data["batches"] for n in names]
    plot = grouped_bars(
        labels,
        {"SD cycles": [sd["batches"][b]["layer_cycles"][i] for b in data["batches"]
                       for i in range(len(names))],
         "SD ideal + fill": [sd["batches"][b]["ideal"][i] for b in data["batches"]
                      for i in range(len(names))],
         "dense cycles": [dense["batches"][b]["layer_cycles"][i] for b in data["batches"]
                          for i in range(len(names))]},
        ctx.img_dir / "rtl_cycles.png", "cycles per run (log)",
        "Layer cycles on the simulated RTL vs ideal (kept rows x positions + fill)", log=True)
    notes = [
        f"Network: {data['source']}; {data['images']} test images per run, every output "
        f"compared with the golden integer reference ({sd['outputs_compared']:,} SD and "
        f"{dense['outputs_compared']:,} dense outputs, 0 mismatches — a mismatch fails this "
        f"section).",
        *[f"Batch {b}: SD layer cycles {sd['batches'][b]['layer_cycles']} vs ideal with "
          f"fill {sd['batches'][b]['ideal']} (over ideal "
          f"{', '.join(f'{100 * o:.1f}%' for o in sd['batches'][b]['over_ideal'])}; "
          f"without the fill "
          f"{', '.join(f'{100 * o:.1f}%' for o in sd['batches'][b]['over_ideal_no_fill'])}); "
          f"dense "
          f"{dense['batches'][b]['layer_cycles']}; cycles per image SD "
          f"{sd['batches'][b]['cycles_per_image']}, dense "
          f"{dense['batches'][b]['cycles_per_image']}." for b in data["batches"]],
        *[f"Time-multiplexed rebuild (rebuild_cycles={rk}, same weights and images, 0 "
          f"mismatches), batch {b}: SD layer cycles {v['layer_cycles']} vs "
          f"{sd['batches'][b]['layer_cycles']} at full rate; cycles per image "
          f"{v['cycles_per_image']} ({v['vs_full_rate']:.3f}x full rate). Only layers whose "
          f"tile has fewer than {rk} output positions are rebuild-bound."
          for b, v in values["rebuild_variant"]["batches"].items()],
        f"Weight memory bits (Ce/dense words + basis + bias/requantization): SD "
        f"{sd['weight_bits']['total']:,}, dense {dense['weight_bits']['total']:,} "
        f"(ratio {values['weight_memory_ratio']:.3f}; "
        f"{values['weight_memory_ratio_no_quant']:.3f} without the bias/requantization words "
        f"both hold).",
    ]
    tables = [{"title": "Layer cycles per run on the simulated RTL",
               "header": ["layer", "batch", "SD cycles", "ideal + fill", "SD over ideal (%)",
                          "dense cycles", "dense ideal + fill", "dense over ideal (%)"],
               "rows": [[n, b, sd["batches"][b]["layer_cycles"][i], sd["batches"][b]["ideal"][i],
                         100 * sd["batches"][b]["over_ideal"][i],
                         dense["batches"][b]["layer_cycles"][i],
                         dense["batches"][b]["ideal"][i],
                         100 * dense["batches"][b]["over_ideal"][i]]
                        for b in data["batches"] for i, n in enumerate(names)]}]
    if speed is not None:
        notes.append(
            f"Simulation speed (SD, batch 4, Python only waits for the interrupt): "
            f"{speed['autonomous_cycles_per_s']} per wall second, "
            f"{speed['autonomous_cycles_per_cpu_s']} per CPU second of the simulator; a "
            f"cocotb loop touching an input every cycle: {speed['loop_cycles_per_s']}; "
            f"ratio {speed['ratio']}.")
    if np.isnan(measured["rtl.cycles_over_ideal"]):
        raise RuntimeError("a layer has an ideal cycle count of 0")
    return SectionOutput(values=values, measured=measured, plots=[plot], notes=notes,
                         unavailable=unavailable, tables=tables)

"""`smartdeal sim`: run an exported network on the Verilator-simulated accelerator.

Examples
--------
    smartdeal sim --weights build/export --input x.npy
    smartdeal sim --config default --weights build/export --input x.npy --waves --out build/sim1

``--input`` is a ``.npy`` array of network inputs, ``(N, *input shape)`` or a single
item ``(*input shape)``: integers are taken as the quantized network input (they must
fit ``act_bits``), floats are quantized with the export's input scale.  The weights are
read by the accelerator's memories from the export's ``$readmemh`` images (``ce.hex``,
``basis.hex``, ``quant.hex``; the generated Verilog names the files, it is not
regenerated for new weights).  Every output element is compared with the bit-exact
reference (``golden/reference.py``); the command fails if any differs.

Writes into ``--out``: ``outputs.npy`` (integer outputs, ``(N, C, H, W)`` of the last
layer), ``summary.json`` and, with ``--waves``, ``dump.vcd`` (a trace of the whole run,
every signal of the accelerator, about 15 kB per simulated cycle, so trace a few inputs;
open it with GTKWave or Surfer).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

__all__ = ["add_arguments", "run", "load_inputs", "accelerator_config", "RATE_FIELDS"]

#: `SDConfig` fields that set only the accelerator's speed/area trade, not the packed
#: format, the memories or the layer program: an export runs unchanged on a build that
#: differs from its configuration in these.
RATE_FIELDS = ("rebuild_cycles",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None,
                        help="preset or SDConfig JSON the accelerator is built for; must "
                             "match the export except in rebuild_cycles (default: the "
                             "export's configuration)")
    parser.add_argument("--weights", type=Path, required=True,
                        help="export folder (smartdeal export), with manifest.json and "
                             ".hex images")
    parser.add_argument("--input", type=Path, required=True, help="inputs as a .npy file")
    parser.add_argument("--out", type=Path, default=Path("build/sim_run"),
                        help="output folder (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=4,
                        help="items per accelerator start (default: %(default)s)")
    parser.add_argument("--waves", action="store_true",
                        help="dump a VCD trace of the whole run into OUT/dump.vcd")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def load_inputs(path: Path, qnet) -> np.ndarray:
    """Integer network inputs from a ``.npy`` file (quantizing floats); checks the shape."""
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read a .npy array ({exc})") from None
    shape = tuple(qnet.input_shape)
    if x.shape == shape:
        x = x[None]
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape or len(x) == 0:
        raise ValueError(f"{path}: inputs have shape {x.shape}; the network takes "
                         f"(N, {', '.join(map(str, shape))}) or one item {shape}")
    if np.issubdtype(x.dtype, np.floating):
        return qnet.quantize_input(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{path}: inputs must be integers or floats, got {x.dtype}")
    cfg = qnet.config
    if x.min() < cfg.act_min or x.max() > cfg.act_max:
        raise ValueError(f"{path}: integer inputs [{x.min()}, {x.max()}] exceed the "
                         f"{cfg.act_bits}-bit activation range [{cfg.act_min}, {cfg.act_max}]")
    return x.astype(np.int64)


def accelerator_config(export_config, want, name: str = "--config"):
    """The configuration to build the accelerator for: the export's, or ``want`` when it
    differs from it only in `RATE_FIELDS`; otherwise a ValueError naming the fields."""
    import dataclasses

    if want is None:
        return export_config
    diff = [f"{f.name}={getattr(export_config, f.name)!r} (in {name}: "
            f"{getattr(want, f.name)!r})" for f in dataclasses.fields(want)
            if f.name not in RATE_FIELDS
            and getattr(export_config, f.name) != getattr(want, f.name)]
    if diff:
        raise ValueError(f"the export was made for another configuration "
                         f"({export_config.summary()}) than {name} ({want.summary()}): "
                         f"{', '.join(diff)}; only {', '.join(RATE_FIELDS)} may differ")
    return want


def run(args: argparse.Namespace) -> int:
    from golden.export import load_export
    from golden.manifest import placement_of, read_manifest
    from golden.rtl_runner import run_network, trace_file
    from hw.config import load_config

    try:
        cfg, qnet, images = load_export(args.weights)
        manifest, _ = read_manifest(args.weights)
        if args.config is not None:
            cfg = accelerator_config(cfg, load_config(args.config),
                                     f"--config {args.config}")
        x = load_inputs(args.input, qnet)
        if args.batch < 1:
            raise ValueError(f"--batch must be >= 1, got {args.batch}")
        hex_files = {}
        for kind in ("ce", "basis", "quant"):
            info = manifest["memories"][kind]["files"].get("hex")
            if info is None:
                raise ValueError(f"{args.weights}: the export has no .hex image of the {kind} "
                                 f"memory (export with --formats hex,...)")
            hex_files[kind] = str((args.weights / info["name"]).resolve())
    except (ValueError, OSError) as exc:
        print(f"smartdeal sim: error: {exc}", file=sys.stderr)
        return 2
    placements = [placement_of(e) for e in manifest["layers"]]
    print(f"accelerator {cfg.summary()}; network {len(qnet.layers)} layers; "
          f"{len(x)} input(s), batch {args.batch}")
    res = run_network(qnet, x, batch=args.batch, config=cfg, images=images,
                      placements=placements, init_files=hex_files, waves=args.waves,
                      progress=None if args.no_progress else "RTL")
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "outputs.npy", res.outputs)
    per_item = [c / args.batch for c in res.cycles]
    summary = {
        "config": cfg.to_dict(), "items": len(x), "batch": args.batch,
        "outputs_compared": int(res.outputs.size), "mismatches": res.mismatches,
        "cycles_per_start": res.cycles, "cycles_per_item": float(np.mean(per_item)),
        "layer_cycles": dict(zip([l.name for l in qnet.layers], res.layer_cycles)),
        "ideal_layer_cycles": dict(zip([l.name for l in qnet.layers], res.ideal)),
        "counters_last_start": res.counters,
        "predictions": res.outputs.reshape(len(x), -1).argmax(axis=1).tolist(),
    }
    if args.waves:
        trace = trace_file(res.run_dir)
        if trace is not None:
            shutil.copyfile(trace, args.out / trace.name)
            summary["waves"] = str(args.out / trace.name)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"outputs compared {res.outputs.size}, mismatches {res.mismatches}; "
          f"{summary['cycles_per_item']:.0f} cycles per item")
    for name in summary["layer_cycles"]:
        print(f"  {name:10s} {summary['layer_cycles'][name]:8d} cycles "
              f"(ideal {summary['ideal_layer_cycles'][name]})")
    print(f"wrote {args.out / 'outputs.npy'}, {args.out / 'summary.json'}"
          + (f", {summary['waves']}" if "waves" in summary else ""))
    return 0 if res.mismatches == 0 else 1

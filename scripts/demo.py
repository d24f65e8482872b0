"""`smartdeal demo`: the end-to-end run on the bundled digits network (what `make demo` runs).

Examples
--------
    smartdeal demo --out build/demo
    smartdeal demo --out build/demo --images 40 --dense
    smartdeal demo --out build/demo --train          # train the checkpoint first

Stages, each printed with its time:

1. the SD checkpoint: the shipped ``golden/checkpoints/digits_sd.pt`` (or ``--train``
   runs ``smartdeal train`` into ``OUT/train`` and uses its checkpoint);
2. quantization for the accelerator configuration (`golden.qnet.build_qnet`);
3. export of the memory images in every format (``OUT/export``, `golden.export`), then
   everything below uses the network *read back from those files*;
4. Verilog of the SD accelerator into ``OUT/verilog`` (its weight memories read
   ``ce.hex`` / ``basis.hex`` / ``quant.hex`` with ``$readmemh``);
5. the network on the Verilator-simulated accelerator for the test images, the weights
   loaded from the exported ``.hex`` files, every output compared with the bit-exact
   integer reference (``golden/reference.py``); with ``--dense`` also the dense int8
   baseline against its own reference.

The summary (accuracy float / integer reference / RTL, outputs compared and mismatches,
cycles per image and MAC-lane utilisation vs the ideal per layer, weight-memory bits SD
vs dense, simulation speed) is printed and written to ``OUT/summary.json`` and
``OUT/summary.md``.  The command fails if any RTL output differs from the reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["add_arguments", "run", "summarize"]

EXPORT_FORMATS = ("hex", "memb", "coe", "mem", "mif", "bin", "npz")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("build/demo"),
                        help="output folder (default: %(default)s)")
    parser.add_argument("--config", default="default",
                        help="preset name or SDConfig JSON (default: %(default)s)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="SD checkpoint (default: the shipped digits_sd.pt)")
    parser.add_argument("--train", action="store_true",
                        help="train the checkpoint first (smartdeal train, a few minutes)")
    parser.add_argument("--images", type=int, default=None,
                        help="test images to run on the RTL (default: the whole test set)")
    parser.add_argument("--batch", type=int, default=4,
                        help="images per accelerator start (default: %(default)s)")
    parser.add_argument("--dense", action="store_true",
                        help="also run the dense int8 baseline accelerator")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


class _Stages:
    def __init__(self):
        self.times: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.times[name] = round(time.perf_counter() - t0, 2)
        print(f"   ({self.times[name]:.1f} s)", flush=True)
        return out


def _float_accuracy(checkpoint, x_test, y_test) -> float:
    import torch
    from golden.models import load_checkpoint
    model, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        pred = model(x_test).argmax(dim=1).numpy()
    return float((pred == y_test).mean())


def _layer_rows(names, measured, ideal, batch):
    rows = []
    for name, m, i in zip(names, measured, ideal):
        rows.append({"layer": name, "cycles_per_start": int(m), "ideal_per_start": int(i),
                     "cycles_per_image": m / batch, "ideal_per_image": i / batch,
                     "overhead_cycles": int(m - i),
                     "utilisation": (i / m) if m else 0.0})
    return rows


def summarize(cfg, qnet, res, y_test, acc_float, images, dense_res=None, dense_images=None,
              stage_times=None) -> dict:
    """The summary dict (see the module docstring) from the run results."""
    from hw.datapath import dense_word_bits
    n = len(res.outputs)
    rtl_pred = res.outputs.reshape(n, -1).argmax(axis=1)
    ref_pred = res.expected.reshape(n, -1).argmax(axis=1)
    y = np.asarray(y_test)[:n]
    batch = res.batch
    names = [lay.name for lay in qnet.layers]
    cycles_per_image = float(np.mean(res.cycles)) / batch
    ideal_per_image = float(sum(res.ideal)) / batch
    sd_bits = {"ce": len(images["ce"]) * cfg.ce_word_width,
               "basis": len(images["basis"]) * cfg.basis_word_bits,
               "quant": len(images["quant"]) * cfg.quant_word_bits}
    sd_weight_bits = sd_bits["ce"] + sd_bits["basis"]
    summary = {
        "config": cfg.to_dict(),
        "images": n,
        "batch": batch,
        "accuracy": {"float": acc_float,
                     "integer_reference": float((ref_pred == y).mean()),
                     "rtl": float((rtl_pred == y).mean())},
        "outputs_compared": int(res.outputs.size),
        "mismatches": res.mismatches,
        "cycles_per_image": cycles_per_image,
        "ideal_cycles_per_image": ideal_per_image,
        "mac_utilisation": ideal_per_image / cycles_per_image,
        "layers": _layer_rows(names, res.layer_cycles, res.ideal, batch),
        "sim_speed_cycles_per_s": sum(res.cycles) / max(res.run_wall_s, 1e-9),
        "sim_speed_cycles_per_cpu_s": sum(res.cycles) / max(res.run_cpu_s, 1e-9),
        "weight_memory_bits": {"sd": sd_weight_bits, "sd_detail": sd_bits},
    }
    if dense_images is not None:
        dense_bits = len(dense_images["dense"]) * dense_word_bits(cfg)
        summary["weight_memory_bits"].update({
            "dense": dense_bits,
            "dense_quant": len(dense_images["quant"]) * cfg.quant_word_bits,
            "sd_over_dense": sd_weight_bits / dense_bits})
    if dense_res is not None:
        dn = len(dense_res.outputs)
        dpred = dense_res.outputs.reshape(dn, -1).argmax(axis=1)
        summary["dense"] = {
            "accuracy_rtl": float((dpred == np.asarray(y_test)[:dn]).mean()),
            "outputs_compared": int(dense_res.outputs.size),
            "mismatches": dense_res.mismatches,
            "cycles_per_image": float(np.mean(dense_res.cycles)) / dense_res.batch,
            "layers": _layer_rows(names, dense_res.layer_cycles, dense_res.ideal,
                                  dense_res.batch)}
    if stage_times:
        summary["stage_seconds"] = stage_times
    return summary


def _markdown(s: dict) -> str:
    a = s["accuracy"]
    lines = [
        "# SmartDeal demo: digits network on the simulated accelerator", "",
        f"{s['images']} test images, {s['batch']} per accelerator start.", "",
        "| accuracy | value |", "| --- | --- |",
        f"| float SD model | {a['float']:.4f} |",
        f"| integer reference (golden/reference.py) | {a['integer_reference']:.4f} |",
        f"| RTL (Verilator) | {a['rtl']:.4f} |", "",
        f"Outputs compared: **{s['outputs_compared']}**, mismatches: **{s['mismatches']}**.",
        "",
        f"Cycles per image: **{s['cycles_per_image']:.0f}** (ideal "
        f"{s['ideal_cycles_per_image']:.0f}: kept rows per group x output positions); "
        f"MAC-lane utilisation {100 * s['mac_utilisation']:.1f} % of the ideal.", "",
        "| layer | cycles / start | ideal / start | overhead | utilisation |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in s["layers"]:
        lines.append(f"| {r['layer']} | {r['cycles_per_start']} | {r['ideal_per_start']} | "
                     f"{r['overhead_cycles']} | {100 * r['utilisation']:.1f} % |")
    w = s["weight_memory_bits"]
    lines += ["", "| weight memory | bits |", "| --- | --- |",
              f"| SD (Ce + basis) | {w['sd']} |"]
    if "dense" in w:
        lines += [f"| dense int8 baseline | {w['dense']} |",
                  f"| SD / dense | {w['sd_over_dense']:.3f} |"]
    if "dense" in s:
        d = s["dense"]
        lines += ["", f"Dense baseline RTL: accuracy {d['accuracy_rtl']:.4f}, "
                      f"{d['outputs_compared']} outputs compared, {d['mismatches']} mismatches, "
                      f"{d['cycles_per_image']:.0f} cycles per image."]
    lines += ["", f"Simulation speed: {s['sim_speed_cycles_per_s'] / 1e3:.0f} k cycles/s "
                  f"({s['sim_speed_cycles_per_cpu_s'] / 1e3:.0f} k per CPU second) while the "
                  f"accelerator runs on its own.", ""]
    if "stage_seconds" in s:
        lines += ["| stage | seconds |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in s["stage_seconds"].items()]
        lines.append("")
    return "\n".join(lines)


def _print_summary(s: dict) -> None:
    print(_markdown(s))


def run(args: argparse.Namespace) -> int:
    from golden.data import load_digits_split
    from golden.dense_baseline import dense_images, dense_qnet
    from golden.export import export_qnet, load_export
    from golden.manifest import placement_of, read_manifest
    from golden.models import DEFAULT_CHECKPOINT
    from golden.rtl_runner import accelerator_verilog, run_network
    from hw.config import load_config
    from hw.memories import SD_RAM_VERILOG
    from scripts import cli
    from scripts.verilog import bundled_qnet

    try:
        config = load_config(args.config)
        if args.batch < 1 or (args.images is not None and args.images < 1):
            raise ValueError("--batch and --images must be >= 1")
    except (ValueError, TypeError) as exc:
        print(f"smartdeal demo: error: {exc}", file=sys.stderr)
        return 2
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages()
    progress = not args.no_progress
    print(f"configuration {args.config}: {config.summary()}")

    checkpoint = args.checkpoint or Path(DEFAULT_CHECKPOINT)
    if args.train:
        rc = stages.run("train (smartdeal train)", cli.main,
                        ["train", "--out", str(out / "train")]
                        + (["--no-progress"] if not progress else []))
        if rc:
            return rc
        checkpoint = out / "train" / "digits_sd.pt"
    split = load_digits_split()
    x_test, y_test = split.x_test, split.y_test.numpy()
    n = len(x_test) if args.images is None else min(args.images, len(x_test))

    qnet, how = stages.run("quantize the checkpoint", bundled_qnet, config, checkpoint)
    print(f"   {checkpoint}: {how}")
    acc_float = _float_accuracy(checkpoint, x_test[:n], y_test[:n])

    export_dir = out / "export"
    stages.run("export memory images", export_qnet, qnet, export_dir, EXPORT_FORMATS,
               progress=progress)
    cfg, qnet_e, images = load_export(export_dir)
    manifest, _ = read_manifest(export_dir)
    placements = [placement_of(e) for e in manifest["layers"]]
    hex_files = {k: str((export_dir / manifest["memories"][k]["files"]["hex"]["name"])
                        .resolve()) for k in ("ce", "basis", "quant")}
    print(f"   {export_dir}: {', '.join(f'{k} {len(v)} words' for k, v in images.items())}")

    def write_verilog():
        vdir = out / "verilog"
        vdir.mkdir(parents=True, exist_ok=True)
        text, top = accelerator_verilog(cfg, "sd", top="sd_accel", init_files={
            "ce": "ce.hex", "basis": "basis.hex", "quant": "quant.hex"})
        # the accelerator, then sd_ram (appended by accelerator_verilog) as its own file
        core = text[:text.index(SD_RAM_VERILOG)] if SD_RAM_VERILOG in text else text
        (vdir / "sd_accel.v").write_text(core)
        (vdir / "sd_ram.v").write_text(SD_RAM_VERILOG)
        print(f"   {vdir / 'sd_accel.v'} (top sd_accel, {len(core.splitlines())} lines), "
              f"{vdir / 'sd_ram.v'}")
    stages.run("generate Verilog", write_verilog)

    x_int = qnet_e.quantize_input(x_test[:n])
    res = stages.run(f"SD accelerator RTL on {n} images (build + simulation)", run_network,
                     qnet_e, x_int, batch=args.batch, config=cfg, images=images,
                     placements=placements, init_files=hex_files,
                     progress="SD RTL" if progress else None)
    dq = dense_qnet(qnet_e)
    d_images, _ = dense_images(dq)
    dense_res = None
    if args.dense:
        dense_res = stages.run(f"dense baseline RTL on {n} images", run_network, qnet_e,
                               x_int, kind="dense", batch=args.batch, config=cfg,
                               progress="dense RTL" if progress else None)
    summary = summarize(cfg, qnet_e, res, y_test, acc_float, images, dense_res, d_images,
                        stages.times)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "summary.md").write_text(_markdown(summary))
    _print_summary(summary)
    print(f"wrote {out / 'summary.json'} and {out / 'summary.md'}")
    bad = summary["mismatches"] + (summary.get("dense", {}).get("mismatches", 0))
    if bad:
        print(f"smartdeal demo: {bad} RTL outputs differ from the reference", file=sys.stderr)
        return 1
    return 0

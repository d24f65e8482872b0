"""`smartdeal verilog`: a self-contained FPGA build folder for one configuration.

``smartdeal verilog --config PRESET|CFG.json --out DIR`` writes::

    DIR/README.md              ports, clock/reset, register map pointer, loading weights
    DIR/manifest.json          configuration, tops, ports, files (sha256), storage figures
    DIR/config.json            the SDConfig
    DIR/rtl/sd_accel.v         SD accelerator, top module `sd_accel`
    DIR/rtl/sd_dense_accel.v   dense int8 baseline, top module `sd_dense_accel`
    DIR/rtl/sd_ram.v           the $readmemh RAM both tops instantiate
    DIR/rtl/sd_mul.v           the MAC lanes' registered multiplier (DSP block), generic
    DIR/rtl/sd_mul_ecp5.v      the same module for Lattice ECP5 (MULT18X18D), used instead
                               of sd_mul.v by ECP5 builds (FuseSoC target synth_ecp5)
    DIR/mem/                   bundled network, SD images (ce, basis, quant) in every
                               format + the export manifest and storage report
    DIR/mem_dense/             the same network for the dense baseline (dense_weights,
                               dense_quant) in every format + manifest
    DIR/vivado/, DIR/quartus/  project scripts (build.tcl for SD, build_dense.tcl for dense)
    DIR/sd_<label>.core, DIR/sd_<label>_dense.core   FuseSoC cores

The weight memories of both tops read their ``.hex`` image with ``$readmemh`` (file names
without a folder; tools run in, or add, ``mem/`` / ``mem_dense/``), so new weights need
new image files, never new Verilog.

``--only NAME`` instead writes just the Verilog of registered blocks (`hw.designs`),
``<out>/<name>.v`` with top module ``sd_<name>``, the hand-written modules it instantiates
(its ``verilog_sources``) and ``config.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from hw.config import SDConfig, load_config
from hw.designs import DESIGNS, build, top_name

__all__ = ["add_arguments", "run", "write_build", "Build", "SD_TOP", "DENSE_TOP",
           "bundled_qnet", "verilog_ports"]

#: Stable top module names of the build folder (documented in its README).
SD_TOP = "sd_accel"
DENSE_TOP = "sd_dense_accel"
SD_INIT = {"ce": "ce.hex", "basis": "basis.hex", "quant": "quant.hex"}
DENSE_INIT = {"dense": "dense_weights.hex", "quant": "dense_quant.hex"}
BUILD_FORMAT = "smartdeal-build"
BUILD_VERSION = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="default",
                        help="preset name (tiny, default, large) or SDConfig JSON file "
                             "(default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("build/verilog/default"),
                        help="output folder (default: %(default)s)")
    parser.add_argument("--only", action="append", metavar="NAME", choices=sorted(DESIGNS),
                        help="write only this block's Verilog, no build folder (repeatable); "
                             "blocks: " + ", ".join(sorted(DESIGNS)))
    parser.add_argument("--formats", default="all",
                        help="memory image formats: all or a comma list of "
                             "hex,memb,coe,mem,mif,bin,npz (hex is always written: the "
                             "Verilog reads it) (default: %(default)s)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="SD checkpoint of the network whose weights fill the memories "
                             "(default: the bundled golden/checkpoints/digits_sd.pt)")
    parser.add_argument("--clock-mhz", type=float, default=100.0,
                        help="clock constraint of the vendor scripts (default: %(default)s)")


# ---------------------------------------------------------------------- helpers
def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def verilog_ports(text: str, module: str) -> list[tuple[str, str, int]]:
    """``(name, direction, width)`` of ``module``'s ports in Amaranth-generated Verilog."""
    start = re.search(rf"^module {re.escape(module)}\s*\(", text, re.M)
    if start is None:
        raise ValueError(f"module {module!r} not found in the generated Verilog")
    body = text[start.end():text.index("endmodule", start.end())]
    ports = []
    for m in re.finditer(r"^\s*(input|output|inout)\s+(?:wire\s+|reg\s+)?(?:signed\s+)?"
                         r"(?:\[(\d+):(\d+)\]\s*)?(\w+)\s*;", body, re.M):
        width = abs(int(m.group(2)) - int(m.group(3))) + 1 if m.group(2) else 1
        ports.append((m.group(4), m.group(1), width))
    return ports


def bundled_qnet(config: SDConfig, checkpoint: "Path | None" = None):
    """The bundled digits network quantized for ``config``: ``(QNet, how)``.

    The checkpoint's SD weights are used as they are when its coefficient code (lanes,
    S, exponent range, block rows, ...) matches ``config``; otherwise the weights the
    checkpoint computes with are decomposed again for ``config`` (``how`` says which).
    """
    from golden.data import load_digits_split
    from golden.layers import to_dense
    from golden.models import load_checkpoint
    from golden.qnet import CODE_FIELDS, build_qnet

    model, ck_config = load_checkpoint(checkpoint)
    split = load_digits_split()
    if all(getattr(ck_config, f) == getattr(config, f) for f in CODE_FIELDS):
        return build_qnet(model, config, split.x_train), "checkpoint SD weights"
    return (build_qnet(to_dense(model), config, split.x_train),
            "checkpoint weights decomposed again for this configuration")


@dataclass
class Build:
    """A written build folder (what `write_build` returns)."""

    root: Path
    label: str
    config: SDConfig
    sd: "object"          #: `fpga.buildinfo.BuildFiles` of the SD accelerator
    dense: "object"       #: `fpga.buildinfo.BuildFiles` of the dense baseline
    storage: dict = field(default_factory=dict)

    def make_core(self, kind: str):
        """A fresh Amaranth top of ``kind`` reading this folder's ``$readmemh`` images."""
        from hw.top import AcceleratorTop
        init = SD_INIT if kind == "sd" else DENSE_INIT
        return AcceleratorTop(self.config, kind, init_files=dict(init))


def _write_dense_images(dq, config: SDConfig, out: Path, formats, progress: bool) -> dict:
    """Dense baseline images of ``dq`` in every format + their manifest."""
    from golden import memfile
    from golden.dense_baseline import dense_images
    from hw.datapath import dense_word_bits

    images, placements = dense_images(dq)
    layout = {"dense": ("dense_weights", dense_word_bits(config), config.ce_depth),
              "quant": ("dense_quant", config.quant_word_bits, config.quant_depth)}
    out.mkdir(parents=True, exist_ok=True)
    memories = {}
    for kind, (stem, width, depth) in layout.items():
        words = images[kind]
        if len(words) > depth:
            raise ValueError(f"the dense baseline's {kind} image has {len(words)} words but "
                             f"the memory holds {depth}; raise ce_depth/quant_depth")
        entry = {"width": width, "depth": depth, "words": len(words),
                 "sha256": memfile.image_sha256(words, width), "files": {}}
        for fmt in formats:
            name = f"{stem}{memfile.FORMATS[fmt]}"
            memfile.write_memory(out / name, words, width, fmt=fmt, depth=depth,
                                 comment=f"SmartDeal dense int8 baseline, {kind} memory")
            entry["files"][fmt] = {"name": name, "sha256": _sha256(out / name)}
        memories[kind] = entry
    manifest = {"format": "smartdeal-dense-export", "version": 1, "config": config.to_dict(),
                "memories": memories,
                "layers": [{"name": lay.name, **{k: list(v) for k, v in p.items()}}
                           for lay, p in zip(dq.layers, placements)]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _storage(sd_manifest: dict, dense_manifest: dict, report: dict) -> dict:
    """Weight-memory bits of the network: SD images vs dense images (quant excluded)."""
    mem = sd_manifest["memories"]
    sd_bits = sum(mem[k]["words"] * mem[k]["width"] for k in ("ce", "basis"))
    d = dense_manifest["memories"]["dense"]
    dense_bits = d["words"] * d["width"]
    out = {"sd_bits": sd_bits, "dense_bits": dense_bits,
           "ratio": sd_bits / dense_bits if dense_bits else None,
           "sd_words": {k: mem[k]["words"] for k in ("ce", "basis", "quant")},
           "dense_words": {k: v["words"] for k, v in dense_manifest["memories"].items()}}
    total = report.get("total") if isinstance(report, dict) else None
    if isinstance(total, dict):
        out["storage_report_total"] = {k: total[k] for k in
                                       ("codes", "index", "basis", "weights", "dense_int8_bits")
                                       if k in total}
    return out


def _readme(label: str, config: SDConfig, ports, storage: dict, clock_mhz: float) -> str:
    from hw.host import Reg

    def port_rows(ps):
        return [f"| `{n}` | {d} | {w} |" for n, d, w in ps]
    regs = "\n".join(f"| `{r.name}` | `0x{int(r):02X}` |" for r in Reg)
    return "\n".join([
        f"# SmartDeal accelerator build `{label}`",
        "",
        f"Generated by `smartdeal verilog` for `{config.summary()}`.",
        f"Configuration fingerprint `{config.fingerprint()}` (register `CONFIG_ID` identifies "
        "the configuration, `PARAMS0`/`PARAMS1` its main sizes).",
        "",
        "## Tops",
        "",
        f"* `rtl/{SD_TOP}.v`, module **`{SD_TOP}`**: the SD accelerator.",
        f"* `rtl/{DENSE_TOP}.v`, module **`{DENSE_TOP}`**: the dense int8 baseline with the same "
        "ports, registers and MAC throughput (for comparisons).",
        "* `rtl/sd_ram.v`, module `sd_ram`: the `$readmemh` RAM both instantiate; add it too.",
        "* `rtl/sd_mul.v`, module `sd_mul`: the MAC lanes' registered multiplier (input and "
        "output registers around a multiply; tools map it to a DSP block); add it too. For "
        "Lattice ECP5 use `rtl/sd_mul_ecp5.v` instead (the same module on `MULT18X18D` with "
        "its own registers).",
        "",
        "Clock `clk` (rising edge) drives everything; `rst` is a synchronous, active-high "
        "reset (hold it for one clock or more). `irq` is high while `STATUS.DONE` or "
        "`STATUS.ERROR` is set.",
        "",
        "| port | direction | width |", "|---|---|---|", *port_rows(ports),
        "",
        "`s_axil_*` is an AXI4-Lite slave (16-bit byte addresses, 32-bit data), `s_axis_*` an "
        "AXI4-Stream slave and `m_axis_*` an AXI4-Stream master (32-bit `tdata`, `tlast` ends "
        "a frame). Vendor tools infer the interfaces from these names.",
        "",
        "## Register map",
        "",
        "Full description: `docs/architecture.md` of the SmartDeal repository (host interface "
        "section) and `hw/host.py`. Byte addresses:",
        "",
        "| register | address |", "|---|---|", regs,
        "",
        "## Loading weights",
        "",
        "Three ways, for the SD top and the dense top alike:",
        "",
        "1. **At elaboration (default):** the weight memories read `ce.hex`, `basis.hex`, "
        "`quant.hex` (SD, folder `mem/`) and `dense_weights.hex`, `dense_quant.hex` (dense, "
        "folder `mem_dense/`) with `$readmemh`. Run synthesis in that folder or add the files "
        "to the project (the Vivado/Quartus scripts and the FuseSoC cores do). New weights = "
        "new `.hex` files from `smartdeal export`, same Verilog.",
        "2. **In a finished bitstream:** `mem/*.mem` (Xilinx `updatemem`), `mem/*.mif` (Intel "
        "memory content editor / `quartus_cdb --update_mif`), `mem/*.coe` (Xilinx Block Memory "
        "Generator).",
        "3. **At run time:** write the memory over `s_axis` (stream frames: header "
        "`cmd << 28 | mem << 24 | address`, word count, then the words, least significant 32 "
        "bits first), while the accelerator is idle. `mem/manifest.json` gives every layer's "
        "addresses, `mem/*.bin` / `*.npz` the raw words.",
        "",
        "Then write the layer descriptors (`DESC_BASE`), `N_LAYERS`, and `CTRL.START`; poll "
        "`STATUS` or wait for `irq`.",
        "",
        "## Bundled network",
        "",
        f"Weight-memory bits (Ce + basis images vs dense int8 images): SD {storage['sd_bits']}, "
        f"dense {storage['dense_bits']}, ratio {storage['ratio']:.3f}.",
        "",
        "## Vendor flows",
        "",
        "* Vivado: `vivado -mode batch -source vivado/build.tcl` (`build_dense.tcl` for the "
        f"baseline); out-of-context, {clock_mhz:g} MHz clock constraint; reports in "
        "`vivado/reports/`.",
        "* Quartus: `quartus_sh -t quartus/build.tcl` (`build_dense.tcl`); reports in "
        "`quartus/reports/`.",
        f"* FuseSoC: `fusesoc library add sd .` then `fusesoc run --target lint "
        f"smartdeal:ip:sd_{label}` (cores `sd_{label}.core`, `sd_{label}_dense.core`).",
        "",
    ])


def write_build(config: SDConfig, out, *, label: str = "custom", formats="all",
                checkpoint: "Path | None" = None, clock_mhz: float = 100.0,
                progress: bool = True) -> Build:
    """Write the complete build folder of ``config`` into ``out`` (replaced).

    Raises
    ------
    ValueError
        When the bundled network does not fit the configuration's memories, or bad
        formats / label.
    FileNotFoundError
        When the checkpoint is missing.
    """
    from amaranth.back import verilog

    from fpga.buildinfo import BuildFiles
    from fpga.fusesoc import write_core
    from fpga.vendor import write_vendor_files
    from golden.dense_baseline import dense_qnet
    from golden.export import export_qnet, parse_formats
    from hw.dsp import FAMILY_VARIANTS, family_variant
    from hw.top import AcceleratorTop

    if not re.match(r"^[A-Za-z0-9_]+$", label):
        raise ValueError(f"build label must be letters, digits and _, got {label!r}")
    fmts = parse_formats(formats)
    if "hex" not in fmts:
        fmts = ["hex", *fmts]
    out = Path(out)
    steps = ["network", "SD images", "dense images", "SD Verilog", "dense Verilog",
             "vendor scripts", "manifest"]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(steps), desc=f"build {label}", unit="step", leave=False)

    def step(name):
        if bar is not None:
            bar.set_postfix_str(f"{name} done")
            bar.update(1)

    if out.exists():
        shutil.rmtree(out)
    (out / "rtl").mkdir(parents=True)
    qnet, how = bundled_qnet(config, checkpoint)
    step("network")
    sd_manifest = export_qnet(qnet, out / "mem", fmts, progress=False,
                              extra={"build": label, "weights": how})
    report = json.loads((out / "mem" / "storage_report.json").read_text())
    step("SD images")
    dense_manifest = _write_dense_images(dense_qnet(qnet), config, out / "mem_dense", fmts,
                                         progress)
    step("dense images")

    tops = {}
    for kind, top, init, init_dir in (("sd", SD_TOP, SD_INIT, "mem"),
                                      ("dense", DENSE_TOP, DENSE_INIT, "mem_dense")):
        comp = AcceleratorTop(config, kind, init_files=dict(init))
        text = verilog.convert(comp, name=top)
        (out / "rtl" / f"{top}.v").write_text(text)
        for name, src in comp.verilog_sources.items():
            (out / "rtl" / name).write_text(src)
        # family texts of hand-written modules (ECP5: sd_mul_ecp5.v, hw.dsp)
        family = {}
        for fam in FAMILY_VARIANTS:
            names = []
            for name, src in sorted(comp.verilog_sources.items()):
                var = family_variant(name, src, fam)
                if var is not None:
                    (out / "rtl" / var[0]).write_text(var[1])
                names.append(var[0] if var is not None else name)
            if names != sorted(comp.verilog_sources):
                family[fam] = (f"rtl/{top}.v", *(f"rtl/{n}" for n in names))
        tops[kind] = (top, text, sorted(comp.verilog_sources), init, init_dir, family)
        step(f"{kind} Verilog")

    storage = _storage(sd_manifest, dense_manifest, report)
    files = {}
    for kind, (top, text, extra, init, init_dir, family) in tops.items():
        mdir = out / init_dir
        images = {fmt: tuple(sorted(f"{init_dir}/{p.name}" for p in mdir.glob(f"*{suffix}")))
                  for fmt, suffix in (("coe", ".coe"), ("mem", ".mem"), ("mif", ".mif"))
                  if fmt in fmts}
        name = f"sd_{label}" + ("" if kind == "sd" else "_dense")
        files[kind] = BuildFiles(
            root=out, name=name, top=top,
            verilog=(f"rtl/{top}.v", *(f"rtl/{e}" for e in extra)), family_verilog=family,
            init_files=tuple(f"{init_dir}/{f}" for f in init.values()), images=images,
            clock="clk", reset="rst", clock_mhz=clock_mhz, ports=tuple(verilog_ports(text, top)),
            description=f"SmartDeal {'SD accelerator' if kind == 'sd' else 'dense int8 baseline'}"
                        f" ({label}: {config.summary()})", init_dir=init_dir)
        write_vendor_files(files[kind], script="build.tcl" if kind == "sd" else "build_dense.tcl")
        write_core(files[kind])
    step("vendor scripts")

    (out / "config.json").write_text(config.to_json() + "\n")
    (out / "README.md").write_text(_readme(label, config, files["sd"].ports, storage, clock_mhz))
    listed = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    manifest = {
        "format": BUILD_FORMAT, "version": BUILD_VERSION, "label": label,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"), "config": config.to_dict(),
        "fingerprint": config.fingerprint(),
        "tops": {kind: {"module": b.top, "verilog": list(b.verilog),
                        "init_files": list(b.init_files), "init_dir": b.init_dir,
                        "family_verilog": {f: list(v) for f, v in b.family_verilog.items()},
                        "clock": b.clock, "reset": b.reset, "reset_active": "high, synchronous",
                        "ports": [{"name": n, "direction": d, "width": w} for n, d, w in b.ports],
                        "vivado": f"vivado/{'build' if kind == 'sd' else 'build_dense'}.tcl",
                        "quartus": f"quartus/{'build' if kind == 'sd' else 'build_dense'}.tcl",
                        "fusesoc": f"{b.name}.core"}
                 for kind, b in files.items()},
        "network": {"sd_export": "mem/manifest.json", "dense_export": "mem_dense/manifest.json",
                    "weights": how, "storage": storage},
        "register_map": "docs/architecture.md (host interface), hw/host.py Reg",
        "files": {f: _sha256(out / f) for f in listed},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    step("manifest")
    if bar is not None:
        bar.close()
    return Build(root=out, label=label, config=config, sd=files["sd"], dense=files["dense"],
                 storage=storage)


# ------------------------------------------------------------------------- command
def _write_blocks(args, config) -> int:
    from amaranth.back import verilog

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(config.to_json() + "\n")
    print(f"config {args.config}: {config.summary()}")
    print(f"  wrote {args.out / 'config.json'}")
    failed = []
    for name in args.only:
        start = time.perf_counter()
        try:
            comp = build(name, config)
            text = verilog.convert(comp, name=top_name(name), emit_src=False)
        except Exception as exc:  # report every broken block, then fail
            failed.append(name)
            print(f"  FAILED {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            traceback.print_exc(limit=3, file=sys.stderr)
            continue
        path = args.out / f"{name}.v"
        path.write_text(text)
        print(f"  wrote {path} (module {top_name(name)}, {len(text.splitlines())} lines, "
              f"{time.perf_counter() - start:.1f} s)")
        # hand-written modules the block instantiates (sd_ram.v, sd_mul.v)
        for fname, src in (getattr(comp, "verilog_sources", None) or {}).items():
            (args.out / fname).write_text(src)
            print(f"  wrote {args.out / fname} (instantiated by {name})")
    if failed:
        print(f"smartdeal verilog: {len(failed)} block(s) failed: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except (ValueError, TypeError) as exc:
        print(f"smartdeal verilog: error: {exc}", file=sys.stderr)
        return 2
    if args.only:
        return _write_blocks(args, config)
    label = re.sub(r"[^A-Za-z0-9_]", "_", Path(str(args.config)).stem)
    try:
        b = write_build(config, args.out, label=label, formats=args.formats,
                        checkpoint=args.checkpoint, clock_mhz=args.clock_mhz)
    except FileNotFoundError as exc:
        print(f"smartdeal verilog: error: {exc}; train and save the network first "
              f"(`smartdeal train`) or pass --checkpoint", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"smartdeal verilog: error: {exc}", file=sys.stderr)
        return 2
    print(f"config {args.config}: {config.summary()}")
    print(f"wrote {b.root}/ (tops {b.sd.top}, {b.dense.top}; weight bits SD/dense "
          f"{b.storage['sd_bits']}/{b.storage['dense_bits']} = {b.storage['ratio']:.3f})")
    for rel in ("README.md", "manifest.json", *b.sd.verilog, f"rtl/{DENSE_TOP}.v",
                "vivado/build.tcl", "quartus/build.tcl", f"{b.sd.name}.core"):
        print(f"  {rel}")
    return 0

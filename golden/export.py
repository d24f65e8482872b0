"""Export a network into memory images + manifest + storage report, and load it back.

Directory layout written by `export_qnet` (``docs/export.md``)::

    manifest.json            format version, SDConfig, layers, addresses, scales, checksums
    storage_report.md/.json  per-layer bits (codes, index, basis, scales) and ratios
    ce.<suffix>              the coefficient memory image, one file per format
    basis.<suffix>           the basis memory image
    quant.<suffix>           the bias / requantization memory image

Everything is written into a temporary sibling directory first and moved into place
at the end, so a directory with a manifest is always complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from golden import memfile
from golden.manifest import (MANIFEST_NAME, ManifestError, build_manifest, file_sha256,
                             placement_of, read_manifest, write_manifest)
from golden.pack import (FORMAT_VERSION, MEMORIES, PackedNetwork, memory_depth, memory_width,
                         pack_layers, packed_storage_bits, unpack_layer)
from golden.qnet import DEFAULT_INPUT_SCALE, QLayer, QNet, build_qnet
from hw.config import SDConfig

__all__ = ["ALL_FORMATS", "REPORT_NAME", "parse_formats", "storage_report",
           "storage_report_markdown", "export_qnet", "export_network", "load_export",
           "verify_export", "report_from_files", "qlayer_from_entry", "ExportError",
           "READ_PREFERENCE", "load_model"]

ALL_FORMATS: tuple[str, ...] = tuple(memfile.FORMATS)
REPORT_NAME = "storage_report"
#: formats `load_export` reads by default, first present wins
READ_PREFERENCE = ("npz", "bin", "hex", "memb", "mem", "coe", "mif")


class ExportError(ValueError):
    """An export directory that cannot be written or does not verify."""


def parse_formats(spec: "str | Iterable[str]") -> list[str]:
    """``"hex,coe"`` / ``"all"`` / a list -> validated format keys, in the given order."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [s.strip().lower() for s in items if s.strip()]
    if items == ["all"]:
        return list(ALL_FORMATS)
    bad = [s for s in items if s not in memfile.FORMATS]
    if bad or not items:
        raise ValueError(f"unknown memory format(s) {bad or items!r}; known: "
                         f"{', '.join(ALL_FORMATS)} (or 'all')")
    return list(dict.fromkeys(items))


# ------------------------------------------------------------------ storage report
def _layer_report(name, kind, shape, sb: dict, packed_bits: int, cout: int) -> dict:
    weights = sb["weights"]
    wbits = sb["codes"] + sb["index"] + sb["basis"]
    return {
        "name": name, "kind": kind, "weight_shape": list(shape), "weights": weights,
        "codes": sb["codes"], "index": sb["index"], "basis": sb["basis"],
        "scales": sb["scales"], "total": sb["total"], "packed_bits": packed_bits,
        "bits_per_weight": sb["total"] / max(1, weights),
        "weight_bits_per_weight": wbits / max(1, weights),
        "dense_int8_bits": weights * 8, "fp32_bits": weights * 32,
        "ratio_vs_int8": weights * 8 / max(1, wbits),
        "ratio_vs_fp32": weights * 32 / max(1, wbits),
    }


def storage_report(qnet: QNet, packed: PackedNetwork) -> dict[str, Any]:
    """Per-layer storage in bits, counted two ways (SDWeight accounting, packed words).

    Ratios compare weight storage (codes + index + basis) with dense int8 and fp32
    weights; the bias/requantization words (``scales``) exist in the dense designs too
    and are reported separately.
    """
    cfg = qnet.config
    layers = []
    for lay, pl in zip(qnet.layers, packed.placements):
        layers.append(_layer_report(lay.name, lay.kind, lay.weight_shape,
                                    lay.sd.storage_bits().as_dict(),
                                    packed_storage_bits(cfg, pl), lay.out_channels))
    return _with_total(layers, cfg)


def _with_total(layers: list[dict], cfg: SDConfig) -> dict[str, Any]:
    tot = {k: sum(l[k] for l in layers) for k in
           ("weights", "codes", "index", "basis", "scales", "total", "packed_bits",
            "dense_int8_bits", "fp32_bits")}
    wbits = tot["codes"] + tot["index"] + tot["basis"]
    tot.update(name="total", bits_per_weight=tot["total"] / max(1, tot["weights"]),
               weight_bits_per_weight=wbits / max(1, tot["weights"]),
               ratio_vs_int8=tot["dense_int8_bits"] / max(1, wbits),
               ratio_vs_fp32=tot["fp32_bits"] / max(1, wbits))
    return {"format_version": FORMAT_VERSION, "config": cfg.summary(), "layers": layers,
            "total": tot}


def storage_report_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table."""
    head = ("| layer | kind | shape | weights | codes | index | basis | scales | total bits "
            "| packed bits | bits/weight | weight bits/weight | vs int8 | vs fp32 |")
    lines = [f"# Storage report (format v{report['format_version']})", "",
             f"Configuration: `{report['config']}`", "",
             "Bits per layer in the packed images. `total` is the SDWeight accounting "
             "(codes + index + basis + scales), `packed bits` the words x widths of the "
             "layer's spans in the three memory images; they are equal by construction and "
             "checked. `vs int8` / `vs fp32`: dense weight bits (8 / 32 per weight) over SD "
             "weight bits (codes + index + basis).", "", head,
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for l in report["layers"] + [report["total"]]:
        shape = "x".join(map(str, l["weight_shape"])) if "weight_shape" in l else ""
        lines.append(
            f"| {l['name']} | {l.get('kind', '')} | {shape} | {l['weights']} | {l['codes']} | "
            f"{l['index']} | {l['basis']} | {l['scales']} | {l['total']} | {l['packed_bits']} "
            f"| {l['bits_per_weight']:.3f} | {l['weight_bits_per_weight']:.3f} | "
            f"{l['ratio_vs_int8']:.2f}x | {l['ratio_vs_fp32']:.2f}x |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ writing
def _memory_comment(kind: str, cfg: SDConfig, packed: PackedNetwork) -> str:
    lines = [f"smartdeal packed format v{FORMAT_VERSION}: {kind} memory, "
             f"{memory_width(cfg, kind)}-bit words, depth {memory_depth(cfg, kind)}",
             f"config {cfg.summary()}"]
    for p in packed.placements:
        base, count = p.span(kind)
        lines.append(f"layer {p.name}: words {base}..{base + count - 1} ({count})")
    return "\n".join(lines)


def _prepare_out(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"{out} exists and is not a directory")
        if any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
            raise ExportError(f"{out} exists, is not empty and holds no {MANIFEST_NAME}; "
                              f"refusing to replace it (choose another --out)")
    out.parent.mkdir(parents=True, exist_ok=True)


def _move_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        old.rmdir()
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_qnet(qnet: QNet, out_dir, formats: Sequence[str] = ALL_FORMATS,
                progress: bool = True, extra: dict | None = None) -> dict[str, Any]:
    """Pack ``qnet`` and write every memory in every format, manifest and report.

    Returns the manifest dict.  Raises ValueError when the network does not fit the
    memories (`golden.pack.pack_layers`) or the output directory cannot be replaced.
    """
    formats = parse_formats(formats)
    cfg = qnet.config
    out = Path(out_dir)
    _prepare_out(out)
    packed = pack_layers(qnet.layers, cfg)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        jobs = [(k, f) for k in MEMORIES for f in formats]
        it = jobs
        if progress:
            from tqdm.auto import tqdm
            it = tqdm(jobs, desc="write memory images", unit="file", leave=False)
        memories: dict[str, dict[str, Any]] = {}
        for kind, fmt in it:
            width, depth = memory_width(cfg, kind), memory_depth(cfg, kind)
            words = packed.images[kind]
            entry = memories.setdefault(kind, {
                "width": width, "depth": depth, "words": len(words),
                "sha256": memfile.image_sha256(words, width), "files": {}})
            name = f"{kind}{memfile.FORMATS[fmt]}"
            memfile.write_memory(tmp / name, words, width, fmt=fmt, depth=depth,
                                 comment=_memory_comment(kind, cfg, packed))
            entry["files"][fmt] = {"name": name, "sha256": file_sha256(tmp / name)}
        manifest = build_manifest(qnet, packed, memories, extra)
        report = storage_report(qnet, packed)
        for lrep in report["layers"]:
            if lrep["packed_bits"] != lrep["total"]:
                raise AssertionError(f"layer {lrep['name']}: packed bits {lrep['packed_bits']} "
                                     f"!= SDWeight storage bits {lrep['total']}")
        (tmp / f"{REPORT_NAME}.json").write_text(json.dumps(report, indent=1) + "\n")
        (tmp / f"{REPORT_NAME}.md").write_text(storage_report_markdown(report))
        write_manifest(tmp / MANIFEST_NAME, manifest)     # last: marks the set complete
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def export_network(model, config: SDConfig, out_dir, formats: Sequence[str] = ALL_FORMATS,
                   calib_images=None, *, input_scale: float = DEFAULT_INPUT_SCALE,
                   method: str = "percentile", percentile: float = 99.9,
                   decompose_options: dict | None = None, progress: bool = True,
                   extra: dict | None = None) -> QNet:
    """Quantize ``model`` (`golden.qnet.build_qnet`) and export it; returns the `QNet`."""
    if calib_images is None:
        raise ValueError("export_network needs calibration images (training inputs)")
    qnet = build_qnet(model, config, calib_images, input_scale=input_scale, method=method,
                      percentile=percentile, decompose_options=decompose_options,
                      progress=progress)
    export_qnet(qnet, out_dir, formats, progress=progress, extra=extra)
    return qnet


# ------------------------------------------------------------------ reading
def _check_file(dir_: Path, info: dict, kind: str, fmt: str) -> Path:
    path = dir_ / info["name"]
    if not path.is_file():
        raise ExportError(f"{path}: listed in the manifest ({kind}, {fmt}) but missing")
    got = file_sha256(path)
    if got != info["sha256"]:
        raise ExportError(f"{path}: sha256 {got} does not match the manifest "
                          f"({info['sha256']}); the file was changed or corrupted")
    return path


def _read_image(dir_: Path, manifest: dict, kind: str, fmt: str, check_file: bool) -> list[int]:
    mem = manifest["memories"][kind]
    info = mem["files"][fmt]
    path = _check_file(dir_, info, kind, fmt) if check_file else dir_ / info["name"]
    words = memfile.read_memory(path, mem["width"], fmt=fmt, depth=mem["depth"],
                                count=mem["words"])
    got = memfile.image_sha256(words, mem["width"])
    if got != mem["sha256"]:
        raise ExportError(f"{path}: the {kind} image read back has sha256 {got}, the manifest "
                          f"records {mem['sha256']}")
    return words


def verify_export(out_dir) -> dict[str, dict[str, str]]:
    """Check every file's checksum and that every reader gives back the same image.

    Returns ``{kind: {fmt: "ok"}}``; raises `ExportError` / `ManifestError` /
    `golden.memfile.MemFileError` on the first problem.
    """
    d = Path(out_dir)
    manifest, _ = read_manifest(d)
    result: dict[str, dict[str, str]] = {}
    for kind in MEMORIES:
        for fmt in manifest["memories"][kind]["files"]:
            _read_image(d, manifest, kind, fmt, check_file=True)
            result.setdefault(kind, {})[fmt] = "ok"
    return result


def qlayer_from_entry(entry: dict, config: SDConfig, images: dict[str, list[int]]) -> QLayer:
    """Rebuild one `QLayer` from its manifest record and the memory images."""
    name = entry["name"]
    sd, bias, mult, shift = unpack_layer(config, images, placement_of(entry),
                                         entry["weight_shape"], entry["scales"]["basis"], name)
    if sd.kind != entry["kind"]:
        raise ManifestError(f"layer {name}: kind {entry['kind']!r} does not match weight shape "
                            f"{entry['weight_shape']}")
    from golden.qnet import accumulator_bound
    bound = accumulator_bound(sd, bias, bool(entry.get("in_relu", False)))
    return QLayer(name=name, sd=sd, relu=entry["relu"], stride=tuple(entry["stride"]),
                  padding=tuple(entry["padding"]), in_shape=tuple(entry["in_shape"]),
                  out_shape=tuple(entry["out_shape"]),
                  bias_float=np.asarray(entry["bias_float"], np.float64), bias_int=bias,
                  mult=mult, shift=shift, in_scale=float(entry["scales"]["input"]),
                  out_scale=float(entry["scales"]["output"]),
                  in_relu=bool(entry.get("in_relu", False)), acc_bound=bound)


def load_export(out_dir, fmt: str | None = None, verify: bool = True
                ) -> tuple[SDConfig, QNet, dict[str, list[int]]]:
    """Load an export: ``(config, qnet, images)`` with ``images[kind]`` a word list.

    ``fmt`` picks the file format to read (default: the first of `READ_PREFERENCE`
    present).  With ``verify`` every file's checksum is checked first.
    """
    d = Path(out_dir)
    manifest, cfg = read_manifest(d)
    if verify:
        for kind in MEMORIES:
            for f, info in manifest["memories"][kind]["files"].items():
                _check_file(d, info, kind, f)
    images = {}
    for kind in MEMORIES:
        files = manifest["memories"][kind]["files"]
        choice = fmt or next((f for f in READ_PREFERENCE if f in files), None)
        if choice not in files:
            raise ExportError(f"{d}: no {fmt or 'readable'} file for the {kind} memory "
                              f"(manifest lists {sorted(files)})")
        images[kind] = _read_image(d, manifest, kind, choice, check_file=False)
    layers = [qlayer_from_entry(e, cfg, images) for e in manifest["layers"]]
    inp = manifest["input"]
    qnet = QNet(config=cfg, input_shape=tuple(inp["shape"]), input_scale=float(inp["scale"]),
                layers=layers, calibration=dict(manifest.get("calibration", {})))
    return cfg, qnet, images


def report_from_files(out_dir) -> dict[str, Any]:
    """Recompute the storage report from the manifest and the memory images alone."""
    cfg, qnet, images = load_export(out_dir)
    manifest, _ = read_manifest(out_dir)
    layers = []
    for lay, entry in zip(qnet.layers, manifest["layers"]):
        layers.append(_layer_report(lay.name, lay.kind, lay.weight_shape,
                                    lay.sd.storage_bits().as_dict(),
                                    packed_storage_bits(cfg, placement_of(entry)),
                                    lay.out_channels))
    return _with_total(layers, cfg)


# ------------------------------------------------------------------ model files
def _state_dict_of(obj) -> dict | None:
    """The tensor dict inside a plain checkpoint, or None."""
    if isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj):
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor)
                                                         for v in inner.values()):
                return inner
    return None


def _model_from_state(state: dict, path: Path, config: SDConfig | None,
                      arch: str = "DigitsCNN"):
    """Build ``arch`` from a dense or SD state dict; SD layers are found by their keys."""
    from golden.models import ARCHS, sd_shell
    model = ARCHS[arch]()
    sd_names = sorted({k[:-2] for k in state if k.endswith(".C")})
    if sd_names and config is None:
        raise ValueError(f"{path}: holds SD layers {sd_names} but no configuration; pass "
                         f"--config (the configuration they were decomposed for)")
    if sd_names:
        sd_shell(model, sd_names, config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ValueError(f"{path}: not a {arch} state dict: {' '.join(first[:3])}") from None
    for name, param in state.items():
        if param.is_floating_point() and not torch.isfinite(param).all():
            raise ValueError(f"{path}: tensor {name!r} contains NaN or inf")
    model.eval()
    return model


def load_model(path, config: "SDConfig | None" = None):
    """Load a model file for export; returns ``(model, config, kind)``.

    Accepts an SD checkpoint (`golden.models.load_checkpoint`; its configuration is
    used unless ``config`` is given), a plain PyTorch checkpoint or state dict of a
    ``DigitsCNN`` (dense layers are decomposed at export under ``config``, default
    preset when None), or a ``.safetensors`` file with such a state dict (its
    metadata may carry ``config`` as JSON).  ``kind`` is ``"sd-checkpoint"``,
    ``"state-dict"`` or ``"safetensors"``.

    Raises ValueError naming the file when it is not a model.
    """
    from hw.config import load_config
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such model file")
    if p.suffix == ".safetensors":
        try:
            from safetensors import safe_open
            from safetensors.torch import load_file
            state = load_file(str(p))
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as exc:     # the library raises several unrelated types
            raise ValueError(f"{p}: not a readable .safetensors file ({exc})") from None
        if config is None and "config" in meta:
            try:
                config = SDConfig.from_json(meta["config"])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{p}: metadata 'config' is invalid: {exc}") from None
        cfg = config or load_config(None)
        return _model_from_state(state, p, cfg), cfg, "safetensors"
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:         # pickle, zip and torch errors all mean "not a model"
        raise ValueError(f"{p}: not a PyTorch checkpoint (torch.load: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    from golden.models import CHECKPOINT_FORMAT, load_checkpoint
    if isinstance(blob, dict) and blob.get("format") == CHECKPOINT_FORMAT:
        model, ck_cfg = load_checkpoint(p)
        return model, (config or ck_cfg), "sd-checkpoint"
    state = _state_dict_of(blob)
    if state is None:
        raise ValueError(f"{p}: not a model checkpoint: expected a {CHECKPOINT_FORMAT} file "
                         f"or a state dict of tensors, found {type(blob).__name__}")
    cfg = config or load_config(None)
    return _model_from_state(state, p, cfg), cfg, "state-dict"

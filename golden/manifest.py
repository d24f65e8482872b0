"""``manifest.json`` of an export: build, validate, read, and turn back into layers.

The manifest is the one place a reader needs to interpret the memory images: the
format version, the `SDConfig`, the input quantizer, every layer's geometry, block
partition, base addresses and word counts, scales, and a checksum of every memory image
and every file.  Floats are written with Python's shortest round-trip repr, so scales
read back bit-identical.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from golden.pack import FORMAT_VERSION, MEMORIES, LayerPlacement, memory_depth, memory_width
from hw.config import SDConfig

__all__ = ["MANIFEST_NAME", "FORMAT_NAME", "ManifestError", "file_sha256", "layer_entry",
           "build_manifest", "validate_manifest", "read_manifest", "write_manifest",
           "placement_of"]

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "smartdeal-export"


class ManifestError(ValueError):
    """A manifest that is missing, malformed, of another version, or inconsistent."""


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _floats(a) -> list[float]:
    return [float(v) for v in np.asarray(a, dtype=np.float64).reshape(-1)]


def _ints(a) -> list[int]:
    return [int(v) for v in np.asarray(a).reshape(-1)]


def layer_entry(layer, placement: LayerPlacement) -> dict[str, Any]:
    """The manifest record of one `QLayer` placed at ``placement``."""
    sd = layer.sd
    sb = sd.storage_bits()
    return {
        "name": layer.name,
        "kind": layer.kind,
        "weight_shape": list(sd.weight_shape),
        "in_shape": list(layer.in_shape),
        "out_shape": list(layer.out_shape),
        "stride": list(layer.stride),
        "padding": list(layer.padding),
        "relu": bool(layer.relu),
        "in_relu": bool(layer.in_relu),
        "rows": sd.rows,
        "n_blocks": sd.n_blocks,
        "n_groups": sd.n_groups,
        "block_rows": sd.config.block_rows,
        "kept_rows": _ints(sd.kept_rows()),
        "density": sd.density,
        "ce": {"base": placement.ce[0], "words": placement.ce[1]},
        "basis": {"base": placement.basis[0], "words": placement.basis[1]},
        "quant": {"base": placement.quant[0], "words": placement.quant[1]},
        "scales": {
            "input": float(layer.in_scale),
            "output": float(layer.out_scale),
            "basis": _floats(sd.basis_scale),
            "weight": _floats(sd.weight_scale()),
        },
        "bias_float": _floats(layer.bias_float),
        "acc_bound": int(np.max(layer.acc_bound)) if layer.acc_bound is not None else None,
        "acc_bits_needed": int(layer.acc_bits_needed),
        "storage_bits": sb.as_dict(),
    }


def build_manifest(qnet, packed, memories: dict[str, dict[str, Any]],
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest dict of ``qnet`` packed as ``packed``; ``memories`` per kind."""
    cfg = qnet.config
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "config_fingerprint": cfg.fingerprint(),
        "input": {"shape": list(qnet.input_shape), "scale": float(qnet.input_scale),
                  "quantizer": "clamp(round_half_even(x / scale), act_min, act_max)"},
        "output": {"layer": qnet.layers[-1].name, "scale": float(qnet.output_scale)},
        "calibration": dict(qnet.calibration),
        "memories": memories,
        "layers": [layer_entry(l, p) for l, p in zip(qnet.layers, packed.placements)],
        **(extra or {}),
    }


def _need(d: dict, key: str, typ, where: str):
    if not isinstance(d, dict) or key not in d:
        raise ManifestError(f"{where}: missing key {key!r}")
    v = d[key]
    if typ is int and isinstance(v, bool) or not isinstance(v, typ):
        raise ManifestError(f"{where}.{key}: expected {getattr(typ, '__name__', typ)}, "
                            f"got {v!r}")
    return v


def validate_manifest(data: Any, path="manifest.json") -> tuple[dict, SDConfig]:
    """Check format, version and structure; return ``(data, config)``."""
    where = str(path)
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: expected a JSON object at the top level")
    fmt = data.get("format")
    if fmt != FORMAT_NAME:
        raise ManifestError(f"{where}: format is {fmt!r}, expected {FORMAT_NAME!r} "
                            f"(not a smartdeal export manifest?)")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ManifestError(f"{where}: format_version is {version!r}, this reader understands "
                            f"version {FORMAT_VERSION}")
    try:
        cfg = SDConfig.from_dict(_need(data, "config", dict, where))
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"{where}: config is invalid: {exc}") from None
    if data.get("config_fingerprint") not in (None, cfg.fingerprint()):
        raise ManifestError(f"{where}: config_fingerprint {data['config_fingerprint']!r} does "
                            f"not match the config ({cfg.fingerprint()})")
    inp = _need(data, "input", dict, where)
    _need(inp, "shape", list, f"{where}: input")
    _need(inp, "scale", (int, float), f"{where}: input")
    mems = _need(data, "memories", dict, where)
    for kind in MEMORIES:
        m = _need(mems, kind, dict, f"{where}: memories")
        w = f"{where}: memories.{kind}"
        width = _need(m, "width", int, w)
        if width != memory_width(cfg, kind):
            raise ManifestError(f"{w}.width is {width}, the config gives "
                                f"{memory_width(cfg, kind)}")
        words = _need(m, "words", int, w)
        if not 0 <= words <= memory_depth(cfg, kind):
            raise ManifestError(f"{w}.words = {words} does not fit depth "
                                f"{memory_depth(cfg, kind)}")
        _need(m, "sha256", str, w)
        files = _need(m, "files", dict, w)
        for fmt_key, f in files.items():
            _need(f, "name", str, f"{w}.files.{fmt_key}")
            _need(f, "sha256", str, f"{w}.files.{fmt_key}")
    layers = _need(data, "layers", list, where)
    if not layers:
        raise ManifestError(f"{where}: no layers")
    for i, lay in enumerate(layers):
        w = f"{where}: layers[{i}]"
        for key, typ in (("name", str), ("kind", str), ("weight_shape", list),
                         ("in_shape", list), ("out_shape", list), ("stride", list),
                         ("padding", list), ("relu", bool), ("scales", dict),
                         ("bias_float", list)):
            _need(lay, key, typ, w)
        for kind in MEMORIES:
            span = _need(lay, kind, dict, w)
            base, count = _need(span, "base", int, f"{w}.{kind}"), _need(span, "words", int,
                                                                       f"{w}.{kind}")
            if base < 0 or count < 0 or base + count > mems[kind]["words"]:
                raise ManifestError(f"{w}.{kind}: words [{base}, {base + count}) lie outside "
                                    f"the {mems[kind]['words']}-word {kind} image")
        sc = lay["scales"]
        for key in ("input", "output"):
            _need(sc, key, (int, float), f"{w}.scales")
        _need(sc, "basis", list, f"{w}.scales")
        if len(sc["basis"]) != lay["weight_shape"][0]:
            raise ManifestError(f"{w}.scales.basis has {len(sc['basis'])} entries, expected "
                                f"{lay['weight_shape'][0]} (one per output channel)")
    return data, cfg


def read_manifest(path) -> tuple[dict, SDConfig]:
    """Read and validate ``path`` (a manifest file or an export directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.is_file():
        raise ManifestError(f"{p}: no manifest (expected an export directory with "
                            f"{MANIFEST_NAME})")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{p}: not valid JSON ({exc})") from None
    return validate_manifest(data, p)


def write_manifest(path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


def placement_of(entry: dict) -> LayerPlacement:
    return LayerPlacement(entry["name"], (entry["ce"]["base"], entry["ce"]["words"]),
                          (entry["basis"]["base"], entry["basis"]["words"]),
                          (entry["quant"]["base"], entry["quant"]["words"]))

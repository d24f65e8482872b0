"""``smartdeal inspect DIR``: storage report of an export, from its files alone, and checks.

Verifies the manifest (format and version), every file's sha256, that every format's
reader gives back the recorded image, decodes every layer's packed weights, recounts
the storage bits and compares them with ``storage_report.json``.  Exit status 0 when
everything matches, 1 with a message naming the file and the problem otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, help="export directory (with manifest.json)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _compare(stored: dict, fresh: dict) -> list[str]:
    problems = []
    keys = ("weights", "codes", "index", "basis", "scales", "total", "packed_bits")
    rows_s = {l["name"]: l for l in stored.get("layers", [])}
    for l in fresh["layers"] + [fresh["total"]]:
        s = rows_s.get(l["name"]) if l["name"] != "total" else stored.get("total")
        if s is None:
            problems.append(f"layer {l['name']} missing from storage_report.json")
            continue
        for k in keys:
            if s.get(k) != l[k]:
                problems.append(f"layer {l['name']}: {k} is {l[k]} in the images, "
                                f"{s.get(k)} in storage_report.json")
    return problems


def run(args) -> int:
    from golden.export import REPORT_NAME, report_from_files, storage_report_markdown, \
        verify_export
    from golden.manifest import read_manifest
    from golden.memfile import MemFileError

    d = args.dir
    try:
        manifest, cfg = read_manifest(d)
        checks = verify_export(d)
        fresh = report_from_files(d)
        stored_path = d / f"{REPORT_NAME}.json"
        try:
            stored = json.loads(stored_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{stored_path}: unreadable ({exc})") from None
        problems = _compare(stored, fresh)
        if problems:
            raise ValueError(f"{stored_path} disagrees with the memory images: "
                             + "; ".join(problems))
    except (ValueError, OSError, MemFileError) as exc:
        print(f"smartdeal inspect: FAILED: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(fresh, indent=1))
        return 0
    print(f"{d}: smartdeal export, format v{manifest['format_version']}")
    print(f"config: {cfg.summary()}  (fingerprint {cfg.fingerprint()})")
    inp = manifest["input"]
    print(f"input: shape {tuple(inp['shape'])}, scale {inp['scale']:.6g}; output layer "
          f"{manifest['output']['layer']}, scale {manifest['output']['scale']:.6g}")
    for kind, mem in manifest["memories"].items():
        print(f"memory {kind:5s}: {mem['words']:6d} / {mem['depth']} words x {mem['width']} "
              f"bits, sha256 {mem['sha256'][:16]}...  files verified: "
              f"{', '.join(sorted(checks.get(kind, {})))}")
    print()
    for lay in manifest["layers"]:
        print(f"layer {lay['name']}: {lay['kind']} {tuple(lay['weight_shape'])} in "
              f"{tuple(lay['in_shape'])} -> {tuple(lay['out_shape'])}, stride "
              f"{tuple(lay['stride'])}, padding {tuple(lay['padding'])}, relu {lay['relu']}, "
              f"R={lay['rows']}, blocks={lay['n_blocks']}, groups={lay['n_groups']}, kept rows "
              f"{lay['kept_rows']}, ce@{lay['ce']['base']}+{lay['ce']['words']} basis@"
              f"{lay['basis']['base']}+{lay['basis']['words']} quant@{lay['quant']['base']}+"
              f"{lay['quant']['words']}, accumulator needs {lay['acc_bits_needed']} of "
              f"{cfg.acc_bits} bits")
    print()
    print(storage_report_markdown(fresh))
    print("all checksums verified; storage report matches the images")
    return 0

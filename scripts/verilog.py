"""`smartdeal verilog`: write the Verilog of every registered block for one configuration.

Writes ``<out>/<name>.v`` (top module ``sd_<name>``) for each entry of `hw.designs.DESIGNS`
(or those chosen with ``--only``) and ``<out>/config.json``, and lists what it wrote.  A block
that fails to elaborate is reported and makes the command exit 1; nothing is skipped
silently.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

from hw.config import load_config
from hw.designs import DESIGNS, build, top_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="default",
                        help="preset name (tiny, default, large) or SDConfig JSON file "
                             "(default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("build/verilog/default"),
                        help="output folder (default: %(default)s)")
    parser.add_argument("--only", action="append", metavar="NAME", choices=sorted(DESIGNS),
                        help="write only this block (repeatable); blocks: "
                             + ", ".join(sorted(DESIGNS)))


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except (ValueError, TypeError) as exc:
        print(f"smartdeal verilog: error: {exc}", file=sys.stderr)
        return 2
    from amaranth.back import verilog

    names = args.only or list(DESIGNS)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(config.to_json() + "\n")
    print(f"config {args.config}: {config.summary()}")
    print(f"  wrote {args.out / 'config.json'}")
    failed = []
    for name in names:
        start = time.perf_counter()
        try:
            text = verilog.convert(build(name, config), name=top_name(name), emit_src=False)
        except Exception as exc:  # report every broken block, then fail
            failed.append(name)
            print(f"  FAILED {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            traceback.print_exc(limit=3, file=sys.stderr)
            continue
        path = args.out / f"{name}.v"
        path.write_text(text)
        print(f"  wrote {path} (module {top_name(name)}, {len(text.splitlines())} lines, "
              f"{time.perf_counter() - start:.1f} s)")
    if failed:
        print(f"smartdeal verilog: {len(failed)} block(s) failed: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0

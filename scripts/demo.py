"""`smartdeal demo`: the end-to-end run, stage by stage.

Prints the configuration, writes the Verilog of every registered block, then runs each
later stage (train, export, RTL simulation) whose command exists, with the arguments of its
documented example moved under ``--out``.  A stage whose command is not there yet prints
``<stage>: not yet available``; a stage that fails stops the demo with its exit code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hw.config import load_config
from scripts import cli

# (stage, subcommand) in run order; arguments come from cli.COMMANDS examples.
STAGES = [("train", "train"), ("export", "export"), ("RTL run", "sim")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("build/demo"),
                        help="output folder (default: %(default)s)")
    parser.add_argument("--config", default="default",
                        help="preset name or SDConfig JSON file (default: %(default)s)")


def _stage_argv(command: str, out: Path) -> list[str]:
    """The documented example of ``command`` with its ``build/...`` paths under ``out``."""
    example = cli.COMMANDS[command][2].split()[1:]  # drop the program name
    return [str(out / a[len("build/"):]) if a.startswith("build/") else a for a in example]


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except (ValueError, TypeError) as exc:
        print(f"smartdeal demo: error: {exc}", file=sys.stderr)
        return 2
    print(f"configuration {args.config}: {config.summary()}")
    rc = cli.main(["verilog", "--config", args.config, "--out", str(args.out / "verilog")])
    if rc:
        return rc
    for stage, command in STAGES:
        if cli._load(cli.COMMANDS[command][0]) is None:
            print(f"{stage}: not yet available")
            continue
        argv = _stage_argv(command, args.out)
        print(f"{stage}: smartdeal {' '.join(argv)}")
        rc = cli.main(argv)
        if rc:
            print(f"{stage}: failed with exit code {rc}", file=sys.stderr)
            return rc
    return 0

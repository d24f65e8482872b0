"""`smartdeal`: the command-line entry point.

Each subcommand lives in its own module ``scripts/<name>.py`` exposing
``add_arguments(parser)`` and ``run(args) -> int``.  A subcommand whose module is not
there yet is still listed and says so when run.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main", "COMMANDS"]

#: name -> (module, one-line help, example)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("scripts.train", "train the digits CNN dense, convert to SD, fine-tune",
              "smartdeal train --out build/train"),
    "export": ("scripts.export", "export a model into memory images + manifest",
               "smartdeal export golden/checkpoints/digits_sd.pt --formats hex,coe --out build/export"),
    "inspect": ("scripts.inspect_cmd", "print the storage report of an export and verify checksums",
                "smartdeal inspect build/export"),
    "verilog": ("scripts.verilog", "generate Verilog for a configuration",
                "smartdeal verilog --config default --out build/verilog/default"),
    "sim": ("scripts.sim", "run an exported network on the Verilator-simulated accelerator",
            "smartdeal sim --config default --weights build/export --input x.npy"),
    "demo": ("scripts.demo", "the end-to-end run on the bundled digits network",
             "smartdeal demo --out build/demo"),
    "bench": ("scripts.bench", "run the benchmarks and regenerate docs/results.md",
              "smartdeal bench --quick"),
    "fpga-report": ("scripts.fpga_report", "open-source synthesis / P&R reports",
                    "smartdeal fpga-report"),
}


def _load(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartdeal",
        description="SmartDeal accelerator toolchain: golden model, export, RTL, FPGA flows.",
        epilog="Run 'smartdeal COMMAND --help' for the options of one command.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text, example) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           epilog=f"example: {example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module = _load(module_name)
        if module is not None:
            module.add_arguments(p)
        p.set_defaults(_module=module, _name=name)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args._module is None:
        print(f"smartdeal {args._name}: not yet available", file=sys.stderr)
        return 2
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""`smartdeal bench`: run the benchmarks, write bench/results.json, regenerate docs/results.md.

Examples
--------
    smartdeal bench                    # full run (< 30 min on 2 cores)
    smartdeal bench --quick            # reduced run (< 5 min)
    smartdeal bench --only energy rtl  # re-measure some sections, keep the others
    smartdeal bench --report-only      # regenerate docs/results.md from bench/results.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["add_arguments", "run"]

# `bench/` sits at the repository root next to `scripts/`; make it importable when the
# package list of the editable install does not include it.
_REPO = Path(__file__).resolve().parent.parent
if (_REPO / "bench" / "__init__.py").is_file() and str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from bench.runner import SECTIONS
    parser.add_argument("--quick", action="store_true",
                        help="reduced run: fewer repeats, smaller sweeps (CI-sized)")
    parser.add_argument("--only", nargs="+", metavar="SECTION", choices=list(SECTIONS),
                        help=f"run only these sections ({', '.join(SECTIONS)}); the others "
                             f"keep their previous results")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for results.json (default: bench/); plots go to "
                             "docs/img/, which docs/results.md shows")
    parser.add_argument("--docs", type=Path, default=None,
                        help="markdown report to regenerate (default: docs/results.md); "
                             "'-' to skip")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: regenerate the report from the existing results.json")


def _summary(results: dict) -> str:
    from bench.report import fmt
    lines = [f"{'section':<10} {'status':<14} {'time':>8}  reason"]
    for name, sec in results["sections"].items():
        if name not in results["sections_run"]:
            continue
        reason = sec.get("reason", "") if sec.get("status") != "ok" else ""
        lines.append(f"{name:<10} {sec['status']:<14} {sec['elapsed_s']:>7.1f}s  {reason}")
    lines.append("")
    lines.append(f"{'target':<34} {'measured':>14} {'bound':>14}  flag")
    for t in results["targets"]:
        measured = fmt(t["measured"]) if t["measured"] is not None else "-"
        bound = f"{t['op']} {fmt(t['target'])}"
        goal = " (goal)" if t["kind"] == "goal" else ""
        lines.append(f"{t['key']:<34} {measured:>14} {bound:>14}  {t['status']}{goal}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from bench.context import REPO, Context
    from bench.report import write_report
    from bench.runner import load_results, run_bench

    out_dir = Path(args.out) if args.out else REPO / "bench"
    if args.report_only:
        results = load_results(out_dir / "results.json")
        if results is None:
            print(f"smartdeal bench: no usable {out_dir / 'results.json'}; run the bench first",
                  file=sys.stderr)
            return 2
        print(f"report: {write_report(results, args.docs or REPO / 'docs' / 'results.md')}")
        return 0
    ctx = Context(quick=args.quick, out_dir=out_dir, seed=args.seed,
                  progress=not args.no_progress)
    command = "smartdeal bench" + (" --quick" if args.quick else "") + (
        f" --only {' '.join(args.only)}" if args.only else "")
    t0 = time.perf_counter()
    results = run_bench(ctx, only=args.only, command=command)
    print(_summary(results))
    print(f"\nresults: {out_dir / 'results.json'}")
    if str(args.docs) != "-":
        path = write_report(results, args.docs or REPO / "docs" / "results.md")
        print(f"report:  {path}")
    print(f"total:   {time.perf_counter() - t0:.1f} s")
    # A failed or unavailable target is a finding, not a crash: exit 0 unless a section
    # itself raised an error (a bug to look at).
    errors = [n for n in results["sections_run"]
              if results["sections"][n]["status"] == "error"]
    if errors:
        print(f"sections with errors: {errors}", file=sys.stderr)
        return 1
    return 0

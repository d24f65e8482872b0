"""`smartdeal fpga-report`: open-source synthesis and place-and-route of the presets.

For each (preset, device) of the plan it builds the folder ``smartdeal verilog`` writes
(so the measured Verilog is the delivered Verilog, with the bundled network's weights in
the memories), runs `fpga.flow.run_flow` on the SD accelerator and on the dense
baseline, and writes

* ``fpga/reports/<preset>_<device>_<design>.json`` (one per run) and
  ``fpga/reports/summary.json`` (all runs + the must-reach checks),
* ``docs/fpga.md`` (SD vs dense side by side, per-block table, critical paths, checks),
* ``docs/fpga_resources.png`` (one plot).

It also measures every registered block alone (``--no-blocks`` skips it) and places and
routes the board wrappers (ULX3S, iCEBreaker) with their pin constraints (``--no-boards``);
``--quick`` does neither and measures fewer presets.  A run that fails is reported as
failed with its error, never with figures.  Independent tool runs go to ``--jobs``
worker processes (YoWASP's nextpnr is single-threaded); each design's synthesis is shared
by the devices of its family.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

__all__ = ["add_arguments", "run", "PLAN", "BOARD_PLAN"]

#: (preset, device) pairs measured for the SD accelerator and the dense baseline (the
#: default preset is sized for the ECP5-25k; the 85k, which the ULX3S board carries, shares
#: its synthesis and adds only place and route)
PLAN: tuple[tuple[str, str], ...] = (
    ("default", "ecp5-25k"),
    ("default", "ecp5-85k"),
    ("tiny", "ice40-up5k"),
)
#: (board, preset) pairs whose board wrapper is placed and routed with --boards
BOARD_PLAN: tuple[tuple[str, str], ...] = (("ulx3s", "default"), ("icebreaker", "tiny"))
QUICK_PLAN = (("default", "ecp5-25k"), ("tiny", "ice40-up5k"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", action="append", metavar="NAME",
                        help="measure only this preset (repeatable; default: the plan "
                             + ", ".join(f"{p}@{d}" for p, d in PLAN) + ")")
    parser.add_argument("--device", action="append", metavar="NAME",
                        help="measure only on this device (repeatable)")
    parser.add_argument("--quick", action="store_true",
                        help="only " + ", ".join(f"{p}@{d}" for p, d in QUICK_PLAN)
                             + ", no blocks alone, no boards")
    parser.add_argument("--no-blocks", dest="blocks", action="store_false",
                        help="skip measuring every registered block alone (Fmax per block)")
    parser.add_argument("--no-boards", dest="boards", action="store_false",
                        help="skip placing and routing the board wrappers "
                             + ", ".join(f"{b} ({p})" for b, p in BOARD_PLAN))
    parser.add_argument("--workdir", type=Path, default=Path("build/fpga"),
                        help="scratch folder for builds, netlists and logs (default: %(default)s)")
    parser.add_argument("--reports", type=Path, default=Path("fpga/reports"),
                        help="folder of the JSON reports (default: %(default)s)")
    parser.add_argument("--doc", type=Path, default=Path("docs/fpga.md"),
                        help="markdown report (default: %(default)s); its plot goes next to it")
    parser.add_argument("--no-doc", action="store_true", help="write only the JSON reports")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1),
                        help="independent tool runs in parallel (default: the number of CPUs, "
                             "at most 4, here %(default)s); each nextpnr run is single-threaded")
    parser.add_argument("--render-only", action="store_true",
                        help="run no tool: rewrite the markdown report and plot from "
                             "<reports>/summary.json of an earlier run")


def _plan(args) -> list[tuple[str, str]]:
    from fpga.devices import DEVICES
    from hw.config import PRESETS

    for name in args.preset or ():
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    for name in args.device or ():
        if name not in DEVICES:
            raise ValueError(f"unknown FPGA device {name!r}; known devices: {sorted(DEVICES)}")
    base = QUICK_PLAN if args.quick else PLAN
    if args.preset and args.device:
        return [(p, d) for p in args.preset for d in args.device]
    plan = [(p, d) for p, d in base
            if (not args.preset or p in args.preset) and (not args.device or d in args.device)]
    if not plan and args.preset:
        plan = [(p, "ecp5-25k") for p in args.preset]
    if not plan:
        raise ValueError("nothing to measure: the --preset/--device choice matches no "
                         f"entry of the plan {list(base)}; give both --preset and --device")
    return plan


def _save(reports: Path, r: dict, name: str) -> None:
    reports.mkdir(parents=True, exist_ok=True)
    (reports / f"{name}.json").write_text(json.dumps(r, indent=2, sort_keys=True) + "\n")


def _relative(r: dict, root: Path) -> dict:
    """Paths in a result relative to the repository (reports are committed)."""
    def fix(v):
        if isinstance(v, str) and v.startswith(str(root) + os.sep):
            return os.path.relpath(v, root)
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v
    return fix(r)


def _pairs(runs: list[dict]) -> list[tuple[str, dict, dict]]:
    """(label, sd, dense) pairs of a run list, in order."""
    out = []
    for r in runs:
        if r.get("kind") == "sd":
            dense = next((d for d in runs if d.get("kind") == "dense"
                          and d.get("preset") == r.get("preset")
                          and d.get("device") == r.get("device")
                          and d.get("label") == r.get("label")), None)
            out.append((r.get("label") or r.get("preset"), r, dense))
    return out


def _render_only(args) -> int:
    from fpga import report
    from fpga.measure import write_doc

    path = args.reports / "summary.json"
    try:
        data = json.loads(path.read_text())
        runs = data["runs"]
        checks = [report.Check(c["name"], c["value"], c["bound"], c["kind"], c.get("detail", ""))
                  for c in data["checks"]]
        if "storage" in data:       # re-evaluate the targets with the current rules
            from fpga.measure import checks_for
            stores = {p: type("Stored", (), {"storage": st}) for p, st in data["storage"].items()}
            checks = checks_for(_pairs(runs), stores, data.get("blocks", []))
    except (OSError, ValueError, KeyError) as exc:
        print(f"smartdeal fpga-report: error: cannot read {path}: {exc}; run "
              f"`smartdeal fpga-report` first", file=sys.stderr)
        return 2
    doc = write_doc(args.doc, _pairs(runs), runs, checks, data.get("blocks", []),
                    data.get("boards", []), {}, data.get("seconds", 0.0),
                    extra_pairs=_pairs(data.get("empty_memory_runs", [])),
                    build_errors=data.get("build_errors", {}))
    print(f"wrote {doc}")
    return 0


def _measure_group(preset_name: str, kind: str, devices: tuple, built, work: Path,
                   build_error: str = "") -> list:
    """One design of a preset on each of ``devices``, sharing its synthesis.

    Returns one ``(run, empty_memory_run)`` per device; ``empty_memory_run`` is None
    unless the bundled network does not fit the preset (``built`` is None), in which
    case ``run`` is recorded as failed and the same RTL with empty memories is measured.
    """
    from tqdm import tqdm

    from fpga.flow import run_flow
    from fpga.measure import bare_design, design_of, failed_run

    cache: dict = {}
    out = []
    for dev in devices:
        if built is not None:
            r = run_flow(design_of(built, kind), dev, work / preset_name / dev / kind,
                         log=tqdm.write, synth_cache=cache)
            r["preset"], r["kind"], r["label"] = preset_name, kind, preset_name
            out.append((r, None))
            continue
        r = failed_run(preset_name, dev, kind,
                       f"bundled network does not fit the preset: {build_error}")
        label = f"{preset_name} (memories empty)"
        rb = run_flow(bare_design(preset_name, kind, work / "bare" / preset_name / kind), dev,
                      work / f"{preset_name}_bare" / dev / kind, log=tqdm.write,
                      synth_cache=cache)
        rb["preset"], rb["kind"], rb["label"] = preset_name, kind, label
        out.append((r, rb))
    return out


def _run_tasks(tasks: dict, jobs: int, desc: str) -> dict:
    """Run ``{key: (function, *args)}``; ``jobs`` > 1 runs them in worker processes.

    The tools are single-threaded, so independent runs in parallel use the machine's
    cores; results come back by key whatever the completion order.
    """
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc=desc, unit="task")
    done = {}
    if jobs == 1:
        for key, (fn, *fargs) in tasks.items():
            bar.set_postfix_str(" ".join(map(str, key)))
            done[key] = fn(*fargs)
            bar.update(1)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        # spawn, not fork: a forked worker inherits locks that the parent's threads
        # (tqdm's monitor) may hold at that moment, and then hangs on its first log line
        with ProcessPoolExecutor(max_workers=jobs,
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(fn, *fargs): key for key, (fn, *fargs) in tasks.items()}
            for fut in as_completed(futures):
                done[futures[fut]] = fut.result()
                bar.set_postfix_str("done: " + " ".join(map(str, futures[fut])))
                bar.update(1)
    bar.close()
    return done


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fpga import report
    from fpga.devices import DEVICES
    from fpga.measure import board_run, block_runs, build_for, checks_for, TopUnavailable
    from fpga.tools import ToolchainError, check_toolchain

    if args.render_only:
        return _render_only(args)
    if args.quick:
        args.blocks = args.boards = False
    try:
        if args.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
        plan = _plan(args)
        for family in sorted({d.split("-")[0] for _, d in plan}):
            check_toolchain(family)
    except (ValueError, ToolchainError) as exc:
        print(f"smartdeal fpga-report: error: {exc}", file=sys.stderr)
        return 2

    root = Path.cwd().resolve()
    work = args.workdir.resolve()
    start = time.monotonic()
    builds: dict = {}
    build_errors: dict = {}
    for preset_name in dict.fromkeys(p for p, _ in plan):
        try:
            builds[preset_name] = build_for(preset_name, work / "verilog" / preset_name)
        except TopUnavailable as exc:
            print(f"smartdeal fpga-report: error: {exc}", file=sys.stderr)
            return 2
        except ValueError as exc:   # the bundled network does not fit the preset
            build_errors[preset_name] = str(exc)
            tqdm.write(f"preset {preset_name}: FAILED to build with the bundled network: {exc}")

    # Independent tool runs, grouped so that each group shares one synthesis (ECP5 25k
    # and 85k of one design): one group per (preset, design); blocks alone; each board.
    tasks: dict[tuple, tuple] = {}
    for preset_name in dict.fromkeys(p for p, _ in plan):
        devs = tuple(d for p, d in plan if p == preset_name)
        for kind in ("sd", "dense"):
            tasks[("pair", preset_name, kind)] = (
                _measure_group, preset_name, kind, devs, builds.get(preset_name), work,
                build_errors.get(preset_name, ""))
    if args.blocks:
        # Blocks alone on the largest ECP5 part of the plan, so that each one fits.
        preset_name, dev = plan[0]
        ecp5 = [d for p, d in plan if p == preset_name and d.startswith("ecp5")]
        dev = max(ecp5, key=lambda d: DEVICES[d].capacity["lut"]) if ecp5 else dev
        tasks[("blocks",)] = (block_runs, preset_name, dev, work / "blocks")
    if args.boards:
        for board_name, preset_name in BOARD_PLAN:
            tasks[("board", board_name)] = (board_run, board_name, preset_name, work / "boards",
                                            None, builds.get(preset_name))
    jobs = max(1, min(args.jobs, len(tasks)))
    done = _run_tasks(tasks, jobs, desc=f"fpga-report ({jobs} job{'s' if jobs > 1 else ''})")

    pairs, runs, extra_pairs = [], [], []
    for preset_name in dict.fromkeys(p for p, _ in plan):
        got = {kind: done[("pair", preset_name, kind)] for kind in ("sd", "dense")}
        for i, dev in enumerate(d for p, d in plan if p == preset_name):
            pair, bare = [], []
            for kind in ("sd", "dense"):
                r, rb = got[kind][i]
                if rb is not None:
                    rb = _relative(rb, root)
                    _save(args.reports, rb, f"{preset_name}_{dev}_{kind}_empty")
                    bare.append(rb)
                r = _relative(r, root)
                _save(args.reports, r, f"{preset_name}_{dev}_{kind}")
                runs.append(r)
                pair.append(r)
            pairs.append((preset_name, pair[0], pair[1]))
            if bare:
                extra_pairs.append((f"{preset_name} (memories empty)", bare[0], bare[1]))
    block_results = []
    if args.blocks:
        preset_name, dev = tasks[("blocks",)][1:3]
        for r in done[("blocks",)]:
            r = _relative(r, root)
            _save(args.reports, r, f"block_{r['design']}_{preset_name}_{dev}")
            block_results.append(r)
    board_results = []
    if args.boards:
        for board_name, preset_name in BOARD_PLAN:
            r = _relative(done[("board", board_name)], root)
            _save(args.reports, r, f"board_{board_name}_{preset_name}")
            board_results.append(r)

    checks = checks_for(pairs, builds, block_results)
    summary = {"plan": [f"{p}@{d}" for p, d in plan], "seconds": round(time.monotonic() - start, 1),
               "blocks": block_results, "boards": board_results,
               "build_errors": build_errors,
               "storage": {p: b.storage for p, b in builds.items()},
               "empty_memory_runs": [r for _, a, b in extra_pairs for r in (a, b)]}
    path = report.write_json(args.reports / "summary.json", runs, checks, summary)
    print(f"wrote {path}")
    for c in checks:
        print(f"  {c.status:8s} {c.name}: {report.fmt(c.value, 3)} ({c.kind} {c.bound})")
    if not args.no_doc:
        from fpga.measure import write_doc
        doc = write_doc(args.doc, pairs, runs, checks, block_results, board_results, builds,
                        summary["seconds"], extra_pairs=extra_pairs, build_errors=build_errors)
        print(f"wrote {doc}")
    failed = [r for r in [*runs, *block_results, *board_results] if r["status"] != "ok"]
    for r in failed:
        print(f"  FAILED {r['design']} @ {r['device']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0

"""Run benchmark sections, collect their values and flags into bench/results.json.

Sections run in a fixed order (later ones reuse what earlier ones computed through
`Context.shared`).  A section that raises `NotAvailable` is recorded as "not available";
one that raises anything else is recorded as "error" with the message -- neither ever
produces a pass.  With ``only``, the sections not selected keep their entries from the
previous results.json (each section records when it ran), and all flags are recomputed.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import platform
import time
import traceback
from pathlib import Path
from typing import Sequence

from .context import REPO, Context
from .core import NOT_AVAILABLE, NotAvailable, SectionOutput, target_entry
from .targets import TARGETS

__all__ = ["SECTIONS", "run_bench", "collect_targets", "write_results", "load_results",
           "SCHEMA"]

SCHEMA = 1

#: name -> (module, one-line description).  Order = run order.
SECTIONS: dict[str, tuple[str, str]] = {
    "decompose": ("bench.decompose_speed", "decomposition speed and memory (issue 3)"),
    "accuracy": ("bench.accuracy", "digits CNN: dense vs SD fine-tuned accuracy (issue 3)"),
    "sweep": ("bench.sweep", "accuracy vs bits/weight sweep on the digits CNN (issue 8)"),
    "rtl": ("bench.rtl", "RTL cycles vs ideal, simulation speed, memory (issue 6)"),
    "energy": ("bench.energy_report", "energy SD vs dense from RTL counters (issue 8)"),
    "fpga": ("bench.fpga", "FPGA Fmax and resources from the latest fpga-report (issue 7)"),
}


def _machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count()}
    if hasattr(os, "getloadavg"):
        # Other work on the machine inflates wall-clock figures; record how busy it was.
        info["load_average_1_5_15"] = [round(v, 2) for v in os.getloadavg()]
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return info


def _jsonable(obj):
    """Make section values JSON-serialisable (Stats, numpy scalars, paths)."""
    if hasattr(obj, "as_dict"):
        return _jsonable(obj.as_dict())
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return obj


def _repo_relative(path) -> str:
    """A path inside the repository as relative to it (results.json is committed)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(p)


def run_section(name: str, ctx: Context) -> dict:
    """Run one section; always returns a record (status ok / not available / error)."""
    module_name, description = SECTIONS[name]
    started = time.perf_counter()
    record: dict = {"description": description,
                    "run_at": _dt.datetime.now().isoformat(timespec="seconds"),
                    "quick": ctx.quick}
    try:
        module = importlib.import_module(module_name)
        out = module.run(ctx)
        if not isinstance(out, SectionOutput):
            raise TypeError(f"section {name} returned {type(out).__name__}, "
                            f"expected SectionOutput")
        record.update(status="ok", values=_jsonable(out.values),
                      measured=_jsonable(out.measured), details=_jsonable(out.details),
                      plots=[_repo_relative(p) for p in out.plots], notes=list(out.notes),
                      unavailable=dict(out.unavailable), failed=dict(out.failed),
                      tables=_jsonable(out.tables))
    except NotAvailable as exc:
        record.update(status=NOT_AVAILABLE, reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - any failure is recorded, never a pass
        record.update(status="error", reason=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc(limit=8))
    record["elapsed_s"] = time.perf_counter() - started
    return record


def collect_targets(sections: dict) -> list[dict]:
    """One entry per target of `TARGETS`, flag computed from the measured value."""
    entries = []
    for spec in TARGETS:
        sec = sections.get(spec.section)
        if sec is None:
            entries.append(target_entry(spec, None, reason=f"section {spec.section} not run"))
            continue
        if sec.get("status") != "ok":
            entries.append(target_entry(
                spec, None, reason=f"section {spec.section}: {sec.get('status')}: "
                                   f"{sec.get('reason', '')}".strip()))
            continue
        measured = sec.get("measured", {}).get(spec.key)
        failed = sec.get("failed", {}).get(spec.key)
        if failed is not None and measured is None:
            entries.append(target_entry(spec, None, reason=failed, failed=True,
                                        detail=sec.get("details", {}).get(spec.key)))
            continue
        reason = None
        if measured is None:
            reason = sec.get("unavailable", {}).get(spec.key, "not measured by the section")
        entries.append(target_entry(spec, measured, reason=reason,
                                    detail=sec.get("details", {}).get(spec.key)))
    return entries


def load_results(path: Path) -> dict | None:
    """The previous results.json, or None if absent or of another schema."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


def write_results(results: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def run_bench(ctx: Context, only: Sequence[str] | None = None, command: str = "smartdeal bench",
              results_path: Path | None = None) -> dict:
    """Run the selected sections (all by default) and return the results dictionary."""
    names = list(SECTIONS) if not only else list(only)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown bench section(s) {unknown}; known: {list(SECTIONS)}")
    names = [n for n in SECTIONS if n in names]            # keep the dependency order
    results_path = Path(results_path or ctx.out_dir / "results.json")
    previous = load_results(results_path) if only else None
    sections = dict(previous["sections"]) if previous else {}
    started = time.perf_counter()
    load_at_start = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    bar = ctx.bar(names, desc="bench", total=len(names))
    for name in bar:
        bar.set_description(f"bench: {name}")
        sections[name] = run_section(name, ctx)
    results = {
        "schema": SCHEMA,
        "generated": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": command,
        "quick": ctx.quick,
        "sections_run": names,
        "elapsed_s": time.perf_counter() - started,
        "machine": {**_machine(), "load_average_at_start": load_at_start},
        "sections": {n: sections[n] for n in SECTIONS if n in sections},
    }
    results["targets"] = collect_targets(results["sections"])
    write_results(results, results_path)
    return results

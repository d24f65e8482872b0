"""Regenerate docs/results.md from bench/results.json (never edited by hand).

The page opens with one table: this project vs the SmartDeal paper's reported figures vs
the dense baseline, one metric per row with its unit and the command that produced it.
Every number is read from results.json; a figure that was not measured shows why.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from .context import REPO
from .core import FAIL, NOT_AVAILABLE, NOT_RUN, PASS
from .targets import PAPER

__all__ = ["render", "write_report", "get"]

_FLAG = {PASS: "**pass**", FAIL: "**FAIL**", NOT_AVAILABLE: "not available",
         NOT_RUN: "not run"}


def get(results: dict, path: str, default: Any = None) -> Any:
    """Value at ``section.key.subkey`` in the ``values`` of a section that ran ok."""
    section, *keys = path.split(".")
    sec = results.get("sections", {}).get(section)
    if not sec or sec.get("status") != "ok":
        return default
    node: Any = sec.get("values", {})
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return default
        node = node[k]
    return node


def fmt(value: Any, digits: int = 3) -> str:
    """Compact human formatting of a number, a Stat dict, or text."""
    if value is None:
        return "n/a"
    if isinstance(value, dict) and "median" in value:
        med, lo, hi = value["median"], value["min"], value["max"]
        if value.get("n", 1) > 1 and lo != hi:
            return f"{fmt(med, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"
        return fmt(med, digits)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        if abs(value) >= 1e3:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def _status_line(results: dict, section: str) -> str:
    sec = results.get("sections", {}).get(section)
    if sec is None:
        return "not run in any invocation yet"
    if sec.get("status") == "ok":
        return ""
    return f"{sec.get('status')}: {sec.get('reason', '')}"


# One row of the opening table: (metric, unit, project, paper, dense, command).
Row = tuple[str, str, Callable[[dict], str], str, Callable[[dict], str], str]


def _v(path: str, digits: int = 3) -> Callable[[dict], str]:
    def read(results: dict) -> str:
        value = get(results, path)
        if value is None:
            why = _status_line(results, path.split(".")[0])
            return "n/a" + (f" ({why.split(':')[0]})" if why else "")
        return fmt(value, digits)
    return read


def _const(text: str) -> Callable[[dict], str]:
    return lambda results: text


_ROWS: list[Row] = [
    ("Energy efficiency vs dense int8, weights streamed from DRAM (digits CNN)", "x",
     _v("energy.network.ratio_dram"), f"{PAPER['energy_efficiency_x']} (inference, "
     "real hardware, their networks)", _const("1"), "smartdeal bench --only energy"),
    ("Energy per image, weights from DRAM (SD / dense)", "nJ",
     _v("energy.network.sd_nj_per_image_dram"), "—",
     _v("energy.network.dense_nj_per_image_dram"), "smartdeal bench --only energy"),
    ("Energy efficiency vs dense int8, weights on chip (digits CNN)", "x",
     _v("energy.network.ratio_onchip"), "—", _const("1"), "smartdeal bench --only energy"),
    ("Test accuracy, digits CNN (SD fine-tuned / dense fp32)", "%",
     _v("accuracy.sd_finetuned_acc"), PAPER["accuracy"], _v("accuracy.dense_acc"),
     "smartdeal bench --only accuracy"),
    ("Accuracy drop vs dense fp32", "points", _v("accuracy.drop_points"),
     "negligible", _const("0"), "smartdeal bench --only accuracy"),
    ("Weight storage, everything counted (codes, index, basis, scales)", "bits/weight",
     _v("accuracy.bits_per_weight"),
     f"{PAPER['ce_bits']}-bit Ce + {PAPER['basis_bits']}-bit B per block (SmartExchange HW)",
     _const("8 (int8) / 32 (fp32)"), "smartdeal bench --only accuracy"),
    ("Best accuracy at ≤ 2.5 bits/weight (sweep)", "%", _v("sweep.best_at_2_5.acc_int"), "—",
     _v("sweep.dense_int8_acc"), "smartdeal bench --only sweep"),
    ("Weight memory bits in the accelerator, SD / dense", "ratio",
     _v("rtl.weight_memory_ratio"), "—", _const("1"), "smartdeal bench --only rtl"),
    ("Cycles per image on the RTL (SD / dense baseline)", "cycles",
     _v("rtl.sd_cycles_per_image"), "—", _v("rtl.dense_cycles_per_image"),
     "smartdeal bench --only rtl"),
    ("Worst layer cycles over ideal + pipeline fill (batch 1 and 4)", "%",
     _v("rtl.worst_over_ideal_pct"), "—",
     _v("rtl.dense_worst_over_ideal_pct"), "smartdeal bench --only rtl"),
    ("Simulated cycles per wall second, accelerator running autonomously (Verilator)",
     "cycles/s", _v("rtl.sim_cycles_per_s"), "—", _const("—"), "smartdeal bench --only rtl"),
    ("Simulation speed under Verilator vs cocotb per-cycle loop", "x",
     _v("rtl.sim_speed_ratio"), "—", _const("—"),
     "smartdeal bench --only rtl"),
    ("Decomposition time, 512×512×3×3 conv, batched", "µs/weight",
     _v("decompose.conv.batched_us_per_weight"),
     f"{PAPER['reference_us_per_weight']} (public reference code, this machine kind)",
     _const("—"), "smartdeal bench --only decompose"),
    ("Decomposition speed-up vs per-block loop, 512×512×3×3 conv", "x",
     _v("decompose.conv.speedup"), "—", _const("—"), "smartdeal bench --only decompose"),
    ("Fmax after place-and-route, ECP5-25k, default preset", "MHz",
     _v("fpga.sd.fmax_mhz"), "—", _v("fpga.dense.fmax_mhz"), "make fpga-report"),
]


_METHOD = [
    "**decompose** — `golden.bench_decompose.bench_shape` per repetition: the batched "
    "decomposition of a random 512×512×3×3 and 4096×4096 weight, and the per-block loop of "
    "the same algorithm on a slice of the same weight in the same process; speed-up = "
    "loop / batched µs per weight of that repetition. The ResNet-18-shaped set runs in a "
    "fresh process (peak resident memory of that process, torch included).",
    "**accuracy** — the pipeline of `smartdeal train` (SD conversion with the shipped "
    "pruning, 30 epochs of SD fine-tuning, one run per seed) from the shipped dense model; "
    "accuracies on the fixed 360-image test split; storage in packed format v1 with "
    "codes, row index, headers, basis and bias/requantization words counted.",
    "**sweep** — code width, basis bits, pruning fraction and threshold, each point "
    "converted from the same dense model and fine-tuned briefly (see the section); float "
    "SD and bit-exact integer reference accuracy against bits per weight.",
    "**rtl** — the digits network on the Verilator-simulated SD accelerator and dense int8 "
    "baseline (`golden.rtl_runner.run_network`, the runner of `smartdeal sim`; every output "
    "compared with `golden/reference.py`), whole network and each layer alone, batch 1 and "
    "4; layer cycles and event counters read from the accelerators' registers; simulation "
    "speed from `golden.rtl_runner.measure_sim_speed`.",
    "**energy** — the RTL event counters priced with the 45 nm energy table of Horowitz "
    "(ISSCC 2014), weights from DRAM or on chip; model and assumptions in "
    "[energy.md](energy.md).",
    "**fpga** — the latest `make fpga-report` run (`fpga/reports/*.json`), never re-run by "
    "the bench; details in [fpga.md](fpga.md).",
    "`--quick` runs fewer repetitions, shorter fine-tuning, a smaller sweep and fewer "
    "images; its figures are indicative, the full run's are the reference.",
]


def _opening_table(results: dict) -> list[str]:
    lines = ["| Metric | Unit | This project | SmartDeal paper | Dense baseline | Command |",
             "| --- | --- | --- | --- | --- | --- |"]
    for metric, unit, mine, paper, dense, command in _ROWS:
        lines.append(f"| {metric} | {unit} | {mine(results)} | {paper} | {dense(results)} "
                     f"| `{command}` |")
    return lines


def _targets_table(results: dict) -> list[str]:
    lines = ["| Target | Issue | Measured | Bound | Flag | Note |",
             "| --- | --- | --- | --- | --- | --- |"]
    for t in results.get("targets", []):
        note = t.get("reason", "")
        if t.get("kind") == "goal":
            note = ("goal, reported as measured" + (f"; {note}" if note else ""))
        lines.append(f"| {t['description']} (`{t['key']}`) | #{t['issue']} | "
                     f"{fmt(t['measured'])} {t['unit'] if t['measured'] is not None else ''} | "
                     f"{t['op']} {fmt(t['target'])} {t['unit']} | {_FLAG[t['status']]} | "
                     f"{note} |")
    return lines


def _rel(path: str, base: Path) -> str:
    p = Path(path)
    p = p if p.is_absolute() else REPO / p      # results.json keeps repository-relative paths
    return os.path.relpath(p.resolve(), base.resolve()).replace(os.sep, "/")


def render(results: dict, docs_dir: Path = REPO / "docs") -> str:
    """The markdown text of docs/results.md for ``results``."""
    mode = "quick" if results.get("quick") else "full"
    m = results.get("machine", {})
    out = [
        "# Results",
        "",
        "<!-- Generated by `smartdeal bench` from bench/results.json; do not edit by hand. -->",
        "",
        f"Last run: `{results.get('command', 'smartdeal bench')}` ({mode} run) on "
        f"{results.get('generated', '?')}, {m.get('cpus', '?')} CPUs (load average "
        f"{(m.get('load_average_at_start') or ['?'])[0]} at the start, "
        f"{(m.get('load_average_1_5_15') or ['?'])[0]} at the end), torch "
        f"{m.get('torch', '?')}; sections run in that invocation: "
        f"{', '.join(results.get('sections_run', [])) or 'none'} "
        f"({fmt(results.get('elapsed_s'))} s).  Every figure is the median over repeated "
        "runs, spread in brackets [min, max]; every ratio compares runs of one invocation.",
        "",
    ]
    out += _opening_table(results)
    out += ["", "## Method", ""] + [f"- {line}" for line in _METHOD]
    out += ["", "## Targets", "",
            "Flags are computed from the measured value (`bench/core.py: evaluate`); "
            "\"not available\" means the part that measures it is not in the tree yet "
            "(or failed, see below), \"not run\" that the step the bench reuses (FPGA "
            "reports) has not been run.", ""]
    out += _targets_table(results)
    missing = [(n, s) for n, s in results.get("sections", {}).items()
               if s.get("status") != "ok"]
    if missing:
        out += ["", "## Sections not available", ""]
        for name, sec in missing:
            out.append(f"- `{name}` ({sec.get('description', '')}): {sec.get('status')} — "
                       f"{sec.get('reason', '')}")
    for name, sec in results.get("sections", {}).items():
        if sec.get("status") != "ok":
            continue
        out += ["", f"## {name}: {sec.get('description', '')}", "",
                f"Run {sec.get('run_at', '?')} ({'quick' if sec.get('quick') else 'full'} "
                f"mode, {fmt(sec.get('elapsed_s'))} s)."]
        notes = sec.get("notes") or []
        if notes:
            out.append("")
            out += [f"- {n}" for n in notes]
        for table in sec.get("tables") or []:
            out += ["", f"**{table['title']}**", "",
                    "| " + " | ".join(table["header"]) + " |",
                    "| " + " | ".join("---" for _ in table["header"]) + " |"]
            out += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in table["rows"]]
        for plot in sec.get("plots", []):
            out += ["", f"![{name}]({_rel(plot, docs_dir)})"]
    out.append("")
    return "\n".join(out)


def write_report(results: dict, path: Path = REPO / "docs" / "results.md") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(results, path.parent))
    return path

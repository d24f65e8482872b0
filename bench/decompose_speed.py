"""Decomposition speed and memory (issue 3), measured with `golden.bench_decompose`.

Each repetition calls `golden.bench_decompose.bench_shape` once (one batched run and one
run of the per-block loop on a slice of the same weight, in the same process), so every
speed-up is a ratio of two runs made side by side; the figures are the median over the
repetitions with their min/max.  The ResNet-18-shaped set runs in a fresh child process
per repetition (its peak resident memory is the child's whole footprint); the reported
peak is the largest of the repetitions.
"""

from __future__ import annotations

import math
import time

from .context import Context
from .core import SectionOutput, Stat, require
from .plots import grouped_bars

__all__ = ["run", "SHAPES"]

SHAPES = {"conv": (512, 512, 3, 3), "fc": (4096, 4096)}
#: Seconds after which no further repetition starts (one of each shape always runs).
QUICK_BUDGET_S = 60.0
FULL_BUDGET_S = 420.0


def run(ctx: Context) -> SectionOutput:
    bd = require("golden.bench_decompose", "bench_shape", "bench_resnet18")
    reps = ctx.repeats(full=3, quick=3)
    # The loop's seconds per weight do not depend on how many filters it sees (every
    # block has the same size), so a slice keeps its runs short.
    loop_filters = {"conv": 4 if ctx.quick else 16, "fc": 2 if ctx.quick else 8}
    values: dict = {}
    measured: dict = {}
    raw: dict = {k: [] for k in SHAPES}
    budget = QUICK_BUDGET_S if ctx.quick else FULL_BUDGET_S
    t0 = time.perf_counter()
    steps = [(k, i) for i in range(reps) for k in SHAPES]
    for kind, i in ctx.bar(steps, desc="decompose"):
        if i > 0 and time.perf_counter() - t0 > budget:
            break        # at least one repetition of every shape; then the time budget
        raw[kind].append(bd.bench_shape(SHAPES[kind], seed=ctx.seed + i, repeats=1,
                                        loop_filters=loop_filters[kind]))
    done = min(len(r) for r in raw.values())
    raw = {k: r[:done] for k, r in raw.items()}
    for kind, runs in raw.items():
        v = {
            "shape": list(SHAPES[kind]), "weights": runs[0]["weights"],
            "loop_filters": loop_filters[kind], "threads": runs[0]["threads"],
            "batched_us_per_weight": Stat.of([r["batched_us_per_weight"] for r in runs],
                                             "us/weight"),
            "loop_us_per_weight": Stat.of([r["loop_us_per_weight"] for r in runs],
                                          "us/weight"),
            "speedup": Stat.of([r["speedup"] for r in runs], "x"),
            "batched_cpu_us_per_weight": Stat.of(
                [r["batched_cpu_us_per_weight"] for r in runs], "us/weight"),
            "speedup_cpu": Stat.of([r["speedup_cpu"] for r in runs], "x"),
            "code_agreement_min": min(r["equivalence"]["code_agreement"] for r in runs),
            "rel_error": Stat.of([r["rel_error"] for r in runs]),
            "bits_per_weight": runs[0]["bits_per_weight"],
        }
        values[kind] = v
        measured[f"decompose.speedup_{kind}"] = v["speedup"].median
        measured[f"decompose.us_per_weight_{kind}"] = v["batched_us_per_weight"].median
    r18_reps = ctx.repeats(full=3, quick=1)
    # Estimated from the measured conv speed, so a slow decomposition cannot blow the
    # time budget of the whole bench; a skipped run is reported, never a pass.
    r18_weights = sum(math.prod(shape) for shape in bd.RESNET18_SHAPES)
    r18_estimate = r18_weights * values["conv"]["batched_us_per_weight"].median * 1e-6
    left = budget - (time.perf_counter() - t0)
    unavailable = {}
    r18 = []
    for i in ctx.bar(range(r18_reps), desc="resnet18 set"):
        if r18_estimate > left and (ctx.quick or i > 0):
            break
        r18.append(bd.bench_resnet18(seed=ctx.seed + i))
        left = budget - (time.perf_counter() - t0)
    values["repetitions"] = done
    if not r18:
        why = (f"ResNet-18 set skipped in this {'quick' if ctx.quick else 'full'} run: "
               f"estimated {r18_estimate:.0f} s from the conv speed, {max(0.0, left):.0f} s "
               f"of the section's budget left")
        unavailable = {"decompose.resnet18_seconds": why, "decompose.resnet18_peak_gb": why}
        values["resnet18"] = None
    else:
        values["resnet18"] = {
            "weights": r18[0]["weights"], "layers": r18[0]["layers"],
            "seconds": Stat.of([r["seconds"] for r in r18], "s"),
            "us_per_weight": Stat.of([r["us_per_weight"] for r in r18], "us/weight"),
            "peak_gb": Stat.of([r["peak_gb"] for r in r18], "GB"),
            "baseline_gb": r18[0]["baseline_gb"],
            "mean_rel_error": r18[0]["mean_rel_error"],
        }
        measured["decompose.resnet18_seconds"] = values["resnet18"]["seconds"].median
        measured["decompose.resnet18_peak_gb"] = values["resnet18"]["peak_gb"].max
    kinds = list(SHAPES)
    med = {lab: [values[k][key].median for k in kinds]
           for lab, key in (("batched", "batched_us_per_weight"),
                            ("per-block loop", "loop_us_per_weight"))}
    err = {lab: [(values[k][key].min, values[k][key].max) for k in kinds]
           for lab, key in (("batched", "batched_us_per_weight"),
                            ("per-block loop", "loop_us_per_weight"))}
    plot = grouped_bars([f"{k} {'x'.join(map(str, SHAPES[k]))}" for k in kinds], med,
                        ctx.img_dir / "decompose_speed.png", "µs per weight (log)",
                        "SD decomposition: batched vs per-block loop", errors=err, log=True,
                        hline=0.15, hline_label="target 0.15 µs/weight")
    notes = [
        f"{kind}: batched {values[kind]['batched_us_per_weight']}, loop "
        f"{values[kind]['loop_us_per_weight']} (first {values[kind]['loop_filters']} filters), "
        f"speed-up {values[kind]['speedup']} (CPU time: {values[kind]['speedup_cpu']}), "
        f"codes equal on ≥ {values[kind]['code_agreement_min']:.4%} of entries"
        for kind in kinds]
    r = values["resnet18"]
    notes.append(f"ResNet-18-shaped set ({r['weights']:,} weights, {r['layers']} layers): "
                 f"{r['seconds']}, peak memory {r['peak_gb']} (torch import alone "
                 f"{r['baseline_gb']:.2f} GB)." if r else
                 unavailable["decompose.resnet18_seconds"] + ".")
    loads = [r["load_avg"] for runs in raw.values() for r in runs
             if r.get("load_avg") is not None]
    values["load_avg"] = [min(loads), max(loads)] if loads else None
    notes.append("Wall-clock figures on a shared 2-core machine include time waiting for a "
                 "core; the CPU-time speed-up is shown next to it"
                 + (f" (1-minute load average {min(loads):.1f}-{max(loads):.1f} during "
                    f"the runs)." if loads else "."))
    return SectionOutput(values=values, measured=measured, plots=[plot], notes=notes,
                         unavailable=unavailable)

"""Speed, memory and equivalence measurements of the batched decomposition.

Functions return plain dicts (the ``smartdeal bench`` decompose section calls them);
``python -m golden.bench_decompose [--quick] [--workers N]`` prints them.

* `bench_shape`: seconds per weight of `golden.decompose.decompose` on a random
  (Kaiming-normal) weight, next to the per-block loop `decompose_reference_loop` of the
  same algorithm.  The loop is timed on the first ``loop_filters`` filters (all blocks
  of a filter have the same size, so its seconds per weight do not depend on how many
  filters it sees; timing all 32 768 blocks of a 4096x4096 weight would take minutes),
  and the two implementations are compared code by code on that slice.
* `bench_resnet18`: every weight of a ResNet-18-shaped network (11.7 M weights),
  decomposed layer after layer in a fresh process whose peak resident memory is read
  from ``getrusage`` (so the figure is the process's whole footprint, torch included).

Wall-clock time is reported (``*_us_per_weight``) together with the process CPU time
(``*_cpu_us_per_weight``, summed over the worker threads) and the 1-minute load
average when the run ended (``load_avg``, None where the OS has none): on a shared
machine the wall clock also counts time spent waiting for a core.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import torch

from golden.decompose import default_workers, decompose, decompose_reference_loop
from hw.config import load_config

__all__ = ["RESNET18_SHAPES", "compare_codes", "bench_shape", "bench_resnet18", "run_all"]

#: Weight shapes of ResNet-18 (ImageNet): stem, 4 stages of basic blocks, 1x1 shortcuts, fc.
RESNET18_SHAPES: tuple[tuple[int, ...], ...] = (
    (64, 3, 7, 7),
    *[(64, 64, 3, 3)] * 4,
    (128, 64, 3, 3), (128, 128, 3, 3), (128, 64, 1, 1), (128, 128, 3, 3), (128, 128, 3, 3),
    (256, 128, 3, 3), (256, 256, 3, 3), (256, 128, 1, 1), (256, 256, 3, 3), (256, 256, 3, 3),
    (512, 256, 3, 3), (512, 512, 3, 3), (512, 256, 1, 1), (512, 512, 3, 3), (512, 512, 3, 3),
    (1000, 512),
)


def _weight(shape, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=gen) * math.sqrt(2.0 / fan_in)


def compare_codes(a, b) -> dict:
    """Agreement of two `SDWeight`s of the same weight: codes, basis and error."""
    same = (a.mask == b.mask) & (a.sign == b.sign) & ((a.exponent == b.exponent) | ~a.mask)
    ea, eb = a.extra.get("rel_error"), b.extra.get("rel_error")
    return {
        "code_agreement": float(same.float().mean()),
        "basis_agreement": float((a.basis == b.basis).float().mean()),
        "scale_max_rel_diff": float(((a.basis_scale - b.basis_scale).abs()
                                     / b.basis_scale).max()),
        "rel_error_batched": ea, "rel_error_loop": eb,
        "rel_error_rel_diff": abs(ea - eb) / max(eb, 1e-300),
    }


def _load_avg() -> float | None:
    """1-minute load average (None where ``os.getloadavg`` is unavailable)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _timed(fn, *args, **kwargs):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0, time.process_time() - c0


def bench_shape(shape, *, config=None, seed: int = 0, loop_filters: int = 32,
                repeats: int = 3, workers: int = 0) -> dict:
    """Batched vs per-block-loop decomposition of one random weight.

    Parameters
    ----------
    shape : tuple of int
        Weight shape, e.g. ``(512, 512, 3, 3)`` or ``(4096, 4096)``.
    loop_filters : int
        Filters the loop reference decomposes (timed and compared with the batched
        result of the same filters).
    repeats : int
        The batched timing is the best of this many runs.
    workers : int
        Chunk worker threads of the batched decomposition (0: one per core); the loop
        reference always runs one block at a time on one thread.

    Returns
    -------
    dict
        ``batched_us_per_weight``, ``loop_us_per_weight``, ``speedup`` (wall clock),
        their CPU-time twins, the equivalence figures of `compare_codes`, ``rel_error``,
        ``mean_iterations``, ``workers``.
    """
    cfg = load_config(config)
    w = _weight(tuple(shape), seed)
    n = w.numel()
    decompose(w[:8], cfg)                                # warm-up (allocator, kernels)
    best = best_cpu = math.inf
    for _ in range(max(1, repeats)):
        sdw, wall, cpu = _timed(decompose, w, cfg, name=str(tuple(shape)), workers=workers)
        best, best_cpu = min(best, wall), min(best_cpu, cpu)
    k = max(1, min(loop_filters, w.shape[0]))
    ref, lwall, lcpu = _timed(decompose_reference_loop, w[:k], cfg, name="loop")
    part = decompose(w[:k], cfg, name="batched")
    nk = w[:k].numel()
    out = {
        "shape": list(shape), "weights": n, "workers": default_workers(workers),
        "threads": default_workers(workers),         # threads the batched run used
        "batched_seconds": best, "batched_us_per_weight": best / n * 1e6,
        "batched_cpu_us_per_weight": best_cpu / n * 1e6,
        "loop_filters": k, "loop_seconds": lwall,
        "loop_us_per_weight": lwall / nk * 1e6, "loop_cpu_us_per_weight": lcpu / nk * 1e6,
        "rel_error": sdw.extra["rel_error"], "mean_iterations": sdw.extra["mean_iterations"],
        "bits_per_weight": sdw.storage_bits().bits_per_weight,
        "load_avg": _load_avg(),
    }
    out["speedup"] = out["loop_us_per_weight"] / out["batched_us_per_weight"]
    out["speedup_cpu"] = out["loop_cpu_us_per_weight"] / out["batched_cpu_us_per_weight"]
    out["equivalence"] = compare_codes(part, ref)
    return out


def _peak_rss_bytes() -> int:
    """Peak resident set of this process: ``VmHWM`` (Linux; reset by exec, unlike
    ``ru_maxrss``, which a fork child inherits from its parent), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _resnet18_child(config: str | None, seed: int, workers: int) -> dict:
    """Body of the child process of `bench_resnet18`."""
    cfg = load_config(config)
    base = _peak_rss_bytes()
    total = sum(math.prod(s) for s in RESNET18_SHAPES)
    seconds = cpu = 0.0
    errors = []
    for i, shape in enumerate(RESNET18_SHAPES):
        w = _weight(shape, seed + i)
        sdw, wall, c = _timed(decompose, w, cfg, name=f"layer{i}", workers=workers)
        seconds += wall
        cpu += c
        errors.append(sdw.extra["rel_error"])
        del w, sdw
    peak = _peak_rss_bytes()
    return {"weights": total, "layers": len(RESNET18_SHAPES), "seconds": seconds,
            "cpu_seconds": cpu, "us_per_weight": seconds / total * 1e6,
            "peak_gb": peak / 1e9, "baseline_gb": base / 1e9,
            "mean_rel_error": sum(errors) / len(errors),
            "workers": default_workers(workers), "load_avg": _load_avg()}


def bench_resnet18(*, config=None, seed: int = 0, workers: int = 0) -> dict:
    """Decompose all ResNet-18-shaped weights in a fresh process; time and peak memory.

    ``seconds`` is the decomposition time only (weights are generated untimed);
    ``peak_gb`` the child's peak resident set, ``baseline_gb`` its resident set after
    importing torch, before any weight existed.
    """
    cmd = [sys.executable, "-m", "golden.bench_decompose", "--resnet18-child",
           "--seed", str(seed)]
    if config is not None:
        cmd += ["--config", str(config)]
    cmd += ["--workers", str(workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ResNet-18 decomposition child failed ({proc.returncode}):\n"
                           f"{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_all(*, quick: bool = False, workers: int = 0, config=None,
            seed: int = 0) -> dict:
    """The issue's measurements: 512x512x3x3 conv, 4096x4096 FC, ResNet-18 set."""
    reps = 1 if quick else 3
    lf = 8 if quick else 32
    out = {
        "conv": bench_shape((512, 512, 3, 3), config=config, seed=seed, loop_filters=lf,
                            repeats=reps, workers=workers),
        "fc": bench_shape((4096, 4096), config=config, seed=seed + 1, loop_filters=lf // 2,
                          repeats=reps, workers=workers),
    }
    if not quick:
        out["resnet18"] = bench_resnet18(config=config, seed=seed, workers=workers)
    return out


def _fmt_load(load: float | None) -> str:
    return "n/a" if load is None else f"{load:.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m golden.bench_decompose",
                                description="Measure the batched SD decomposition.")
    p.add_argument("--quick", action="store_true", help="fewer repeats, no ResNet-18 run")
    p.add_argument("--workers", type=int, default=0,
                   help="chunk worker threads (default 0: one per core)")
    p.add_argument("--config", default=None, help="preset name or JSON (default: default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--resnet18-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.resnet18_child:
        print(json.dumps(_resnet18_child(args.config, args.seed, args.workers)))
        return 0
    res = run_all(quick=args.quick, workers=args.workers, config=args.config, seed=args.seed)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    for key in ("conv", "fc"):
        r = res[key]
        eq = r["equivalence"]
        print(f"{key:5} {str(tuple(r['shape'])):18} batched {r['batched_us_per_weight']:.3f} "
              f"us/w (cpu {r['batched_cpu_us_per_weight']:.3f})  loop "
              f"{r['loop_us_per_weight']:.3f} us/w  speedup {r['speedup']:.1f}x "
              f"(cpu {r['speedup_cpu']:.1f}x)  codes equal {eq['code_agreement']:.5f}  "
              f"rel.err {r['rel_error']:.4f}  workers {r['workers']}  "
              f"load {_fmt_load(r['load_avg'])}")
    if "resnet18" in res:
        r = res["resnet18"]
        print(f"resnet18 {r['weights'] / 1e6:.2f} M weights: {r['seconds']:.1f} s "
              f"(cpu {r['cpu_seconds']:.1f} s, {r['us_per_weight']:.3f} us/w), peak "
              f"{r['peak_gb']:.2f} GB (baseline {r['baseline_gb']:.2f} GB)  "
              f"load {_fmt_load(r['load_avg'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Accuracy vs compression on the digits CNN: exponent code width, basis bits, structural
pruning fraction and threshold, plotted against bits per weight.

Every point starts from the same trained dense model (`bench.digits.dense_model`),
converts it with `golden.layers.convert_to_sd` under a configuration that differs from
the default preset only in the swept knob, fine-tunes it briefly in SD form
(`golden.training.finetune_sd` with its defaults, `FINETUNE_EPOCHS` epochs, 5 in
``--quick``; half the 30 epochs of ``smartdeal train``, enough to show which settings
recover), and measures

* test accuracy of the float SD network (the weights the hardware rebuilds),
* test accuracy of the bit-exact integer reference (`golden.qnet`, int8 activations),
* bits per weight in packed format v1, everything counted (codes, row index and
  headers, basis words, bias/requantization words), averaged over all layers.

Knobs (``exp_bits`` 2/3/4 are 3/4/5-bit coefficient codes with sign):

* code width: ``exp_bits`` in {2, 3, 4} with the full exponent range of the field,
  ``[-(2**exp_bits - 2), 0]``;
* basis bits in {4, 6, 8};
* structural pruning fraction of kernel rows per group of ``lanes`` filters, applied to
  ``conv2`` and ``conv3`` (94 % of the weights); ``conv1`` (one input channel, 3 rows per
  filter) is never pruned and ``fc`` is exempt, as in the reference implementation;
* element threshold with row thresholding (rows whose L1 norm is below 5x the threshold
  are dropped), which only saves storage when a row becomes zero for a whole group.

Points are run once (one fine-tuning seed); the spread of fine-tuning over seeds is
measured by the accuracy section, whose result (the shipped setting, fully fine-tuned)
is drawn on the same plot when it ran in the same invocation.
"""

from __future__ import annotations

import itertools
import math

from . import digits
from .context import Context
from .core import SectionOutput, require
from .plots import accuracy_vs_bits, pareto_front

__all__ = ["run", "sweep_points", "point_config", "FINETUNE_EPOCHS"]

FINETUNE_EPOCHS = 15
FINETUNE_EPOCHS_QUICK = 5
BASE = {"exp_bits": 3, "basis_bits": 8, "prune": 0.5, "threshold": None}


def sweep_points(quick: bool) -> list[dict]:
    """The sweep grid: code width x basis bits x pruning, and a threshold line."""
    if quick:
        return ([dict(BASE, exp_bits=e) for e in (2, 3, 4)]
                + [dict(BASE, prune=0.3), dict(BASE, exp_bits=2, prune=0.8)])
    grid = [dict(BASE, exp_bits=e, basis_bits=b, prune=p)
            for e, b, p in itertools.product((2, 3, 4), (4, 6, 8), (0.0, 0.3, 0.5, 0.7, 0.85))]
    grid += [dict(BASE, threshold=t) for t in (0.02, 0.05, 0.1)]
    return grid


def point_config(base, exp_bits: int, basis_bits: int):
    """``base`` with the code width (full exponent range of the field) and basis bits.

    A wider exponent range makes rebuilt weights and products wider; the accumulator
    keeps the default's headroom over one product (``acc_bits - product_bits``), so
    every point is a configuration the hardware can build (5-bit codes: 40 bits).
    """
    headroom = base.acc_bits - base.product_bits
    wide = base.replace(exp_bits=exp_bits, exp_min=-((1 << exp_bits) - 2), exp_max=0,
                        basis_bits=basis_bits, acc_bits=64)
    return wide.replace(acc_bits=max(base.acc_bits, wide.product_bits + headroom))


def _prune_spec(fraction: float) -> dict | None:
    if fraction <= 0:
        return None
    return {"conv2": fraction, "conv3": fraction}


def _measure_point(ctx: Context, dense, base_cfg, p: dict, finetune_epochs: int) -> dict:
    training = require("golden.training", "finetune_sd")
    cfg = point_config(base_cfg, p["exp_bits"], p["basis_bits"])
    opts = {}
    if p["threshold"] is not None:
        opts = {"threshold": p["threshold"], "row_threshold": True}
    model = digits.sd_from_dense(dense, cfg, prune=_prune_spec(p["prune"]), **opts)
    out = dict(p, code_bits=1 + p["exp_bits"], acc_bits=cfg.acc_bits)
    out["acc_float_decomposed"] = digits.float_accuracy(ctx, model)
    if finetune_epochs:
        d = digits.data(ctx)
        training.finetune_sd(model, d.x_train, d.y_train, epochs=finetune_epochs,
                             seed=ctx.seed)
        model.eval()
    out["finetune_epochs"] = finetune_epochs
    out["acc_float"] = digits.float_accuracy(ctx, model)
    try:
        out["acc_int"] = digits.int_accuracy(ctx, model, cfg)
    except ValueError as exc:       # e.g. an accumulator the config cannot prove enough
        out["acc_int"] = None
        out["int_error"] = str(exc)
    st = digits.storage(model)
    out["bits_per_weight"] = st["bits_per_weight"]
    out["storage"] = st["total"]
    return out


def _best(points: list[dict], budget: float, key: str) -> dict | None:
    ok = [p for p in points if p.get(key) is not None and p["bits_per_weight"] <= budget]
    return max(ok, key=lambda p: (p[key], -p["bits_per_weight"])) if ok else None


def run(ctx: Context) -> SectionOutput:
    require("golden.training", "finetune_sd", "storage_report")
    require("golden.qnet", "build_qnet")
    from hw.config import SDConfig
    base_cfg = SDConfig()
    dense, dense_info = digits.dense_model(ctx)
    ft = FINETUNE_EPOCHS_QUICK if ctx.quick else FINETUNE_EPOCHS
    points, failed = [], []
    for p in ctx.bar(sweep_points(ctx.quick), desc="sweep"):
        try:
            with digits.single_thread():
                points.append(_measure_point(ctx, dense, base_cfg, p, ft))
        except (ValueError, FloatingPointError) as exc:
            # a point the toolchain refuses or whose fine-tuning diverges: recorded, shown
            failed.append(dict(p, error=f"{type(exc).__name__}: {exc}"))
    if not points:
        raise RuntimeError(f"every sweep point failed; first error: {failed[0]['error']}")
    d = digits.data(ctx)
    from golden.training import evaluate
    acc_fp32 = float(evaluate(dense, d.x_test, d.y_test))
    acc_int8, bpw_int8 = digits.int8_dense_accuracy(ctx, dense,
                                                    quant_word_bits=base_cfg.quant_word_bits)
    bpw_fp32 = digits.fp32_bits_per_weight(dense)
    with_int = [i for i, p in enumerate(points) if p["acc_int"] is not None]
    front_idx = [with_int[i] for i in pareto_front(
        [(points[i]["bits_per_weight"], points[i]["acc_int"]) for i in with_int])]
    for i, p in enumerate(points):
        p["pareto"] = i in front_idx
    series = {
        f"SD integer reference (fine-tuned {ft} ep.)":
            [(p["bits_per_weight"], p["acc_int"]) for p in points if p["acc_int"] is not None],
        f"SD float (fine-tuned {ft} ep.)": [(p["bits_per_weight"], p["acc_float"])
                                            for p in points],
        "SD float, decomposed (no fine-tuning)":
            [(p["bits_per_weight"], p["acc_float_decomposed"]) for p in points],
    }
    refs = {f"dense fp32 ({acc_fp32:.1f}%)": (bpw_fp32, acc_fp32),
            f"dense int8 ({acc_int8:.1f}%)": (bpw_int8, acc_int8)}
    shipped = ctx.shared.get("accuracy_point")
    if shipped:
        refs[f"shipped setting, int. ref., fine-tuned {shipped['epochs']} ep. "
             f"({shipped['acc_int']:.1f}%)"] = (shipped["bits_per_weight"], shipped["acc_int"])
    plot = accuracy_vs_bits(
        series, refs,
        [(points[i]["bits_per_weight"], points[i]["acc_int"]) for i in front_idx],
        ctx.img_dir / "accuracy_vs_bits.png",
        title="Digits CNN: test accuracy vs storage" + (" (quick run)" if ctx.quick else ""))
    best25 = _best(points, 2.5, "acc_int")
    best35 = _best(points, 3.5, "acc_int")
    values = {
        "points": points, "failed": failed, "finetune_epochs": ft,
        "dense_training": dense_info, "dense_fp32_acc": acc_fp32, "dense_fp32_bpw": bpw_fp32,
        "dense_int8_acc": acc_int8, "dense_int8_bpw": bpw_int8,
        "pareto": [{k: points[i][k] for k in ("exp_bits", "basis_bits", "prune", "threshold",
                                              "bits_per_weight", "acc_int", "acc_float")}
                   for i in front_idx],
        "best_at_2_5": best25 and {"acc_int": best25["acc_int"],
                                   "acc_float": best25["acc_float"],
                                   "bits_per_weight": best25["bits_per_weight"],
                                   "point": {k: best25[k] for k in BASE}},
        "best_at_3_5": best35 and {"acc_int": best35["acc_int"],
                                   "acc_float": best35["acc_float"],
                                   "bits_per_weight": best35["bits_per_weight"],
                                   "point": {k: best35[k] for k in BASE}},
    }
    notes = [
        f"{len(points)} points ({len(failed)} refused); dense model: {dense_info['source']}; "
        f"each point fine-tuned {ft} epoch(s) in SD form (bucket switch) after conversion.",
        f"Dense fp32: {acc_fp32:.2f}% at {bpw_fp32:.1f} bits/weight; dense int8 "
        f"(per-channel weights, calibrated int8 activations): {acc_int8:.2f}% at "
        f"{bpw_int8:.2f} bits/weight (bias/requantization words counted).",
    ]
    if best25:
        notes.append(f"Best integer-reference accuracy at ≤ 2.5 bits/weight: "
                     f"{best25['acc_int']:.2f}% ({best25['bits_per_weight']:.2f} bits/weight, "
                     f"{values['best_at_2_5']['point']}).")
    else:
        notes.append("No sweep point reached ≤ 2.5 bits/weight.")
    notes.append("Pareto front (integer reference): " + "; ".join(
        f"{p['bits_per_weight']:.2f} b/w → {p['acc_int']:.1f}% ({1 + p['exp_bits']}-bit "
        f"codes, {p['basis_bits']}-bit basis, prune {p['prune']})" for p in values["pareto"]))
    for f in failed:
        notes.append(f"Refused point {({k: f[k] for k in BASE})}: {f['error']}")
    table = {"title": "Sweep points (accuracy in %; * = on the Pareto front)",
             "header": ["code bits", "basis bits", "prune (conv2, conv3)", "threshold",
                        "bits/weight", "float, decomposed", "float, fine-tuned",
                        "integer reference", "Pareto"],
             "rows": [[p["code_bits"], p["basis_bits"], p["prune"], p["threshold"] or "default",
                       p["bits_per_weight"], p["acc_float_decomposed"], p["acc_float"],
                       p["acc_int"], "*" if p["pareto"] else ""]
                      for p in sorted(points, key=lambda q: q["bits_per_weight"])]}
    if any(math.isnan(p["acc_float"]) for p in points):
        raise RuntimeError("a sweep point produced a NaN accuracy")
    return SectionOutput(values=values, plots=[plot], notes=notes, tables=[table])

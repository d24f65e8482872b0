"""`smartdeal train`: dense training, row pruning, SD conversion and SD fine-tuning.

Examples
--------
    smartdeal train --out build/train
    smartdeal train --out build/train --prune conv2=0.7,conv3=0.75,fc=0.4 --seed 1
    smartdeal train --out build/t --prune-epochs 0 --scope group --distill-alpha 0
    smartdeal train --out build/t --config tiny --epochs 30 --sd-epochs 20

Writes ``DIR/digits_sd.pt`` (SD checkpoint, `golden.models.load_checkpoint`),
``DIR/digits_dense.pt`` (the dense model) and ``DIR/metrics.json``, and prints the test
accuracy (dense fp32, dense after row pruning, SD after decomposition, SD after
fine-tuning; both SD figures use
the integer-basis weights the hardware rebuilds) and the storage (bits per weight with
every code, index, basis and scale bit counted; compression vs fp32 and int8).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_arguments", "run", "parse_prune"]


def parse_prune(text: str):
    """``"0.5"`` (every layer) or ``"conv2=0.45,conv3=0.55"`` (per layer) or ``"none"``."""
    text = text.strip()
    if text.lower() in ("none", "0", ""):
        return {}
    if "=" not in text:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad --prune value {text!r}") from None
    out = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad --prune item {item!r}; expected NAME=FRACTION") from None
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--config", default="default",
                        help="preset name or configuration JSON (default: default)")
    parser.add_argument("--epochs", type=int, default=60, help="dense epochs (default 60)")
    parser.add_argument("--sd-epochs", type=int, default=30,
                        help="SD fine-tuning epochs (default 30)")
    parser.add_argument("--prune", type=parse_prune, default=None,
                        help="structural pruning: FRACTION or NAME=FRACTION,... (default "
                             "golden.training.DEFAULT_PRUNE; 'none' to disable)")
    parser.add_argument("--criterion", default="energy",
                        choices=("value", "energy", "population"),
                        help="row pruning criterion (default energy)")
    parser.add_argument("--scope", default="layer", choices=("layer", "group"),
                        help="rank row records over the whole layer (default, cost-aware) "
                             "or prune the same number of rows in every group (reference)")
    parser.add_argument("--prune-epochs", type=int, default=40,
                        help="epochs of gradual row pruning of the dense model before the "
                             "conversion (default 40; 0 prunes at once)")
    parser.add_argument("--tune-augment", action="store_true",
                        help="shift augmentation during pruning and SD fine-tuning too "
                             "(default: dense training only)")
    parser.add_argument("--sd-lr", type=float, default=None,
                        help="SD fine-tuning learning rate (default: run_pipeline's)")
    parser.add_argument("--distill-alpha", type=float, default=None,
                        help="weight of the distillation loss from the dense model during "
                             "pruning and fine-tuning (default: run_pipeline's; 0 = labels "
                             "only)")
    parser.add_argument("--c-update", default="switch", choices=("switch", "sgd", "frozen"),
                        help="how coefficients train (default: bucket switch)")
    parser.add_argument("--switch-mode", default="accumulate", choices=("accumulate", "sign"),
                        help="bucket-switch counter: accumulated update (default) or the "
                             "reference's sign count")
    parser.add_argument("--bar", type=int, default=1, help="sign-mode switch bar (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="init/shuffle seed (default 0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: faster for this small "
                             "network, and robust on a shared machine)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _report(m: dict) -> str:
    lines = [
        f"test accuracy  dense fp32        {m['acc_dense_fp32']:6.2f} %",
        f"               dense row-pruned  {m['acc_dense_pruned']:6.2f} %  "
        f"(fp32, after gradual row pruning)",
        f"               SD decomposed     {m['acc_sd_decomposed']:6.2f} %  "
        f"(integer-basis weights, before fine-tuning)",
        f"               SD fine-tuned     {m['acc_sd_finetuned']:6.2f} %  "
        f"(drop {m['acc_drop_finetuned']:+.2f} points)",
        f"               SD unpruned       {m['acc_sd_unpruned_decomposed']:6.2f} %  "
        f"(decomposition alone, no pruning: {m['bits_per_weight_unpruned']:.2f} bits/weight)",
        f"storage        {m['bits_per_weight']:.3f} bits/weight over all SD layers "
        f"(codes + index + basis + scales), {m['compression_vs_fp32']:.2f}x vs fp32, "
        f"{m['compression_vs_int8']:.2f}x vs int8",
        "",
        f"{'layer':<8}{'weights':>8}{'rows kept':>12}{'codes':>8}{'index':>8}{'basis':>8}"
        f"{'scales':>8}{'bits/w':>8}",
    ]
    for name, s in m["storage"]["layers"].items():
        lines.append(f"{name:<8}{s['weights']:>8}{s['rows_kept']:>6}/{s['rows_total']:<5}"
                     f"{s['codes']:>8}{s['index']:>8}{s['basis']:>8}{s['scales']:>8}"
                     f"{s['bits_per_weight']:>8.2f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from golden.models import save_checkpoint, save_dense_checkpoint
    from golden.training import DEFAULT_PRUNE, run_pipeline
    from hw.config import load_config

    cfg = load_config(args.config)
    prune = DEFAULT_PRUNE if args.prune is None else args.prune
    extra = {k: v for k, v in (("sd_lr", args.sd_lr), ("distill_alpha", args.distill_alpha))
             if v is not None}
    res = run_pipeline(cfg, prune=prune, epochs=args.epochs, sd_epochs=args.sd_epochs,
                       seed=args.seed, c_update=args.c_update, switch_mode=args.switch_mode,
                       bar=args.bar, criterion=args.criterion, scope=args.scope,
                       prune_epochs=args.prune_epochs, tune_augment=args.tune_augment,
                       progress=not args.no_progress,
                       threads=args.threads, **extra)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    m = res.metrics
    save_checkpoint(out / "digits_sd.pt", res.sd_model, cfg, metrics=m, options=res.options)
    save_dense_checkpoint(out / "digits_dense.pt", res.dense_model,
                          metrics={"acc_dense_fp32": m["acc_dense_fp32"], "seed": args.seed})
    (out / "metrics.json").write_text(json.dumps(
        {"config": cfg.to_dict(), "options": res.options, "metrics": m}, indent=2,
        default=str))
    print(_report(m))
    print(f"\nwrote {out / 'digits_sd.pt'}, {out / 'digits_dense.pt'}, {out / 'metrics.json'}")
    return 0

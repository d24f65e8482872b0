"""``smartdeal export``: a model file -> memory images, manifest and storage report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from golden.memfile import FORMATS
    p.add_argument("model", nargs="?", default=None,
                   help="SD checkpoint (smartdeal train), plain PyTorch checkpoint / state dict "
                        "of a DigitsCNN, or .safetensors file (default: the bundled "
                        "golden/checkpoints/digits_sd.pt)")
    p.add_argument("--config", default=None,
                   help="preset name or SDConfig JSON (default: the checkpoint's, else "
                        "'default')")
    p.add_argument("--formats", default="all",
                   help=f"comma-separated memory file formats: {','.join(FORMATS)} or 'all' "
                        f"(default: all)")
    p.add_argument("--out", required=True, type=Path, help="output directory (replaced "
                   "atomically if it holds an earlier export)")
    p.add_argument("--calib", type=int, default=0, metavar="N",
                   help="training images used to calibrate activation scales (default 0: "
                        "all 1437)")
    p.add_argument("--calib-method", choices=("max", "percentile"), default="percentile",
                   help="calibration statistic of each layer's output magnitude (default "
                        "percentile)")
    p.add_argument("--percentile", type=float, default=99.9,
                   help="percentile for --calib-method percentile (default 99.9)")
    p.add_argument("--input-scale", type=float, default=None,
                   help="real value of one integer input unit (default 1/127)")
    p.add_argument("--no-eval", action="store_true",
                   help="skip the integer-vs-float check on the digits test split")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from golden.data import load_digits_split
    from golden.export import export_qnet, load_model, parse_formats
    from golden.models import DEFAULT_CHECKPOINT
    from golden.qnet import DEFAULT_INPUT_SCALE, build_qnet
    from hw.config import load_config

    try:
        formats = parse_formats(args.formats)
        if args.calib < 0:
            raise ValueError(f"--calib must be >= 0 (0: all training images), got "
                             f"{args.calib}")
        config = load_config(args.config) if args.config else None
        path = Path(args.model) if args.model else DEFAULT_CHECKPOINT
        model, config, kind = load_model(path, config)
        data = load_digits_split()
        calib = data.x_train[:args.calib] if args.calib else data.x_train
        scale = args.input_scale if args.input_scale is not None else DEFAULT_INPUT_SCALE
        print(f"model {path} ({kind}); config {config.summary()}")
        qnet = build_qnet(model, config, calib, input_scale=scale, method=args.calib_method,
                          percentile=args.percentile, progress=not args.quiet)
        extra = {"source": {"model": str(path), "kind": kind}}
        if not args.no_eval:
            extra["evaluation"] = evaluate(qnet, model, data)
        manifest = export_qnet(qnet, args.out, formats, progress=not args.quiet, extra=extra)
    except (ValueError, TypeError, OSError) as exc:
        print(f"smartdeal export: error: {exc}", file=sys.stderr)
        return 1
    report = (args.out / "storage_report.md").read_text()
    print(report)
    if "evaluation" in manifest:
        ev = manifest["evaluation"]
        print(f"digits test set ({ev['images']} images): integer accuracy "
              f"{ev['int_accuracy']:.4f}, float SD reference {ev['float_sd_accuracy']:.4f} "
              f"(same class on {ev['agreement']:.4f}), model as loaded "
              f"{ev['model_accuracy']:.4f}")
    sizes = ", ".join(f"{k}: {v['words']} words" for k, v in manifest["memories"].items())
    print(f"wrote {args.out} ({', '.join(formats)}; {sizes})")
    return 0


def evaluate(qnet, model, data) -> dict:
    """Integer network vs the float SD reference (and the source model) on the test split."""
    import torch
    x, y = data.x_test, data.y_test.numpy()
    pred_int = qnet.predict(x)
    pred_sd = qnet.run_float(x).reshape(len(y), -1).argmax(1)
    with torch.no_grad():
        pred_model = model(x).argmax(1).numpy()
    return {"images": int(len(y)), "int_accuracy": float((pred_int == y).mean()),
            "float_sd_accuracy": float((pred_sd == y).mean()),
            "model_accuracy": float((pred_model == y).mean()),
            "agreement": float((pred_int == pred_sd).mean())}

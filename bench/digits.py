"""The digits network for the accuracy sections: data, trained dense model, evaluations.

Uses the training / conversion / quantization API of `golden` (`golden.training`,
`golden.layers`, `golden.qnet`); this module only wires it for the benchmark.

The dense fp32 model (`dense_model`) is the shipped dense checkpoint when the repository
has one; otherwise it is trained once and cached under ``build/bench/`` (keyed by the
schedule, the seed and the source of the model and trainer), because training is the
slowest step of the accuracy sections (2-3 minutes on 2 cores); ``--quick`` without a
cache trains a shorter schedule (`DENSE_EPOCHS_QUICK`).  The model is an *input* of the
measurement, not a measured figure: every accuracy is measured in the invocation that
reports it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
from pathlib import Path

import torch

from .context import REPO, Context
from .core import require

__all__ = ["data", "dense_model", "single_thread", "sd_from_dense", "float_accuracy", "int_accuracy",
           "int8_dense_accuracy", "fp32_bits_per_weight", "storage", "DENSE_EPOCHS",
           "DENSE_EPOCHS_QUICK"]

DENSE_EPOCHS = 60          # as `smartdeal train`
DENSE_EPOCHS_QUICK = 15
CACHE = REPO / "build" / "bench"


@contextlib.contextmanager
def single_thread():
    """One torch intra-op thread: this network's operations are too small for OpenMP to
    pay off, and on the shared 2-core machine two threads ran several times slower
    (measured by `golden.training.run_pipeline`, which defaults to one thread too)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def data(ctx: Context):
    """The fixed digits split (`golden.data.load_digits_split(0)`)."""
    mod = require("golden.data", "load_digits_split")
    return ctx.cached("digits_split", lambda: mod.load_digits_split(0))


def _source_hash(*objs) -> str:
    h = hashlib.sha256()
    for o in objs:
        h.update(inspect.getsource(o).encode())
    return h.hexdigest()[:12]


def dense_model(ctx: Context) -> tuple[torch.nn.Module, dict]:
    """Trained dense `DigitsCNN` and where it came from.

    In order: the shipped dense checkpoint (`golden.models.DENSE_CHECKPOINT`, the model
    the shipped SD checkpoint was fine-tuned from), a model cached in ``build/bench/`` by
    an earlier run, or training now (`DENSE_EPOCHS`, `DENSE_EPOCHS_QUICK` in ``--quick``,
    then cached).  Its accuracy is always measured in the invocation.
    """
    models = require("golden.models", "DigitsCNN")
    training = require("golden.training", "train_dense", "evaluate")

    def build():
        shipped = getattr(models, "DENSE_CHECKPOINT", None)
        if shipped is not None and Path(shipped).is_file() and ctx.seed == 0:
            model, _ = models.load_dense_checkpoint(shipped)
            return model.eval(), {"source": "shipped checkpoint",
                                  "path": str(Path(shipped).relative_to(REPO)), "seed": 0}
        key = _source_hash(models.DigitsCNN, training.train_dense)

        def path_for(epochs: int):
            return CACHE / f"dense_digits_e{epochs}_s{ctx.seed}_{key}.pt"

        # --quick takes the full schedule's model when a full run cached one, else a
        # shorter schedule keeps it under its time budget.
        choices = [DENSE_EPOCHS] + ([DENSE_EPOCHS_QUICK] if ctx.quick else [])
        model = models.DigitsCNN()
        for epochs in choices:
            path = path_for(epochs)
            if path.is_file():
                model.load_state_dict(torch.load(path, weights_only=True))
                return model.eval(), {"source": f"cache ({epochs} epochs)", "epochs": epochs,
                                      "seed": ctx.seed, "path": str(path.relative_to(REPO))}
        epochs = choices[-1]
        d = data(ctx)
        torch.manual_seed(ctx.seed)
        model = models.DigitsCNN()
        with single_thread():
            training.train_dense(model, d.x_train, d.y_train, epochs=epochs, seed=ctx.seed,
                                 progress=ctx.progress)
        path = path_for(epochs)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
        return model.eval(), {"source": f"trained now ({epochs} epochs)", "epochs": epochs,
                              "seed": ctx.seed, "path": str(path.relative_to(REPO))}

    return ctx.cached("dense_digits", build)


def sd_from_dense(dense: torch.nn.Module, config, prune: float | dict | None = None,
                  **decompose_options) -> torch.nn.Module:
    """A converted SD copy of ``dense`` (the dense model is left untouched)."""
    layers = require("golden.layers", "convert_to_sd")
    model = copy.deepcopy(dense)
    layers.convert_to_sd(model, config, prune=prune, **decompose_options)
    return model.eval()


def float_accuracy(ctx: Context, model: torch.nn.Module) -> float:
    """Test accuracy (%) in float, SD layers with the weights the hardware rebuilds."""
    training = require("golden.training", "evaluate")
    layers = require("golden.layers", "to_dense")
    d = data(ctx)
    return float(training.evaluate(layers.to_dense(model).eval(), d.x_test, d.y_test))


def int_accuracy(ctx: Context, model: torch.nn.Module, config) -> float:
    """Test accuracy (%) of the bit-exact integer reference (`golden.qnet.build_qnet`)."""
    qnet_mod = require("golden.qnet", "build_qnet")
    d = data(ctx)
    qnet = qnet_mod.build_qnet(model, config, d.x_train)
    pred = qnet.predict(d.x_test.numpy())
    return float((pred == d.y_test.numpy()).mean() * 100.0)


def storage(model: torch.nn.Module) -> dict:
    """Packed-format storage of the SD layers (`golden.training.storage_report`)."""
    training = require("golden.training", "storage_report")
    return training.storage_report(model)


@torch.no_grad()
def int8_dense_accuracy(ctx: Context, dense: torch.nn.Module, act_bits: int = 8,
                        quant_word_bits: int = 0) -> tuple[float, float]:
    """Test accuracy (%) and bits/weight of the dense model quantized to int8.

    The dense baseline point of the sweep: weights symmetric per output channel to
    ``[-127, 127]``; every layer input quantized to ``act_bits`` with a per-tensor scale
    calibrated as the maximum over the training images (inputs of ReLU outputs unsigned
    range used as signed, like the SD integer reference); simulated in float64.
    Bits/weight counts 8 bits per weight plus one ``quant_word_bits`` word per output
    channel (bias and requantization, as the baseline accelerator stores them).
    """
    d = data(ctx)
    plan = dense.layer_plan()
    qmax = (1 << (act_bits - 1)) - 1

    def run(x: torch.Tensor, scales: list | None) -> tuple[torch.Tensor, list]:
        x = x.to(torch.float64)
        seen = []
        for i, (_, layer, relu) in enumerate(plan):
            if isinstance(layer, torch.nn.Linear):
                x = x.flatten(1)
            s = float(x.abs().max()) / qmax if scales is None else scales[i]
            s = s if s > 0 else 1.0
            seen.append(s)
            xq = torch.clamp(torch.round(x / s), -qmax - 1, qmax) * s
            w = layer.weight.detach().to(torch.float64)
            ws = w.reshape(w.shape[0], -1).abs().amax(dim=1).clamp_min(1e-30) / 127.0
            wq = torch.round(w / ws.view(-1, *[1] * (w.dim() - 1))) * ws.view(
                -1, *[1] * (w.dim() - 1))
            b = layer.bias.detach().to(torch.float64) if layer.bias is not None else None
            if isinstance(layer, torch.nn.Conv2d):
                x = torch.nn.functional.conv2d(xq, wq, b, layer.stride, layer.padding)
            else:
                x = torch.nn.functional.linear(xq, wq, b)
            if relu:
                x = torch.relu(x)
        return x, seen

    _, scales = run(d.x_train, None)
    logits, _ = run(d.x_test, scales)
    acc = float((logits.argmax(1) == d.y_test).double().mean() * 100.0)
    weights = sum(layer.weight.numel() for _, layer, _ in plan)
    chans = sum(layer.weight.shape[0] for _, layer, _ in plan)
    return acc, (8 * weights + chans * quant_word_bits) / weights


def fp32_bits_per_weight(dense: torch.nn.Module) -> float:
    """fp32 storage: 32 bits per weight plus a 32-bit bias per output channel."""
    plan = dense.layer_plan()
    weights = sum(layer.weight.numel() for _, layer, _ in plan)
    chans = sum(layer.weight.shape[0] for _, layer, _ in plan)
    return (32 * weights + 32 * chans) / weights


"""The quantized network: what the accelerator runs, layer by layer.

`build_qnet` turns a float SmartDeal model (or a dense one, decomposed on the way) plus
calibration images into a `QNet`: per layer the `SDWeight`, geometry (kind, shapes,
stride, padding, ReLU), integer bias, per-channel requantization multiplier and shift,
and the activation scales.  `golden.reference` runs it bit-exactly, `golden.pack`
packs it, `golden.export` writes it out.

Quantization (documented in ``docs/export.md``):

* Network input: ``x_int = clamp(round(x / input_scale))`` (`DEFAULT_INPUT_SCALE`
  = 1/127: inputs in ``[0, 1]`` map onto ``[0, 127]``).
* Output scale of each layer from calibration: the float SD network (rebuilt weights,
  float64) runs on the calibration images; ``s_out = stat / act_max`` with ``stat`` the
  ``p``-th percentile (default 99.9) of the layer's output magnitudes
  (``method="percentile"``, the default) or their maximum (``method="max"``).  The
  next layer's input scale is this ``s_out``.
* Accumulator scale of channel ``o``: ``s_acc[o] = s_in * weight_scale[o]``
  (`SDWeight.weight_scale`: the real value of one integer weight unit).
* ``bias_int[o] = round_half_even(bias[o] / s_acc[o])``, must fit ``bias_bits``.
* Real multiplier ``m[o] = s_acc[o] / s_out``; ``sh`` is the largest shift below
  ``2**shift_bits`` with ``M = round(m * 2**sh) < 2**mult_bits``, so ``M`` carries the
  most precision the fields allow (relative error ``<= 2**-mult_bits`` once ``M`` has
  its top bit set).
* Overflow proof: for every channel, ``bound = sum_{r,i} |w_int| * max|x| + |bias_int|``
  bounds every partial sum and ``acc + bias``; ``max|x|`` is ``act_max`` after a ReLU and
  ``2**(act_bits-1)`` otherwise.  A layer whose bound needs more than ``acc_bits`` signed
  bits is refused (`AccumulatorOverflowError` naming the layer and the bits needed).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
import torch

from golden.reference import (AccumulatorOverflowError, _signed_bits, conv_out_hw,
                              layer_float, quantize_input, run_float, run_int)
from golden.sdweight import SDWeight
from hw.config import SDConfig

__all__ = ["QLayer", "QNet", "build_qnet", "layer_from_module", "rehome_sdweight",
           "choose_requant", "quantize_bias", "accumulator_bound", "CODE_FIELDS",
           "DEFAULT_INPUT_SCALE", "calibration_stat"]

DEFAULT_INPUT_SCALE = 1.0 / 127.0

#: SDConfig fields an `SDWeight`'s codes and basis depend on.
CODE_FIELDS = ("basis_size", "lanes", "terms", "basis_bits", "exp_bits", "exp_min",
               "exp_max", "block_rows")


@dataclass(eq=False)
class QLayer:
    """One quantized layer.

    Attributes
    ----------
    name : str
    sd : SDWeight
        Weights in SD form (its ``config`` is the export configuration).
    relu : bool
    stride, padding : (int, int)
        ``(1, 1)`` / ``(0, 0)`` for a linear layer.
    in_shape, out_shape : tuple of int
        Per-image shapes: ``(C, H, W)`` for a convolution, ``(N,)`` for linear.
    bias_float : np.ndarray float64 (Cout,)
    bias_int, mult, shift : np.ndarray int64 (Cout,)
    in_scale, out_scale : float
    in_relu : bool
        The input comes from a ReLU (non-negative), used by the overflow proof.
    acc_bound : np.ndarray int64 (Cout,)
        Proven bound on ``|partial sums|`` and ``|acc + bias|`` per channel.
    """

    name: str
    sd: SDWeight
    relu: bool
    stride: tuple[int, int]
    padding: tuple[int, int]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    bias_float: np.ndarray
    bias_int: np.ndarray
    mult: np.ndarray
    shift: np.ndarray
    in_scale: float
    out_scale: float
    in_relu: bool = False
    acc_bound: np.ndarray | None = None

    @property
    def config(self) -> SDConfig:
        return self.sd.config

    @property
    def kind(self) -> str:
        return self.sd.kind

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return self.sd.weight_shape

    @property
    def out_channels(self) -> int:
        return self.sd.out_channels

    @property
    def positions(self) -> int:
        """Output positions per image (``Ho * Wo``; 1 for linear)."""
        return 1 if self.kind == "linear" else self.out_shape[1] * self.out_shape[2]

    @property
    def acc_scale(self) -> np.ndarray:
        """Real value of one accumulator unit per channel."""
        return self.in_scale * self.sd.weight_scale().numpy()

    @property
    def real_multiplier(self) -> np.ndarray:
        return self.acc_scale / self.out_scale

    @property
    def acc_bits_needed(self) -> int:
        bound = self.acc_bound if self.acc_bound is not None else accumulator_bound(
            self.sd, self.bias_int, self.in_relu)
        return _signed_bits(int(bound.max(initial=0)))

    def __repr__(self) -> str:
        return (f"QLayer({self.name}: {self.kind} {self.weight_shape} in={self.in_shape} "
                f"out={self.out_shape} stride={self.stride} pad={self.padding} "
                f"relu={self.relu} s_in={self.in_scale:.4g} s_out={self.out_scale:.4g})")


@dataclass(eq=False)
class QNet:
    """A quantized network: input quantizer plus `QLayer`\\ s in execution order."""

    config: SDConfig
    input_shape: tuple[int, ...]
    input_scale: float
    layers: list[QLayer]
    calibration: dict[str, Any] = field(default_factory=dict)

    def quantize_input(self, x) -> np.ndarray:
        return quantize_input(x, self.input_scale, self.config)

    def run_int(self, x_int, return_all: bool = False):
        return run_int(self, x_int, return_all)

    def run_float(self, x, return_all: bool = False):
        return run_float(self, x, return_all)

    def predict(self, x) -> np.ndarray:
        """Class predictions of the integer network for float inputs ``x``."""
        return self.run_int(self.quantize_input(x)).reshape(len(x), -1).argmax(axis=1)

    @property
    def output_scale(self) -> float:
        return self.layers[-1].out_scale

    def layer(self, name: str) -> QLayer:
        for lay in self.layers:
            if lay.name == name:
                return lay
        raise KeyError(f"no layer {name!r}; layers: {[l.name for l in self.layers]}")


# ------------------------------------------------------------------ parameters
def choose_requant(m: np.ndarray, config: SDConfig, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(M, sh)`` for real multipliers ``m`` with the most precision.

    ``sh`` is the largest value below ``2**shift_bits`` with
    ``round(m * 2**sh) < 2**mult_bits``.
    """
    m = np.asarray(m, dtype=np.float64)
    m_max = (1 << config.mult_bits) - 1
    sh_max = (1 << config.shift_bits) - 1
    mults = np.zeros(m.shape, np.int64)
    shifts = np.zeros(m.shape, np.int64)
    for o, v in enumerate(m.tolist()):
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"layer {name}: channel {o} has real multiplier {v!r} "
                             f"(scales must be finite and > 0)")
        sh = min(sh_max, math.floor(math.log2(m_max / v)) + 1)
        while sh >= 0 and round(math.ldexp(v, sh)) > m_max:
            sh -= 1
        if sh < 0:
            need = max(1, round(v)).bit_length()
            raise ValueError(f"layer {name}: channel {o} needs multiplier {v:.6g} >= "
                             f"2**mult_bits; needs mult_bits >= {need}, config has "
                             f"{config.mult_bits}")
        mm = round(math.ldexp(v, sh))
        if mm == 0:
            raise ValueError(f"layer {name}: channel {o} multiplier {v:.6g} rounds to 0 even "
                             f"with the largest shift {sh_max}; raise shift_bits "
                             f"(config has {config.shift_bits})")
        mults[o], shifts[o] = mm, sh
    return mults, shifts


def quantize_bias(bias: np.ndarray, acc_scale: np.ndarray, config: SDConfig,
                  name: str) -> np.ndarray:
    """``round_half_even(bias / acc_scale)``, checked against ``bias_bits``."""
    b = np.rint(np.asarray(bias, np.float64) / acc_scale)
    lo, hi = -(1 << (config.bias_bits - 1)), (1 << (config.bias_bits - 1)) - 1
    bad = np.nonzero((b < lo) | (b > hi))[0]
    if bad.size:
        o = int(bad[0])
        raise ValueError(f"layer {name}: bias of channel {o} is {int(b[o])} accumulator units; "
                         f"needs {_signed_bits(int(b[o]))} bits, config has bias_bits="
                         f"{config.bias_bits}")
    return b.astype(np.int64)


def accumulator_bound(sd: SDWeight, bias_int: np.ndarray, in_relu: bool) -> np.ndarray:
    """Per-channel bound on every partial sum and on ``acc + bias`` (int64 array)."""
    cfg = sd.config
    xmax = cfg.act_max if in_relu else 1 << (cfg.act_bits - 1)
    w = sd.rebuilt_int()
    sums = [int(v) for v in w.abs().reshape(w.shape[0], -1).sum(dim=1)]
    out = [s * xmax + abs(int(b)) for s, b in zip(sums, bias_int)]
    return np.array(out, dtype=object if max(out, default=0) >= 1 << 62 else np.int64)


def check_accumulator(sd: SDWeight, bias_int: np.ndarray, in_relu: bool,
                      name: str) -> np.ndarray:
    """Prove ``acc_bits`` suffices for the layer or raise `AccumulatorOverflowError`."""
    cfg = sd.config
    bound = accumulator_bound(sd, bias_int, in_relu)
    worst = int(bound.max(initial=0))
    need = _signed_bits(worst)
    if need > cfg.acc_bits:
        o = int(np.argmax([int(v) for v in bound]))
        raise AccumulatorOverflowError(
            f"layer {name}: the accumulator can reach {worst} (channel {o}: sum |w_int| x "
            f"max|x| + |bias|), which needs {need} bits; the configuration has acc_bits="
            f"{cfg.acc_bits}")
    return bound.astype(np.int64)


# ------------------------------------------------------------------ model access
def rehome_sdweight(sd: SDWeight, config: SDConfig, name: str) -> SDWeight:
    """The same weight under ``config`` (memory sizes may differ, codes may not)."""
    if sd.config == config:
        w = sd
    else:
        diff = [f"{f}={getattr(sd.config, f)!r} (export config: {getattr(config, f)!r})"
                for f in CODE_FIELDS if getattr(sd.config, f) != getattr(config, f)]
        if diff:
            raise ValueError(f"layer {name}: its SD weights were decomposed for a different "
                             f"configuration: {', '.join(diff)}; export with the checkpoint's "
                             f"configuration or decompose again")
        w = dataclasses.replace(sd, config=config, name=name)
    if w.rows > config.max_rows:
        raise ValueError(f"layer {name}: {w.rows} rows per filter exceed max_rows="
                         f"{config.max_rows}")
    if w.n_groups > config.max_groups:
        raise ValueError(f"layer {name}: {w.n_groups} lane groups exceed max_groups="
                         f"{config.max_groups} (quant_depth {config.quant_depth} / "
                         f"lanes {config.lanes})")
    if w.name != name:
        w = dataclasses.replace(w, name=name)
    return w


def _pair(v, what: str, name: str) -> tuple[int, int]:
    if isinstance(v, str):
        raise ValueError(f"layer {name}: {what}={v!r} is not supported (give integers)")
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"layer {name}: {what}={v!r} is not a pair")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _bias_of(module, cout: int) -> np.ndarray:
    b = getattr(module, "bias", None)
    if b is None:
        return np.zeros(cout, np.float64)
    b = b.detach().to(torch.float64).cpu().numpy().reshape(-1)
    if b.shape != (cout,):
        raise ValueError(f"bias has shape {b.shape}, expected ({cout},)")
    return b


def layer_from_module(name: str, module, config: SDConfig,
                      decompose_options: dict | None = None) -> tuple:
    """``(SDWeight, bias_float, stride, padding)`` of one model layer.

    SD modules give their own `SDWeight` (``to_sdweight``); dense ``nn.Conv2d`` /
    ``nn.Linear`` are decomposed with `golden.decompose.decompose` under ``config``.
    """
    nn = torch.nn
    if hasattr(module, "to_sdweight"):
        sd = module.to_sdweight(name=name)
        if not isinstance(sd, SDWeight):
            raise TypeError(f"layer {name}: to_sdweight() returned {type(sd).__name__}")
        sd = rehome_sdweight(sd, config, name)
    elif isinstance(module, (nn.Conv2d, nn.Linear)):
        if isinstance(module, nn.Conv2d):
            if module.groups != 1 or tuple(module.dilation) != (1, 1):
                raise ValueError(f"layer {name}: grouped or dilated convolutions are not "
                                 f"supported (groups={module.groups}, "
                                 f"dilation={module.dilation})")
            if module.padding_mode != "zeros":
                raise ValueError(f"layer {name}: padding_mode={module.padding_mode!r} is not "
                                 f"supported (only 'zeros')")
        from golden.decompose import decompose
        sd = decompose(module.weight.detach(), config, name=name, **(decompose_options or {}))
        sd = rehome_sdweight(sd, config, name)
    else:
        raise TypeError(f"layer {name}: {type(module).__name__} is neither an SD layer "
                        f"(to_sdweight) nor nn.Conv2d / nn.Linear")
    bias = _bias_of(module, sd.out_channels)
    if not np.isfinite(bias).all():
        raise ValueError(f"layer {name}: bias contains NaN or inf")
    if sd.kind == "linear":
        return sd, bias, (1, 1), (0, 0)
    stride = _pair(getattr(module, "stride", 1), "stride", name)
    padding = _pair(getattr(module, "padding", 0), "padding", name)
    return sd, bias, stride, padding


def calibration_stat(y: np.ndarray, method: str, percentile: float) -> float:
    """The calibrated magnitude of one layer's float outputs."""
    a = np.abs(y).reshape(-1)
    if a.size == 0:
        return 0.0
    if method == "max":
        return float(a.max())
    if method == "percentile":
        return float(np.percentile(a, percentile))
    raise ValueError(f"unknown calibration method {method!r} (expected 'max' or 'percentile')")


# ------------------------------------------------------------------ builder
def build_qnet(model, config: SDConfig, calib_images, *, input_scale: float = DEFAULT_INPUT_SCALE,
               method: str = "percentile", percentile: float = 99.9,
               decompose_options: dict | None = None,
               layers: Sequence[tuple[str, Any, bool]] | None = None,
               progress: bool = False) -> QNet:
    """Build the `QNet` of ``model`` for ``config``.

    Parameters
    ----------
    model : nn.Module
        Must provide ``layer_plan() -> [(name, module, relu), ...]`` in execution order
        (or pass ``layers``).  A linear layer after a convolution sees the flattened
        ``(c, h, w)`` output.
    config : SDConfig
    calib_images : tensor or array (N, *input_shape), float
        Calibration inputs (training images), in the model's input units.
    input_scale : float
        Real value of one unit of the integer network input.
    method, percentile
        Calibration statistic (see the module docstring).
    decompose_options : dict
        Options for `golden.decompose.decompose` when dense layers are decomposed.
    progress : bool
        Show a tqdm bar over the layers (decomposition of dense layers takes seconds).

    Raises
    ------
    ValueError, TypeError
        Unsupported layers or shapes, weights the configuration cannot hold, scales
        the requantization fields cannot express, biases beyond ``bias_bits``, and
        `AccumulatorOverflowError` when ``acc_bits`` cannot be proven sufficient.
    """
    if not isinstance(config, SDConfig):
        raise TypeError(f"config must be an SDConfig, got {type(config).__name__}")
    if not (isinstance(input_scale, (int, float)) and math.isfinite(input_scale)
            and input_scale > 0):
        raise ValueError(f"input_scale must be a finite number > 0, got {input_scale!r}")
    plan = list(layers) if layers is not None else list(model.layer_plan())
    if not plan:
        raise ValueError("the model has no layers")
    x = np.asarray(calib_images.detach().cpu().numpy() if isinstance(calib_images, torch.Tensor)
                   else calib_images, dtype=np.float64)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"calibration images must be (N, ...) with N >= 1, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("calibration images contain NaN or inf")
    shape = input_shape = tuple(x.shape[1:])
    s_in, in_relu = float(input_scale), False
    qlayers: list[QLayer] = []
    steps = plan
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(plan, desc="quantize layers", unit="layer", leave=False)
    for name, module, relu in steps:
        sd, bias, stride, padding = layer_from_module(name, module, config, decompose_options)
        if sd.kind == "linear":
            in_shape = (math.prod(shape),)
            if in_shape[0] != sd.weight_shape[1]:
                raise ValueError(f"layer {name}: input has {in_shape[0]} features "
                                 f"(shape {shape}), weight {sd.weight_shape} expects "
                                 f"{sd.weight_shape[1]}")
            out_shape = (sd.out_channels,)
        else:
            if len(shape) != 3 or shape[0] != sd.weight_shape[1]:
                raise ValueError(f"layer {name}: input shape {shape} does not fit conv weight "
                                 f"{sd.weight_shape} (expected ({sd.weight_shape[1]}, H, W))")
            in_shape = shape
            ho, wo = conv_out_hw(shape[1], shape[2], sd.weight_shape[2:], stride, padding)
            out_shape = (sd.out_channels, ho, wo)
        probe = SimpleNamespace(sd=sd, bias_float=bias, kind=sd.kind, stride=stride,
                                padding=padding, relu=relu)
        y = layer_float(probe, x)
        stat = calibration_stat(y, method, percentile)
        s_out = stat / config.act_max if stat > 0 else 1.0 / config.act_max
        acc_scale = s_in * sd.weight_scale().numpy()
        bias_int = quantize_bias(bias, acc_scale, config, name)
        mult, shift = choose_requant(acc_scale / s_out, config, name)
        bound = check_accumulator(sd, bias_int, in_relu, name)
        qlayers.append(QLayer(name=name, sd=sd, relu=bool(relu), stride=stride, padding=padding,
                              in_shape=tuple(in_shape), out_shape=tuple(out_shape),
                              bias_float=bias, bias_int=bias_int, mult=mult, shift=shift,
                              in_scale=s_in, out_scale=s_out, in_relu=in_relu,
                              acc_bound=bound))
        x, shape, s_in, in_relu = y, out_shape, s_out, bool(relu)
    calib = {"method": method, "images": int(len(calib_images))}
    if method == "percentile":
        calib["percentile"] = percentile
    return QNet(config=config, input_shape=input_shape, input_scale=float(input_scale), layers=qlayers, calibration=calib)

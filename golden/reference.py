"""Bit-exact integer model of the accelerator datapath, and its float twin.

The RTL is correct exactly when it produces what `layer_int` produces, bit for bit.
The datapath (``docs/architecture.md``, ``docs/format.md``):

* rebuilt weights ``w_int[o, r, i]`` by exact shift-and-add (`SDWeight.rebuilt_int`);
* activation rows of ``S`` signed ``act_bits`` integers: for a convolution, row ``r``
  of output position ``p = oy * Wo + ox`` is elements ``r*S ... r*S+S-1`` of the
  flattened ``(cin, ky, kx)`` window, zero outside the input (padding) and beyond
  ``K`` (`im2col_rows`, the window generator's order); for a fully connected layer,
  row ``r`` is inputs ``r*S ... r*S+S-1`` zero padded (`fc_rows`);
* ``acc[o, p] = sum_r sum_i w_int[o, r, i] * x[p, r, i]`` in a wrapping ``acc_bits``
  accumulator (integer addition is associative, so the weight-stationary order of the
  hardware gives the same sum; the model raises if a sum does not fit);
* ``t = ((acc + bias) * M + rnd) >> sh`` with ``rnd = 1 << (sh - 1)`` if ``sh > 0``
  (round half up, arithmetic shift), ReLU if the layer has it, saturation to
  ``[act_min, act_max]`` (`requantize`).

Everything is vectorised int64 numpy; products wider than 62 bits (only for very wide
``acc_bits + mult_bits``) fall back to exact Python integers.

The float reference (`layer_float`) runs the same layer in float64 with the rebuilt
real weights ``w_int * weight_scale`` (the values `SDWeight.reconstruct` returns) and
the float bias.  `quantization_bound` is the documented per-element bound, in output
LSBs, between the two given the same input.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch

from hw.config import SDConfig

if TYPE_CHECKING:  # pragma: no cover
    from golden.qnet import QLayer, QNet

__all__ = [
    "AccumulatorOverflowError", "im2col_rows", "fc_rows", "layer_rows", "weight_rows",
    "accumulate", "requantize", "layer_int", "layer_float", "quantization_bound",
    "quantize_input", "run_int", "run_float", "conv_out_hw",
]


class AccumulatorOverflowError(ValueError):
    """An accumulator value (or a bound on it) does not fit ``acc_bits``."""


def _as_int64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise TypeError(f"integer activations expected, got dtype {x.dtype}")
    return x.astype(np.int64, copy=False)


def conv_out_hw(h: int, w: int, k: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int]) -> tuple[int, int]:
    """Output height and width of a convolution (PyTorch's formula, dilation 1)."""
    ho = (h + 2 * padding[0] - k[0]) // stride[0] + 1
    wo = (w + 2 * padding[1] - k[1]) // stride[1] + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"convolution of a {h}x{w} input with kernel {k}, stride {stride}, "
                         f"padding {padding} has no output pixels")
    return ho, wo


@lru_cache(maxsize=64)
def _im2col_index(cin: int, h: int, w: int, kh: int, kw: int, sy: int, sx: int, py: int,
                  px: int, s: int) -> tuple[np.ndarray, int]:
    """Gather indices ``(P, R*S)`` into the flattened zero-padded input (+1 zero slot)."""
    hp, wp = h + 2 * py, w + 2 * px
    ho, wo = conv_out_hw(h, w, (kh, kw), (sy, sx), (py, px))
    k_total = cin * kh * kw
    r = -(-k_total // s)
    k = np.arange(r * s)
    c, ky, kx = k // (kh * kw), (k // kw) % kh, k % kw
    oy, ox = np.divmod(np.arange(ho * wo), wo)
    iy = oy[:, None] * sy + ky[None, :]
    ix = ox[:, None] * sx + kx[None, :]
    idx = c[None, :] * hp * wp + iy * wp + ix
    zero_slot = cin * hp * wp
    idx = np.where((k < k_total)[None, :], idx, zero_slot)
    idx.setflags(write=False)
    return idx, zero_slot


def im2col_rows(x_int, weight_shape, stride, padding, basis_size: int) -> np.ndarray:
    """Activation rows of a convolution in the hardware's window order.

    Parameters
    ----------
    x_int : integer array, (Cin, H, W) or (N, Cin, H, W)
    weight_shape : (Cout, Cin, kh, kw)
    stride, padding : int or (int, int)
    basis_size : int
        ``S``.

    Returns
    -------
    np.ndarray, int64, (P, R, S) or (N, P, R, S)
        ``rows[p, r, i]`` is element ``r*S + i`` of the flattened ``(cin, ky, kx)``
        window of output pixel ``p = oy * Wo + ox``: input pixel
        ``(cin, oy*sy - py + ky, ox*sx - px + kx)``, 0 outside the input and for
        ``r*S + i >= K``.
    """
    x = _as_int64(x_int)
    single = x.ndim == 3
    if single:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"conv input must be (Cin, H, W) or (N, Cin, H, W), got {x.shape}")
    _, cin, kh, kw = (int(d) for d in weight_shape)
    if x.shape[1] != cin:
        raise ValueError(f"conv input has {x.shape[1]} channels, weight {tuple(weight_shape)} "
                         f"expects {cin}")
    sy, sx = _pair(stride)
    py, px = _pair(padding)
    n, _, h, w = x.shape
    idx, _ = _im2col_index(cin, h, w, kh, kw, sy, sx, py, px, basis_size)
    xp = np.pad(x, ((0, 0), (0, 0), (py, py), (px, px))).reshape(n, -1)
    xp = np.concatenate([xp, np.zeros((n, 1), np.int64)], axis=1)
    rows = xp[:, idx].reshape(n, idx.shape[0], -1, basis_size)
    return rows[0] if single else rows


def fc_rows(x_int, in_features: int, basis_size: int) -> np.ndarray:
    """Activation rows of a fully connected layer: (N, in) -> (N, R, S), zero padded."""
    x = _as_int64(x_int)
    if x.ndim != 2 or x.shape[1] != in_features:
        raise ValueError(f"linear input must be (N, {in_features}), got {x.shape}")
    r = -(-in_features // basis_size)
    pad = r * basis_size - in_features
    if pad:
        x = np.pad(x, ((0, 0), (0, pad)))
    return x.reshape(x.shape[0], r, basis_size)


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def weight_rows(layer: "QLayer") -> np.ndarray:
    """Rebuilt integer weights of a layer as (Cout, R*S) int64 (exact shift-and-add)."""
    w = layer.sd.rebuilt_int().numpy().astype(np.int64)
    return w.reshape(w.shape[0], -1)


def layer_rows(layer: "QLayer", x_int) -> np.ndarray:
    """Activation rows of a batch: (N, P, R, S); ``P`` = output pixels (1 for linear)."""
    x = _as_int64(x_int)
    s = layer.config.basis_size
    if layer.kind == "linear":
        if x.ndim > 2:
            x = x.reshape(x.shape[0], -1)    # flatten (c, h, w) in PyTorch order
        return fc_rows(x, layer.weight_shape[1], s)[:, None]
    return im2col_rows(x, layer.weight_shape, layer.stride, layer.padding, s)


def accumulate(layer: "QLayer", x_int) -> np.ndarray:
    """Accumulator values ``acc[n, o, p]`` (int64, no bias) of a batch.

    Raises `AccumulatorOverflowError` naming layer, channel, image and position when
    an accumulator (or ``acc + bias``) does not fit ``acc_bits``.
    """
    rows = layer_rows(layer, x_int)
    n, p = rows.shape[:2]
    w = weight_rows(layer)
    _check_int64_safe(layer, w)
    acc = rows.reshape(n * p, -1) @ w.T                      # (N*P, Cout) exact int64
    acc = acc.reshape(n, p, -1).transpose(0, 2, 1)          # (N, Cout, P)
    cfg = layer.config
    _check_fits(layer, acc, cfg, "accumulator")
    _check_fits(layer, acc + layer.bias_int[None, :, None], cfg, "acc + bias")
    return np.ascontiguousarray(acc)


def _check_int64_safe(layer: "QLayer", w: np.ndarray) -> None:
    """int64 sums are exact when sum |w| * max|x| stays below 2**62."""
    worst = int(np.abs(w).sum(axis=1).max(initial=0)) * (1 << (layer.config.act_bits - 1))
    if worst >= 1 << 62:
        raise AccumulatorOverflowError(
            f"layer {layer.name}: worst-case sum {worst} exceeds the 63-bit range of the "
            f"model (and any acc_bits <= 64)")


def _check_fits(layer: "QLayer", v: np.ndarray, cfg: SDConfig, what: str) -> None:
    bad = (v < cfg.acc_min) | (v > cfg.acc_max)
    if bad.any():
        n, o, p = (int(i) for i in np.argwhere(bad)[0])
        val = int(v[n, o, p])
        raise AccumulatorOverflowError(
            f"layer {layer.name}: {what} = {val} at channel {o}, image {n}, position {p} "
            f"does not fit acc_bits={cfg.acc_bits} (needs {_signed_bits(val)} bits)")


def _signed_bits(v: int) -> int:
    v = int(v)
    return (v if v >= 0 else ~v).bit_length() + 1


def requantize(acc: np.ndarray, bias: np.ndarray, mult: np.ndarray, shift: np.ndarray,
               relu: bool, config: SDConfig) -> np.ndarray:
    """``clamp(relu(((acc + bias) * M + rnd) >> sh))`` per channel (axis 1 of ``acc``).

    ``acc`` is (N, Cout, P); ``bias``, ``mult``, ``shift`` are (Cout,).  Round half up:
    ``rnd = 1 << (sh - 1)`` when ``sh > 0``, else 0; ``>>`` is arithmetic (floor).
    """
    acc = np.asarray(acc, dtype=np.int64)
    b = np.asarray(bias, np.int64)[None, :, None]
    m = np.asarray(mult, np.int64)[None, :, None]
    sh = np.asarray(shift, np.int64)[None, :, None]
    if config.acc_bits + 1 + config.mult_bits <= 62 and int(sh.max(initial=0)) <= 62:
        rnd = np.where(sh > 0, np.left_shift(1, np.maximum(sh - 1, 0)), 0)
        t = ((acc + b) * m + rnd) >> sh
    else:   # exact Python integers for products or shifts beyond int64
        sh_o = sh.astype(object)
        rnd = np.array([[[1 << (int(v) - 1) if v > 0 else 0 for v in sh.reshape(-1)]]],
                       dtype=object).reshape(sh.shape)
        t = ((acc.astype(object) + b.astype(object)) * m.astype(object) + rnd) >> sh_o
        t = np.clip(t, config.act_min - 1, config.act_max + 1).astype(np.int64)
    if relu:
        t = np.maximum(t, 0)
    return np.clip(t, config.act_min, config.act_max).astype(np.int64)


def _out_shape(layer: "QLayer", n: int) -> tuple[int, ...]:
    return (n, *layer.out_shape)


def layer_int(layer: "QLayer", x_int, return_acc: bool = False):
    """One layer on the integer datapath: (N, *in_shape) ints -> (N, *out_shape) int64.

    With ``return_acc`` also returns the accumulators ``(N, Cout, P)`` (no bias).
    """
    x = _as_int64(x_int)
    cfg = layer.config
    if x.size and (x.min() < cfg.act_min or x.max() > cfg.act_max):
        raise ValueError(f"layer {layer.name}: input values [{x.min()}, {x.max()}] exceed "
                         f"the {cfg.act_bits}-bit activation range")
    acc = accumulate(layer, x)
    y = requantize(acc, layer.bias_int, layer.mult, layer.shift, layer.relu, cfg)
    y = y.reshape(_out_shape(layer, x.shape[0]))
    return (y, acc) if return_acc else y


def layer_float(layer: "QLayer", x: torch.Tensor | np.ndarray) -> np.ndarray:
    """The same layer in float64 with the rebuilt real weights and the float bias."""
    xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
    sd = layer.sd
    w = (sd.rebuilt_int().to(torch.float64) * sd.weight_scale()[:, None, None])
    k = sd.fan_in
    w = w.reshape(w.shape[0], -1)[:, :k].reshape(sd.weight_shape)
    b = torch.as_tensor(layer.bias_float, dtype=torch.float64)
    if layer.kind == "linear":
        y = torch.nn.functional.linear(xt.reshape(xt.shape[0], -1), w, b)
    else:
        y = torch.nn.functional.conv2d(xt, w, b, stride=layer.stride, padding=layer.padding)
    if layer.relu:
        y = torch.relu(y)
    return y.numpy()


def quantization_bound(layer: "QLayer", acc: np.ndarray) -> np.ndarray:
    """Per-element bound, in output LSBs, of ``|q - clamp(y / s_out)|``.

    For the same integer input, ``y / s_out = m * (acc + b / s_acc)`` with the exact
    multiplier ``m = s_acc / s_out``; the integer path computes
    ``round((acc + bias_int) * M / 2**sh)``.  Hence

        ``|q - y/s_out| <= 0.5 + 0.5 * m + |acc + bias_int| * |M / 2**sh - m|``

    (output rounding, bias rounding ``|bias_int - b/s_acc| <= 0.5``, multiplier
    rounding); ReLU and saturation are 1-Lipschitz and keep the bound.  A float64 slack
    of ``1e-6`` covers the float reference's own rounding.
    """
    m = layer.real_multiplier[None, :, None]
    eff = (layer.mult.astype(np.float64) / np.ldexp(1.0, layer.shift.astype(np.int64)))
    eff = eff[None, :, None]
    v = np.abs(acc + layer.bias_int[None, :, None]).astype(np.float64)
    return 0.5 + 0.5 * m + v * np.abs(eff - m) + 1e-6


def quantize_input(x, scale: float, config: SDConfig) -> np.ndarray:
    """Network input quantizer: ``clamp(round_half_even(x / scale))`` to int ``act_bits``."""
    xa = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x,
                    dtype=np.float64)
    if not np.isfinite(xa).all():
        raise ValueError("network input contains NaN or inf")
    return np.clip(np.rint(xa / scale), config.act_min, config.act_max).astype(np.int64)


def run_int(qnet: "QNet", x_int, return_all: bool = False):
    """The whole network on the integer datapath; returns the final int8 logits.

    With ``return_all`` returns the list of every layer's output (last = logits).
    """
    outs = []
    h = _as_int64(x_int)
    for layer in qnet.layers:
        h = layer_int(layer, h)
        outs.append(h)
    return outs if return_all else h


def run_float(qnet: "QNet", x, return_all: bool = False):
    """The whole network in float64 with the SD-reconstructed weights (no quantization)."""
    outs = []
    h = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x,
                   dtype=np.float64)
    for layer in qnet.layers:
        h = layer_float(layer, h)
        outs.append(h)
    return outs if return_all else h

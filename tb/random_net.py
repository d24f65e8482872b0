"""Random small quantized networks for the accelerator's end-to-end tests.

`random_qnet` builds a `golden.qnet.QNet` straight from random SD codes (every exponent
level and sign, random structural row pruning, optionally an empty group), random
biases and requantization parameters scaled so the outputs span the int8 range.  The
expected outputs always come from `golden.reference`; this module only makes stimulus.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from golden.qnet import QLayer, QNet, choose_requant
from golden.reference import accumulate
from golden.sdweight import SDWeight, rows_per_filter
from hw.config import SDConfig

__all__ = ["ConvSpec", "LinearSpec", "random_sdweight_any", "random_qnet", "random_inputs"]


@dataclass(frozen=True)
class ConvSpec:
    cout: int
    k: int                 #: square kernel (kw must be a multiple of S)
    stride: int = 1
    padding: int = 0
    relu: bool = True
    kh: int | None = None  #: kernel height when different from k


@dataclass(frozen=True)
class LinearSpec:
    cout: int
    relu: bool = False


def random_sdweight_any(config: SDConfig, weight_shape, *, density: float = 0.7,
                        keep: float = 0.7, empty_group: bool = False,
                        seed: int = 0, name: str = "layer") -> SDWeight:
    """Random SD weight of any shape (codes over the whole exponent range)."""
    cfg = config
    g = torch.Generator().manual_seed(seed)
    S, T, L = cfg.basis_size, cfg.terms, cfg.lanes
    cout = int(weight_shape[0])
    rows = rows_per_filter(tuple(weight_shape), S)
    n_groups = -(-cout // L)
    row_keep = torch.rand(n_groups, rows, generator=g) < keep
    row_keep[:, 0] = True
    if empty_group and n_groups >= 2:
        row_keep[1] = False
    group = torch.arange(cout) // L
    shape = (cout, rows, S, T)
    mask = (torch.rand(shape, generator=g) < density) & row_keep[group][:, :, None, None]
    # padding elements beyond K stay representable: they multiply zero activations
    sign = (torch.rand(shape, generator=g) < 0.5) & mask
    exponent = torch.randint(cfg.exp_min, cfg.exp_max + 1, shape, generator=g)
    exponent = torch.where(mask, exponent, torch.full_like(exponent, cfg.exp_min)).to(torch.int8)
    n_blocks = -(-rows // cfg.block_rows)
    basis = torch.randint(cfg.basis_min, cfg.basis_max + 1, (cout, n_blocks, S, S),
                          generator=g, dtype=torch.int32)
    return SDWeight(config=cfg, weight_shape=tuple(int(v) for v in weight_shape), mask=mask,
                    sign=sign, exponent=exponent, basis=basis,
                    basis_scale=torch.ones(cout, dtype=torch.float64), row_keep=row_keep,
                    name=name)


def random_inputs(config: SDConfig, shape, n: int, seed: int, non_negative: bool = False):
    rng = np.random.default_rng(seed)
    lo = 0 if non_negative else config.act_min
    return rng.integers(lo, config.act_max + 1, size=(n, *shape), dtype=np.int64)


def random_qnet(config: SDConfig, in_shape, layers, *, seed: int = 0,
                empty_group: bool = False, keep: float = 0.7) -> QNet:
    """A `QNet` of random SD layers; ``layers`` is a list of `ConvSpec` / `LinearSpec`."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in in_shape)
    probe = random_inputs(config, shape, 8, seed + 1)
    qlayers = []
    in_relu = False
    for i, spec in enumerate(layers):
        name = f"l{i}"
        if isinstance(spec, ConvSpec):
            if len(shape) != 3:
                raise ValueError(f"{name}: a convolution needs a (C, H, W) input, got {shape}")
            kh = spec.kh or spec.k
            wshape = (spec.cout, shape[0], kh, spec.k)
            ho = (shape[1] + 2 * spec.padding - kh) // spec.stride + 1
            wo = (shape[2] + 2 * spec.padding - spec.k) // spec.stride + 1
            out_shape = (spec.cout, ho, wo)
            stride, padding = (spec.stride, spec.stride), (spec.padding, spec.padding)
            kind_in = shape
        else:
            n = math.prod(shape)
            wshape = (spec.cout, n)
            out_shape = (spec.cout,)
            stride, padding = (1, 1), (0, 0)
            kind_in = (n,)
        sd = random_sdweight_any(config, wshape, seed=seed * 101 + i, keep=keep,
                                 empty_group=empty_group and i == 0, name=name)
        lay = QLayer(name=name, sd=sd, relu=spec.relu, stride=stride, padding=padding,
                     in_shape=kind_in, out_shape=out_shape, bias_float=np.zeros(spec.cout),
                     bias_int=np.zeros(spec.cout, np.int64),
                     mult=np.ones(spec.cout, np.int64), shift=np.zeros(spec.cout, np.int64),
                     in_scale=1.0, out_scale=1.0, in_relu=in_relu)
        acc = accumulate(lay, probe.reshape(probe.shape[0], *kind_in))    # (N, Cout, P)
        spread = np.abs(acc).max(axis=(0, 2)).astype(np.float64) + 1.0
        bias = rng.integers(-1, 2, size=spec.cout) * (spread // 4).astype(np.int64)
        m = 100.0 / (spread + np.abs(bias))
        mult, shift = choose_requant(m, config, name)
        lay = QLayer(name=name, sd=sd, relu=spec.relu, stride=stride, padding=padding,
                     in_shape=kind_in, out_shape=out_shape, bias_float=bias.astype(float),
                     bias_int=bias.astype(np.int64), mult=mult, shift=shift,
                     in_scale=1.0, out_scale=1.0, in_relu=in_relu)
        qlayers.append(lay)
        from golden.reference import layer_int
        probe = layer_int(lay, probe.reshape(probe.shape[0], *kind_in))
        shape = out_shape
        in_relu = spec.relu
    return QNet(config=config, input_shape=tuple(int(v) for v in in_shape), input_scale=1.0,
                layers=qlayers)

"""The dense int8 baseline of a quantized SD network, and its weight-memory image.

The dense baseline accelerator (``hw/dense_top.py``) stores every weight as a plain
int8, one memory word per (group, row) holding the ``lanes x S`` weights of that row
(weight ``(l, i)`` at bit ``(l * S + i) * 8``, `hw.layouts.dense_word_layout`), and runs
the same MAC lanes, requantization and activation layout as the SD accelerator.

`dense_qnet` builds its network from an SD `QNet`: per layer the float weights the SD
model computes with (``SDWeight.reconstruct``) are quantized to int8 with one symmetric
scale per output channel (``s8 = max|w| / 127``), the bias and the requantization are
recomputed for that scale with the same helpers as `golden.qnet` (same activation scales,
so the two networks are directly comparable).

The int8 weights are expressed as an `SDWeight` that `golden.reference` evaluates
exactly: one block per row (``block_rows = 1``), coefficient row ``[2**exp_min, 0, ...]``
and basis row ``B[o, r, 0, :] = w8[o, r, :]``, so ``rebuilt_int() == w8``.  The bit-exact
reference of the baseline is therefore ``golden.reference.run_int`` on this network, the
same code that checks the SD accelerator.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from golden.pack import pack_quant
from golden.qnet import QNet, check_accumulator, choose_requant, quantize_bias
from golden.sdweight import SDWeight, weight_to_rows

__all__ = ["DENSE_BITS", "dense_qnet", "dense_images", "dense_words"]

DENSE_BITS = 8


def _int8_sdweight(w8: torch.Tensor, scale: np.ndarray, like: SDWeight) -> SDWeight:
    """An `SDWeight` whose rebuilt integer weights are exactly ``w8`` (Cout, R, S)."""
    cfg = like.config.replace(block_rows=1)
    cout, rows, S = w8.shape
    T = cfg.terms
    mask = torch.zeros(cout, rows, S, T, dtype=torch.bool)
    mask[:, :, 0, 0] = True
    sign = torch.zeros_like(mask)
    exponent = torch.full((cout, rows, S, T), cfg.exp_min, dtype=torch.int8)
    basis = torch.zeros(cout, rows, S, S, dtype=torch.int32)
    basis[:, :, 0, :] = w8.to(torch.int32)
    n_groups = -(-cout // cfg.lanes)
    keep = torch.ones(n_groups, rows, dtype=torch.bool)
    basis_scale = torch.as_tensor(scale, dtype=torch.float64) / 2.0 ** cfg.exp_min
    return SDWeight(config=cfg, weight_shape=like.weight_shape, mask=mask, sign=sign,
                    exponent=exponent, basis=basis, basis_scale=basis_scale, row_keep=keep,
                    name=like.name)


def dense_qnet(qnet: QNet) -> QNet:
    """The dense int8 twin of ``qnet`` (same geometry and activation scales)."""
    layers = []
    for lay in qnet.layers:
        sd = lay.sd
        S = sd.config.basis_size
        w = weight_to_rows(sd.reconstruct().to(torch.float64), S)        # (Cout, R, S)
        amax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        w8 = torch.clamp(torch.round(w / scale[:, None, None]), -127, 127).to(torch.int64)
        sdw = _int8_sdweight(w8, scale.numpy(), sd)
        acc_scale = lay.in_scale * sdw.weight_scale().numpy()
        bias_int = quantize_bias(lay.bias_float, acc_scale, sdw.config, lay.name)
        mult, shift = choose_requant(acc_scale / lay.out_scale, sdw.config, lay.name)
        bound = check_accumulator(sdw, bias_int, lay.in_relu, lay.name)
        layers.append(dataclasses.replace(lay, sd=sdw, bias_int=bias_int, mult=mult,
                                          shift=shift, acc_bound=bound))
    return dataclasses.replace(qnet, layers=layers)


def dense_words(sd: SDWeight) -> list[int]:
    """Dense weight words of one layer: group-major, all ``R`` rows, missing lanes zero."""
    cfg = sd.config
    L, S = cfg.lanes, cfg.basis_size
    w = sd.rebuilt_int().to(torch.int64)                                   # (Cout, R, S)
    if w.numel() and (int(w.min()) < -(1 << (DENSE_BITS - 1))
                      or int(w.max()) >= 1 << (DENSE_BITS - 1)):
        raise ValueError(f"layer {sd.name}: dense weights exceed int{DENSE_BITS}")
    n_groups = -(-w.shape[0] // L)
    pad = n_groups * L - w.shape[0]
    if pad:
        w = torch.cat([w, torch.zeros(pad, *w.shape[1:], dtype=torch.int64)])
    w = (w.reshape(n_groups, L, -1, S).permute(0, 2, 1, 3).reshape(n_groups, -1, L * S)
         & 0xFF).numpy()
    words = np.zeros(w.shape[:2], dtype=object)
    for k in range(L * S):
        words = words + (w[:, :, k].astype(object) << (k * DENSE_BITS))
    return [int(v) for v in words.reshape(-1)]


def dense_images(dqnet: QNet) -> tuple[dict, list[dict]]:
    """Memory images ``{"dense": words, "quant": words}`` and per-layer placements.

    Placements are ``{"weights": (base, words), "quant": (base, words)}``; layers are
    placed consecutively like `golden.pack.pack_layers` does for SD.
    """
    images = {"dense": [], "quant": []}
    placements = []
    for lay in dqnet.layers:
        dw = dense_words(lay.sd)
        qw = pack_quant(lay.bias_int, lay.mult, lay.shift, lay.config, lay.name)
        placements.append({"weights": (len(images["dense"]), len(dw)),
                           "quant": (len(images["quant"]), len(qw))})
        images["dense"] += dw
        images["quant"] += qw
    return images, placements

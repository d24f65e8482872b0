"""Stimulus for the block tests: random SD layers and the streams the blocks exchange.

Used by the Amaranth-simulator tests (``tests/test_blocks_amaranth.py``) and the cocotb
modules (``tb/test_decoder.py`` ...).  Everything here *drives* the blocks; the expected
outputs always come from ``golden/`` (`SDWeight.rebuilt_int`, `golden.pack`,
`golden.reference.requantize`).  Payloads are the ``dict``/``list`` values of
`tb.common.pack` for the layouts in `hw.layouts`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from golden.sdweight import SDWeight
from hw.config import SDConfig

__all__ = ["random_sdweight", "row_dict", "rows_of", "basis_loads", "expected_weight_rows", "random_quant",
           "mac_ops_for_rows", "RTL_CONFIGS", "digits_qnet", "layer_inputs"]


def random_sdweight(config: SDConfig, out_channels: int, n_rows: int, *, density: float = 0.7,
                    keep: float = 0.6, empty_group: bool = True, seed: int = 0,
                    full_range: bool = True) -> SDWeight:
    """A random fully connected ``(out_channels, n_rows * S)`` weight in SD form.

    Every exponent level and both signs occur with equal probability; ``keep`` of the
    rows of each group are kept (row 0 and ``R - 1`` always, to exercise the index
    range), and with ``empty_group`` the second group (if any) keeps no row.  The basis
    is uniform over the whole ``basis_bits`` range when ``full_range`` (else small).
    """
    cfg = config
    g = torch.Generator().manual_seed(seed)
    S, T, L = cfg.basis_size, cfg.terms, cfg.lanes
    n_groups = -(-out_channels // L)
    row_keep = torch.rand(n_groups, n_rows, generator=g) < keep
    row_keep[:, 0] = True
    row_keep[:, -1] = True
    if empty_group and n_groups >= 2:
        row_keep[1] = False
    group = torch.arange(out_channels) // L
    shape = (out_channels, n_rows, S, T)
    mask = (torch.rand(shape, generator=g) < density) & row_keep[group][:, :, None, None]
    sign = (torch.rand(shape, generator=g) < 0.5) & mask
    exponent = torch.randint(cfg.exp_min, cfg.exp_max + 1, shape, generator=g)
    exponent = torch.where(mask, exponent, torch.full_like(exponent, cfg.exp_min)).to(torch.int8)
    n_blocks = -(-n_rows // cfg.block_rows)
    lo, hi = (cfg.basis_min, cfg.basis_max) if full_range else (-8, 7)
    basis = torch.randint(lo, hi + 1, (out_channels, n_blocks, S, S), generator=g,
                          dtype=torch.int32)
    return SDWeight(config=cfg, weight_shape=(out_channels, n_rows * S), mask=mask, sign=sign,
                    exponent=exponent, basis=basis,
                    basis_scale=torch.ones(out_channels, dtype=torch.float64),
                    row_keep=row_keep, name=f"random{seed}")


def row_dict(d) -> dict:
    """A golden `golden.pack.DecodedRow` as the `decoded_row_layout` payload dict."""
    return {"row": d.row, "block": d.block, "group": d.group, "new_block": int(d.new_block),
            "first": int(d.first), "last": int(d.last), "empty": int(d.empty),
            "mask": list(d.mask), "sign": list(d.sign), "shift": [list(x) for x in d.shift]}


def rows_of(sdw: SDWeight) -> list[dict]:
    """The decoded rows of ``sdw`` in stream order (the basis array's input), as the
    golden unpacker decodes its packed Ce stream."""
    from golden.pack import decode_ce_stream, pack_ce

    return [row_dict(d) for d in decode_ce_stream(pack_ce(sdw), sdw.config, sdw.n_groups,
                                                   sdw.rows)]


def basis_loads(sdw: SDWeight, rows: list[dict]) -> list[dict]:
    """Basis words (`golden.pack.pack_basis`) in the order the basis array swaps banks:
    the ``lanes`` words of ``(group, block)`` for every ``new_block`` row."""
    from golden.pack import pack_basis

    cfg = sdw.config
    words = pack_basis(sdw)
    loads = []
    for row in rows:
        if row["new_block"]:
            base = (row["group"] * sdw.n_blocks + row["block"]) * cfg.lanes
            loads += [{"lane": l, "data": words[base + l]} for l in range(cfg.lanes)]
    return loads


def expected_weight_rows(sdw: SDWeight, rows: list[dict]) -> list[dict]:
    """Golden rebuilt weights (`SDWeight.rebuilt_int`) of ``rows``, with their tags."""
    cfg = sdw.config
    w = sdw.rebuilt_int().numpy()
    out = []
    for row in rows:
        lanes = []
        for l in range(cfg.lanes):
            o = row["group"] * cfg.lanes + l
            if row["empty"] or o >= sdw.out_channels:
                lanes.append([0] * cfg.basis_size)
            else:
                lanes.append([int(v) for v in w[o, row["row"]]])
        out.append({**{k: row[k] for k in ("row", "block", "group", "new_block", "first",
                                           "last", "empty")}, "weights": lanes})
    return out


def random_quant(config: SDConfig, rng: np.random.Generator, n: int, *, acc_scale: int):
    """``n`` random ``(bias, mult, shift)`` arrays for sums of magnitude about ``acc_scale``.

    The shift is chosen around the value that maps ``acc_scale * mult`` onto the
    activation range, so rounding, ReLU and saturation all occur; a few channels get
    ``shift = 0`` and ``mult = 0``.
    """
    cfg = config
    bias_lim = min(acc_scale, (1 << (cfg.bias_bits - 1)) - 1)
    bias = rng.integers(-bias_lim, bias_lim + 1, n)
    mult = rng.integers(1, 1 << cfg.mult_bits, n)
    centre = np.array([max(0, (int(acc_scale) * int(m)).bit_length() - cfg.act_bits + 1)
                       for m in mult])
    shift = np.clip(centre + rng.integers(-2, 3, n), 0, (1 << cfg.shift_bits) - 1)
    special = rng.random(n)
    shift = np.where(special < 0.1, 0, shift)
    mult = np.where((special >= 0.1) & (special < 0.15), 0, mult)
    return bias.astype(np.int64), mult.astype(np.int64), shift.astype(np.int64)


def mac_ops_for_rows(weights, first, last, acts) -> list[dict]:
    """MAC ops of one group: for each row ``r``, its ``P`` positions in order.

    ``weights`` (R, lanes, S), ``acts`` (P, R, S); returns `mac_op_layout` dicts.
    """
    ops = []
    n_rows, n_pos = len(weights), acts.shape[0]
    for r in range(n_rows):
        w = [[int(v) for v in lane] for lane in weights[r]]
        for p in range(n_pos):
            ops.append({"weights": w, "acts": [int(v) for v in acts[p, r]], "addr": p,
                        "first": int(first[r]), "last": int(last[r])})
    return ops


#: Configurations of the RTL regression (each block module builds each one once):
#: S = 3 with 8 lanes (one word per record), S = 3 with one lane and 10-bit words (two
#: words per record, 4 padding bits, 3 exponent levels, 6-bit basis), S = 4 with 2 lanes,
#: two terms per coefficient, 13 exponent levels in a 4-bit field (so fields 14 and 15
#: are invalid codes), 40-bit accumulator and 64-bit words (two per record, 40 padding
#: bits).
RTL_CONFIGS: dict[str, SDConfig] = {
    "S3_L8": SDConfig(basis_size=3, lanes=8, max_rows=511, block_rows=64, acc_depth=64,
                      quant_depth=64, ce_depth=4096),
    "S3_L1_w10": SDConfig(basis_size=3, lanes=1, exp_bits=2, exp_min=-1, exp_max=1,
                          basis_bits=6, ce_word_bits=10, block_rows=5, max_rows=64,
                          acc_depth=16, quant_depth=16, acc_bits=24, bias_bits=16,
                          mult_bits=12, shift_bits=5),
    "S4_L2_t2": SDConfig(basis_size=4, lanes=2, terms=2, exp_bits=4, exp_min=-10, exp_max=2,
                         block_rows=7, max_rows=200, acc_bits=40, bias_bits=32, mult_bits=20,
                         shift_bits=7, acc_depth=32, quant_depth=32, ce_word_bits=64),
}


@lru_cache(maxsize=1)
def digits_qnet(n_calib: int = 256):
    """The bundled digits network as a `QNet`, and its data split (cached per process).

    Loads the shipped SD checkpoint (`golden.models.load_checkpoint`) and quantizes it
    with ``n_calib`` training images (`golden.qnet.build_qnet`).  Returns
    ``(qnet, split)``.
    """
    from golden.data import load_digits_split
    from golden.models import load_checkpoint
    from golden.qnet import build_qnet

    split = load_digits_split()
    model, config = load_checkpoint()
    return build_qnet(model, config, split.x_train[:n_calib]), split


def layer_inputs(qnet, x_int) -> list:
    """Integer input of every layer of ``qnet`` for the network input ``x_int``."""
    from golden.reference import run_int

    outs = run_int(qnet, x_int, return_all=True)
    return [x_int] + outs[:-1]


def run_block(factory, config: SDConfig, *, test_module: str, name: str, **kwargs):
    """`tb.harness.run_cocotb` with only the top module's ports visible to cocotb.

    cocotb's runner builds with ``--public-flat-rw`` (every internal signal public); the
    block tests touch only top-level ports, and keeping the rest private makes the
    Verilator model several times faster to compile.
    """
    from tb.harness import SIM_ROOT, run_cocotb

    SIM_ROOT.mkdir(parents=True, exist_ok=True)
    vlt = SIM_ROOT / f"{name}.public.vlt"
    text = f'`verilator_config\npublic_flat_rw -module "{name}" -var "*"\n'
    if not vlt.is_file() or vlt.read_text() != text:
        vlt.write_text(text)
    return run_cocotb(factory, config, test_module=test_module, name=name, toplevel=name,
                      verilog_sources=[vlt], build_args=["--no-public-flat-rw"], **kwargs)

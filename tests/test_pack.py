"""Packed format v1: hand-checked golden words, exact round trips, decoder checks."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from golden.pack import (CeError, CeStreamError, decode_ce_stream, pack_basis,
                         pack_ce, pack_layers, pack_quant, packed_storage_bits, term_codes,
                         unpack_basis, unpack_ce, unpack_layer, unpack_quant)
from golden.qnet import QLayer, build_qnet
from golden.reference import layer_int, run_int
from golden.sdweight import SDWeight, rows_per_filter
from hw.config import SDConfig

# ---------------------------------------------------------------- a hand-checked layer
#: 2 lanes, S=3, one term, 3-bit exponent field, e in [-6, 0]; 16-bit Ce words so a
#: 26-bit record spans two words (2 bits row index + 2 lanes x 3 codes x 4 bits).
HAND_CFG = SDConfig(basis_size=3, lanes=2, terms=1, basis_bits=4, exp_bits=3, exp_min=-6,
                    exp_max=0, block_rows=2, acc_bits=24, bias_bits=8, mult_bits=8,
                    shift_bits=4, max_rows=3, ce_word_bits=16, ce_depth=16, basis_depth=8,
                    quant_depth=4, act_depth=16, out_depth=16, acc_depth=4)


def hand_layer() -> QLayer:
    """A 2x6 fully connected layer written out by hand.

    filter 0: row 0 = [+2^0, 0, -2^-1], row 1 = 0
    filter 1: row 0 = [0, +2^-6, 0],    row 1 = [-2^-2, 0, +2^0]
    B0 = [[1, 2, 3], [4, 5, 6], [7, -8, -1]], B1 = 7 * I
    bias/M/sh: filter 0: -3 / 200 / 9, filter 1: 5 / 129 / 10
    """
    mask = torch.zeros(2, 2, 3, 1, dtype=torch.bool)
    sign = torch.zeros_like(mask)
    exp = torch.full((2, 2, 3, 1), -6, dtype=torch.int8)
    for (o, r, j, e, neg) in [(0, 0, 0, 0, 0), (0, 0, 2, -1, 1), (1, 0, 1, -6, 0),
                              (1, 1, 0, -2, 1), (1, 1, 2, 0, 0)]:
        mask[o, r, j, 0], sign[o, r, j, 0], exp[o, r, j, 0] = True, bool(neg), e
    basis = torch.tensor([[[[1, 2, 3], [4, 5, 6], [7, -8, -1]]],
                          [[[7, 0, 0], [0, 7, 0], [0, 0, 7]]]], dtype=torch.int32)
    sd = SDWeight(config=HAND_CFG, weight_shape=(2, 6), mask=mask, sign=sign, exponent=exp,
                  basis=basis, basis_scale=torch.tensor([0.5, 0.25], dtype=torch.float64),
                  row_keep=torch.tensor([[True, True]]), name="fc")
    return QLayer(name="fc", sd=sd, relu=False, stride=(1, 1), padding=(0, 0), in_shape=(6,),
                  out_shape=(2,), bias_float=np.zeros(2), bias_int=np.array([-3, 5]),
                  mult=np.array([200, 129]), shift=np.array([9, 10]), in_scale=1.0,
                  out_scale=1.0)


def test_hand_layer_golden_words_and_outputs():
    lay = hand_layer()
    # header: n_rows=2 | tag 0x5D << 2 = 0x176, then 16 zero bits
    # row 0: 0 | 7<<2 | 0xE<<10 | 1<<18 = 0x4381C   (codes k = lane*3 + element)
    # row 1: 1 | 0xD<<14 | 7<<22 = 0x1C34001
    assert pack_ce(lay.sd) == [0x0176, 0x0000, 0x381C, 0x0004, 0x4001, 0x01C3]
    # B[j][i] at nibble j*3+i: lane 0 -> F87654321, lane 1 -> 700070007
    assert pack_basis(lay.sd) == [0xF87654321, 0x700070007]
    # bias (8 b, two's complement) | M << 8 | sh << 16
    assert pack_quant(lay.bias_int, lay.mult, lay.shift, HAND_CFG) == [0x9C8FD, 0xA8105]
    # w_int (units of B * 2^-6): filter 0 = [-160, 384, 224, 0, 0, 0],
    #                            filter 1 = [0, 7, 0, -112, 0, 448]
    assert lay.sd.rebuilt_int().reshape(2, 6).tolist() == [[-160, 384, 224, 0, 0, 0],
                                                           [0, 7, 0, -112, 0, 448]]
    # x = [1, 0, 0, 0, 0, -1]: acc = [-160, -448];
    # ((-160 - 3) * 200 + 256) >> 9 = -64 ; ((-448 + 5) * 129 + 512) >> 10 = -56
    y, acc = layer_int(lay, np.array([[1, 0, 0, 0, 0, -1]]), return_acc=True)
    assert acc.reshape(-1).tolist() == [-160, -448]
    assert y.tolist() == [[-64, -56]]
    rows = decode_ce_stream(pack_ce(lay.sd), HAND_CFG, 1, 2)
    assert [(r.row, r.first, r.last, r.mask, r.sign, r.shift) for r in rows] == [
        (0, True, False, (0b101, 0b010), (0b100, 0), ((6, 0, 5), (0, 0, 0))),
        (1, False, True, (0, 0b101), (0, 0b001), ((0, 0, 0), (4, 0, 6)))]


# ---------------------------------------------------------------- random layers
def random_sdweight(cfg: SDConfig, shape, seed: int, density=0.6, keep=0.7,
                    name="w") -> SDWeight:
    g = torch.Generator().manual_seed(seed)
    cout = shape[0]
    s, t, lanes = cfg.basis_size, cfg.terms, cfg.lanes
    r = rows_per_filter(shape, s)
    n_groups = -(-cout // lanes)
    nb = -(-r // cfg.block_rows)
    row_keep = torch.rand(n_groups, r, generator=g) < keep
    group = torch.arange(cout) // lanes
    mask = (torch.rand(cout, r, s, t, generator=g) < density) & row_keep[group][..., None, None]
    sign = (torch.rand(cout, r, s, t, generator=g) < 0.5) & mask
    exp = torch.randint(cfg.exp_min, cfg.exp_max + 1, (cout, r, s, t), generator=g)
    exp = torch.where(mask, exp, cfg.exp_min).to(torch.int8)
    basis = torch.randint(cfg.basis_min, cfg.basis_max + 1, (cout, nb, s, s), generator=g)
    scale = torch.rand(cout, generator=g, dtype=torch.float64) * 0.01 + 1e-3
    return SDWeight(config=cfg, weight_shape=tuple(shape), mask=mask, sign=sign, exponent=exp,
                    basis=basis.to(torch.int32), basis_scale=scale, row_keep=row_keep,
                    name=name)


CONFIGS = [
    SDConfig(),
    SDConfig(lanes=3, ce_word_bits=16, block_rows=5, max_rows=64),
    SDConfig(basis_size=4, lanes=2, terms=2, exp_bits=4, exp_min=-8, exp_max=2,
             ce_word_bits=64, basis_bits=6, max_rows=300, block_rows=7),
    SDConfig(basis_size=2, lanes=5, ce_word_bits=8, max_rows=40, block_rows=40),
]
SHAPES = [(7, 10), (5, 3, 3, 3), (9, 2, 5, 1), (3, 40)]


def _same_sd(a: SDWeight, b: SDWeight) -> None:
    assert a.weight_shape == b.weight_shape
    assert torch.equal(a.mask, b.mask) and torch.equal(a.sign, b.sign)
    assert torch.equal(a.exponent[a.mask], b.exponent[b.mask])
    assert torch.equal(a.basis, b.basis) and torch.equal(a.row_keep, b.row_keep)
    assert torch.equal(a.rebuilt_int(), b.rebuilt_int())


@pytest.mark.parametrize("ci", range(len(CONFIGS)))
@pytest.mark.parametrize("si", range(len(SHAPES)))
def test_pack_unpack_exact_and_storage_bits_equal(ci, si):
    cfg, shape = CONFIGS[ci], SHAPES[si]
    for seed, (density, keep) in enumerate([(0.6, 0.7), (0.0, 0.3), (1.0, 1.0), (0.3, 0.0)]):
        sd = random_sdweight(cfg, shape, 100 * ci + 10 * si + seed, density, keep)
        ce, basis = pack_ce(sd), pack_basis(sd)
        bias = np.arange(sd.out_channels) - 2
        q = pack_quant(bias, np.arange(sd.out_channels) + 1, np.arange(sd.out_channels) % 5, cfg)
        mask, sign, exp, keep_t = unpack_ce(ce, cfg, shape)
        back = SDWeight(config=cfg, weight_shape=shape, mask=mask, sign=sign, exponent=exp,
                        basis=unpack_basis(basis, cfg, sd.out_channels, sd.n_blocks),
                        basis_scale=sd.basis_scale, row_keep=keep_t)
        _same_sd(sd, back)
        b2, m2, s2 = unpack_quant(q, cfg, sd.out_channels)
        assert b2.tolist() == bias.tolist() and m2.tolist() == list(range(1, sd.out_channels + 1))
        # one number, two ways: SDWeight accounting == words x widths of the images
        packed = (len(ce) * cfg.ce_word_width + len(basis) * cfg.basis_word_bits
                  + len(q) * cfg.quant_word_bits)
        assert packed == sd.storage_bits().total
        # the decoder sees one row per kept row and one empty row per empty group
        rows = decode_ce_stream(ce, cfg, sd.n_groups, sd.rows)
        kept = sd.kept_rows()
        assert len(rows) == int(kept.sum()) + int((kept == 0).sum())


def test_decoded_rows_match_the_codes():
    cfg = CONFIGS[2]
    sd = random_sdweight(cfg, (5, 3, 3, 3), 7)
    codes = term_codes(sd)
    rows = decode_ce_stream(pack_ce(sd), cfg, sd.n_groups, sd.rows)
    for d in rows:
        if d.empty:
            assert not sd.row_keep[d.group].any()
            continue
        assert d.block == d.row // cfg.block_rows
        for lane in range(cfg.lanes):
            o = d.group * cfg.lanes + lane
            for jt in range(cfg.basis_size * cfg.terms):
                j, t = divmod(jt, cfg.terms)
                c = int(codes[o, d.row, j, t]) if o < sd.out_channels else 0
                fld = c & ((1 << cfg.exp_bits) - 1)
                assert (d.mask[lane] >> jt) & 1 == (fld != 0)
                assert (d.sign[lane] >> jt) & 1 == c >> cfg.exp_bits
                assert d.shift[lane][jt] == (fld - 1 if fld else 0)


def test_ce_error_codes_equal_the_rtl_decoder_codes():
    from hw.layouts import DecodeError
    assert {e.name: int(e) for e in CeError} == {e.name: int(e) for e in DecodeError}


# ---------------------------------------------------------------- decoder checks
def _stream():
    """The hand layer's stream as (words, config, n_groups, n_rows)."""
    return pack_ce(hand_layer().sd), HAND_CFG, 1, 2


@pytest.mark.parametrize("mutate,code,address", [
    (lambda w: w.__setitem__(0, w[0] ^ (1 << 5)), CeError.BAD_TAG, 1),
    (lambda w: w.__setitem__(0, (w[0] & ~3) | 3), CeError.BAD_COUNT, 1),
    (lambda w: w.__setitem__(1, 1 << 3), CeError.PADDING, 1),
    (lambda w: w.__setitem__(4, (w[4] & ~3) | 2), CeError.ROW_RANGE, 5),
    (lambda w: w.__setitem__(4, w[4] & ~3), CeError.ROW_ORDER, 5),
    (lambda w: w.__setitem__(2, w[2] | (0x8 << 6)), CeError.BAD_CODE, 3),    # negative zero
    (lambda w: w.__setitem__(5, w[5] | (1 << 12)), CeError.PADDING, 5),
    (lambda w: w.pop(), CeError.EARLY_LAST, 4),                              # truncated mid-slot
    (lambda w: w.__delitem__(slice(4, None)), CeError.EARLY_LAST, 3),        # truncated at a slot
    (lambda w: w.append(0), CeError.MISSING_LAST, 5),                        # trailing word
])
def test_decoder_rejects_bad_streams(mutate, code, address):
    words, cfg, g, r = _stream()
    decode_ce_stream(words, cfg, g, r)           # the unmodified stream decodes
    mutate(words)
    with pytest.raises(CeStreamError) as exc:
        decode_ce_stream(words, cfg, g, r)
    assert exc.value.code == code and exc.value.address == address, str(exc.value)


def test_decoder_rejects_field_beyond_the_levels():
    cfg = HAND_CFG.replace(exp_min=-5)          # 6 levels: field 7 becomes invalid
    words = pack_ce(hand_layer().sd)             # filter 0 row 0 holds field 7
    with pytest.raises(CeStreamError, match=r"field 7 > 6 exponent levels") as exc:
        decode_ce_stream(words, cfg, 1, 2)
    assert exc.value.code == CeError.BAD_CODE


def test_decoder_bad_args_and_explicit_last_flags():
    words, cfg, _, r = _stream()
    with pytest.raises(CeStreamError) as exc:
        decode_ce_stream(words, cfg, 0, r)
    assert exc.value.code == CeError.BAD_ARGS
    with pytest.raises(CeStreamError) as exc:
        decode_ce_stream(words, cfg, 1, cfg.max_rows + 1)
    assert exc.value.code == CeError.BAD_ARGS
    # 'last' on the header's final word: early
    with pytest.raises(CeStreamError) as exc:
        decode_ce_stream(words, cfg, 1, r, last=[0, 1, 0, 0, 0, 0])
    assert (exc.value.code, exc.value.address) == (CeError.EARLY_LAST, 1)
    # no 'last' at all: the final slot reports it missing
    with pytest.raises(CeStreamError) as exc:
        decode_ce_stream(words, cfg, 1, r, last=[0] * 6)
    assert (exc.value.code, exc.value.address) == (CeError.MISSING_LAST, 5)


def test_empty_group_gives_one_empty_row():
    cfg = HAND_CFG
    sd = random_sdweight(cfg, (4, 6), 3, keep=0.0)
    words = pack_ce(sd)
    assert words == [0x174, 0, 0x174, 0]
    rows = decode_ce_stream(words, cfg, 2, 2)
    assert [(r.group, r.empty, r.first, r.last, r.new_block) for r in rows] == [
        (0, True, True, True, True), (1, True, True, True, True)]


def test_unpack_errors_name_layer_memory_and_address():
    lay = hand_layer()
    ce = pack_ce(lay.sd)
    ce[2] |= 0x8 << 6
    with pytest.raises(ValueError, match=r"layer fc: ce memory address 13: .*invalid code"):
        unpack_ce(ce, HAND_CFG, (2, 6), "fc", base=10)
    # a 3-channel layer leaves lane 1 of group 1 empty; a code there is rejected
    sd3 = random_sdweight(HAND_CFG, (3, 6), 5, density=1.0, keep=1.0)
    sd4 = random_sdweight(HAND_CFG, (4, 6), 5, density=1.0, keep=1.0)
    with pytest.raises(ValueError, match=r"channel 3 .* beyond the layer's 3 output channels"):
        unpack_ce(pack_ce(sd4), HAND_CFG, (3, 6), "fc3")
    bw = pack_basis(sd4)
    with pytest.raises(ValueError, match=r"basis memory address 3: lane 1 of group 1"):
        unpack_basis(bw, HAND_CFG, 3, 1, "fc3")
    with pytest.raises(ValueError, match=r"3 basis words at address 0, expected 4"):
        unpack_basis(bw[:3], HAND_CFG, 4, 1, "fc4")
    with pytest.raises(ValueError, match=r"1 quant words at address 2, expected 2"):
        unpack_quant([0], HAND_CFG, 2, "fc", base=2)
    assert len(pack_basis(sd3)) == 4


def test_pack_quant_range_errors():
    with pytest.raises(ValueError, match=r"bias 128 of channel 0 does not fit bias_bits=8"):
        pack_quant([128], [1], [0], HAND_CFG, "fc")
    with pytest.raises(ValueError, match=r"multiplier 256 .* mult_bits=8"):
        pack_quant([0], [256], [0], HAND_CFG, "fc")
    with pytest.raises(ValueError, match=r"shift 16 .* shift_bits=4"):
        pack_quant([0], [1], [16], HAND_CFG, "fc")


def test_network_too_deep_for_the_memory_is_refused():
    lay = hand_layer()
    small = HAND_CFG.replace(ce_depth=5)
    lay_small = QLayer(**{**lay.__dict__, "sd": SDWeight(**{**lay.sd.__dict__,
                                                            "config": small})})
    with pytest.raises(ValueError, match=r"needs 6 words of ce memory but the configuration "
                                         r"has ce_depth=5 \(fc: 6\)"):
        pack_layers([lay_small], small)


class _FakeSD:
    """A module-like holder of an `SDWeight` (what `build_qnet` asks of an SD layer)."""

    def __init__(self, sd, bias, stride=1, padding=0):
        self.sd, self.bias, self.stride, self.padding = sd, torch.as_tensor(bias), stride, padding

    def to_sdweight(self, name=None):
        return self.sd


def test_pack_unpack_then_reference_equals_reference_before_packing():
    cfg = CONFIGS[1]
    g = torch.Generator().manual_seed(0)
    plan = [("c1", _FakeSD(random_sdweight(cfg, (5, 2, 3, 3), 1), torch.randn(5) * .1, 1, 1),
             True),
            ("c2", _FakeSD(random_sdweight(cfg, (4, 5, 3, 3), 2), torch.randn(4) * .1, 2, 1),
             True),
            ("fc", _FakeSD(random_sdweight(cfg, (3, 36), 3), torch.randn(3) * .1), False)]
    x = torch.rand(16, 2, 6, 6, generator=g)
    qnet = build_qnet(None, cfg, x, layers=plan)
    packed = pack_layers(qnet.layers, cfg)
    xi = qnet.quantize_input(x)
    ref = run_int(qnet, xi, return_all=True)
    h = xi
    for lay, pl, want in zip(qnet.layers, packed.placements, ref):
        sd, b, m, s = unpack_layer(cfg, packed.images, pl, lay.weight_shape, lay.sd.basis_scale)
        _same_sd(lay.sd, sd)
        back = QLayer(**{**lay.__dict__, "sd": sd, "bias_int": b, "mult": m, "shift": s})
        h = layer_int(back, h)
        assert np.array_equal(h, want), lay.name
        assert packed_storage_bits(cfg, pl) == lay.sd.storage_bits().total

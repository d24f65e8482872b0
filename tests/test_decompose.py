"""Quantizer, reshaping, decomposition error bounds, batched-vs-loop equivalence, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from golden.decompose import (DecomposeOptions, decompose, decompose_reference_loop,
                              relative_error)
from golden.quantize import codes_from_values, pow2_quantize, pow2_round, project
from golden.sdweight import rows_per_filter, rows_to_weight, weight_to_rows
from golden.sparsity import group_rows_any, prune_rows, row_scores
from hw.config import SDConfig, preset

DEFAULT = preset("default")


@pytest.fixture(scope="module")
def trained_dense_state():
    """Weights of the shipped dense digits model (trained, not random)."""
    from golden.models import load_dense_checkpoint
    model, _ = load_dense_checkpoint()
    return {k: v.detach() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------ quantizer
def _nearest_reference(x: float, exp_min: int, exp_max: int) -> float:
    """Brute force: nearest of {0} U {2**e}, ties to the larger magnitude."""
    m = abs(x)
    best, best_d = 0.0, m
    for e in range(exp_min, exp_max + 1):
        c = 2.0 ** e
        d = abs(m - c)
        if d < best_d or (d == best_d and c > best):
            best, best_d = c, d
    return math.copysign(best, x) if best else 0.0


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False,
                   width=32)
ranges = st.tuples(st.integers(-12, 4), st.integers(0, 8)).map(lambda t: (t[0], t[0] + t[1]))


@settings(max_examples=300, deadline=None)
@given(st.lists(finite, min_size=1, max_size=40), ranges)
def test_pow2_round_is_nearest_in_linear_distance(xs, rng):
    exp_min, exp_max = rng
    x = torch.tensor(xs, dtype=torch.float32)
    for dtype in (torch.float32, torch.float64):
        q = pow2_round(x.to(dtype), exp_min, exp_max)
        for xi, qi in zip(x.tolist(), q.tolist()):
            assert qi == _nearest_reference(xi, exp_min, exp_max), (xi, qi, dtype)


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=1, max_size=40), ranges,
       st.floats(min_value=0, max_value=1, allow_nan=False))
def test_pow2_round_codes_range_sign_idempotence(xs, rng, threshold):
    exp_min, exp_max = rng
    x = torch.tensor(xs, dtype=torch.float32)
    q, codes = pow2_quantize(x, exp_min, exp_max, threshold=threshold)
    assert torch.equal(project(q, exp_min, exp_max), q)              # idempotent
    assert ((q == 0) | (torch.sign(q) == torch.sign(x))).all()       # sign kept
    assert (q[x.abs() < threshold] == 0).all()                        # threshold zeroes
    live = codes.exponent[codes.mask]
    assert ((live >= exp_min) & (live <= exp_max)).all()
    assert not (codes.sign & ~codes.mask).any()                       # no negative zero
    assert torch.equal(codes.values(torch.float32), q)


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=1, max_size=40), ranges)
def test_two_terms_greedy(xs, rng):
    exp_min, exp_max = rng
    x = torch.tensor(xs, dtype=torch.float64)
    q, codes = pow2_quantize(x, exp_min, exp_max, terms=2)
    q1 = pow2_round(x, exp_min, exp_max)
    q2 = pow2_round(x - q1, exp_min, exp_max)
    assert torch.equal(q, q1 + q2)
    assert codes.mask.shape == x.shape + (2,)
    assert torch.equal(codes.values(), q)
    # never worse than one term
    assert ((x - q).abs() <= (x - q1).abs()).all()


@settings(max_examples=100, deadline=None)
@given(st.lists(finite, min_size=1, max_size=60), ranges,
       st.sampled_from([0.0, 1e-3, 0.01, 0.3]), st.sampled_from([1, 2]),
       st.sampled_from([torch.float32, torch.float64]))
def test_hot_loop_projector_is_bitwise_project(xs, rng, threshold, terms, dtype):
    """`golden.decompose._Projector` (buffers reused) == `golden.quantize.project`."""
    from golden.decompose import _Projector
    exp_min, exp_max = rng
    x = torch.tensor(xs, dtype=dtype)
    x = torch.cat([x, -x, torch.zeros(1, dtype=dtype)]).view(1, 1, -1)
    ref = project(x, exp_min, exp_max, terms, threshold)
    proj = _Projector((2,) + x.shape[1:], dtype, exp_min, exp_max, terms, threshold)
    out = torch.full_like(x, float("nan"))
    for _ in range(2):                                    # scratch reuse is harmless
        got = proj(x, out)
        assert torch.equal(got.view(proj.idt), ref.view(proj.idt))     # bits, no -0.0


def test_greedy_projection_fixes_every_two_term_value():
    exp_min, exp_max = -6, 0
    levels = [0.0] + [s * 2.0 ** e for e in range(exp_min, exp_max + 1) for s in (1, -1)]
    vals = torch.tensor(sorted({a + b for a in levels for b in levels}), dtype=torch.float64)
    q, _ = pow2_quantize(vals, exp_min, exp_max, terms=2)
    assert torch.equal(q, vals)
    codes_from_values(vals, exp_min, exp_max, terms=2)     # all representable


def test_codes_from_values_rejects_unrepresentable():
    with pytest.raises(ValueError, match=r"not a sum of 1 power"):
        codes_from_values(torch.tensor([0.5, 0.3]), -6, 0, name="ce")
    with pytest.raises(ValueError, match=r"outside|not a sum"):
        codes_from_values(torch.tensor([2.0]), -6, 0)


def test_quantizer_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN or infinite"):
        pow2_quantize(torch.tensor([1.0, float("nan")]), -6, 0)
    with pytest.raises(ValueError, match="empty"):
        pow2_quantize(torch.tensor([1.0]), 0, -1)
    with pytest.raises(ValueError, match="terms"):
        pow2_quantize(torch.tensor([1.0]), -6, 0, terms=3)
    with pytest.raises(ValueError, match="does not fit"):
        pow2_quantize(torch.tensor([1.0]), -200, 0)


# ------------------------------------------------------------------ reshaping
@pytest.mark.parametrize("shape", [(8, 27), (8, 28), (8, 29), (5, 1), (16, 4, 3, 3),
                                   (16, 4, 1, 1), (7, 3, 5, 5), (6, 2, 7, 7), (4, 3, 2, 4)])
def test_reshaping_round_trip_every_layer_kind(shape):
    w = torch.randn(shape)
    rows = weight_to_rows(w, 3)
    k = math.prod(shape[1:])
    assert rows.shape == (shape[0], rows_per_filter(shape, 3), 3)
    assert rows.shape[1] == -(-k // 3)
    assert torch.equal(rows.reshape(shape[0], -1)[:, :k], w.reshape(shape[0], -1))
    assert (rows.reshape(shape[0], -1)[:, k:] == 0).all()            # zero padding
    assert torch.equal(rows_to_weight(rows, shape), w)


def test_rows_are_kernel_rows_for_3x3():
    w = torch.arange(2 * 3 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3, 3)
    rows = weight_to_rows(w, 3)
    assert torch.equal(rows[1, 4], w[1, 1, 1])                         # cin=1, ky=1


@pytest.mark.parametrize("shape", [(8, 29), (7, 3, 5, 5), (9, 4, 1, 1), (6, 2, 7, 7)])
def test_decompose_any_kernel_size_and_padding(shape):
    torch.manual_seed(1)
    w = torch.randn(shape)
    sdw = decompose(w, name="odd")
    assert sdw.weight_shape == shape
    assert sdw.reconstruct().shape == w.shape
    # error bounded, and measured on real weights only (padding excluded)
    assert sdw.extra["rel_error"] == pytest.approx(relative_error(w, sdw), rel=1e-5)
    assert sdw.extra["rel_error"] < 0.3


# ----------------------------------------------------------- error bounds
@pytest.mark.parametrize("terms,bound", [(1, 0.25), (2, 0.06)])
def test_decompose_reconstruct_error_bound_gaussian(terms, bound):
    torch.manual_seed(0)
    w = torch.randn(32, 16, 3, 3) * 0.1
    sdw = decompose(w, DEFAULT.replace(terms=terms))
    err = relative_error(w, sdw)
    assert err < bound
    assert sdw.extra["rel_error"] == pytest.approx(err, rel=1e-5)


def test_weights_on_the_grid_are_reproduced_exactly():
    """Weights that already are signed powers of two (times one scale) need no basis."""
    torch.manual_seed(3)
    w = pow2_round(torch.randn(4, 40, 3) * 0.3, -6, 0).reshape(4, 120) * 0.037
    w[:, 0] = 0.037                                   # the largest magnitude per filter
    sdw = decompose(w)
    assert relative_error(w, sdw) < 1e-6
    assert sdw.extra["max_iterations"] <= 1


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 12), st.integers(1, 70),
       st.floats(1e-3, 1e3), st.integers(0, 2 ** 31 - 1))
def test_decompose_property_error_and_validity(cout, n, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(cout, n, generator=gen) * scale
    sdw = decompose(w, name="prop")                     # SDWeight validates itself
    err = relative_error(w, sdw)
    assert err < 0.35
    # scale invariance: the error does not depend on the weights' magnitude
    sdw2 = decompose(w * 1024.0, name="prop")
    assert relative_error(w * 1024.0, sdw2) == pytest.approx(err, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("n", [1, 2, 4, 5, 6])
def test_filters_of_fewer_rows_than_s_are_stored_exactly(n):
    """Fewer than S rows cannot determine an S x S basis: identity codes, basis = rows."""
    torch.manual_seed(n)
    w = torch.randn(6, n)
    w[0, 0] = 0.0
    sdw, loop = decompose(w, name="short"), decompose_reference_loop(w, name="short")
    for key in ("mask", "sign", "exponent", "basis"):
        assert torch.equal(getattr(sdw, key), getattr(loop, key)), key
    assert relative_error(w, sdw) < 0.01               # only the 8-bit basis rounding
    rows = -(-n // 3)
    padded = torch.nn.functional.pad(w, (0, 3 * rows - n)).view(6, rows, 3)
    assert sdw.mask.sum() == padded.ne(0).any(-1).sum()   # one code per non-zero row
    assert sdw.extra["max_iterations"] == 0


def test_small_blocks_and_multi_block_filters():
    torch.manual_seed(2)
    w = torch.randn(6, 200)
    cfg = DEFAULT.replace(block_rows=10)
    sdw = decompose(w, cfg)
    assert sdw.n_blocks == 7 and sdw.basis.shape == (6, 7, 3, 3)
    assert relative_error(w, sdw) < 0.3


def test_all_zero_and_tiny_weights():
    z = decompose(torch.zeros(4, 9))
    assert z.density == 0 and (z.reconstruct() == 0).all()
    assert (z.basis_scale > 0).all()
    w = torch.randn(4, 9) * 1e-30
    t = decompose(w)
    assert relative_error(w, t) < 0.3
    sub = torch.randn(4, 9) * 1e-40                 # subnormal float32: float64 scaling
    a, b = decompose(sub), decompose_reference_loop(sub)
    assert relative_error(sub, a) < 0.3
    assert torch.equal(a.exponent, b.exponent) and torch.equal(a.basis, b.basis)


def test_max_c_narrows_the_top_exponent():
    torch.manual_seed(0)
    sdw = decompose(torch.randn(8, 27), max_c=0.25)
    assert int(sdw.exponent[sdw.mask].max()) <= -2


# -------------------------------------------------------------- equivalence
def _agreement(a, b) -> float:
    same = (a.mask == b.mask) & (a.sign == b.sign) & ((a.exponent == b.exponent) | ~a.mask)
    return float(same.float().mean())


@pytest.mark.parametrize("shape,options", [
    ((24, 16, 3, 3), {}),
    ((10, 130), {}),
    ((12, 5, 5, 5), {"row_threshold": True}),
    ((16, 8, 3, 3), {"prune": 0.3}),
    ((20, 6, 3, 3), {"iterations": 2}),
    ((20, 6, 3, 3), {"tolerance": 0.1, "dtype": torch.float64}),
])
def test_batched_equals_loop_random(shape, options):
    torch.manual_seed(5)
    w = torch.randn(shape) * 0.05
    cfg = DEFAULT.replace(block_rows=16)        # several blocks per filter
    a = decompose(w, cfg, **options)
    b = decompose_reference_loop(w, cfg, **options)
    assert _agreement(a, b) >= 0.999
    assert a.extra["rel_error"] == pytest.approx(b.extra["rel_error"], rel=1e-6)
    assert torch.equal(a.row_keep, b.row_keep)
    # every block stops at the loop's iteration (stopped blocks are saved at once,
    # whenever the active set is compacted)
    assert (a.extra["mean_iterations"], a.extra["max_iterations"]) == \
        (b.extra["mean_iterations"], b.extra["max_iterations"])


def test_batched_equals_loop_two_terms():
    torch.manual_seed(6)
    w = torch.randn(16, 8, 3, 3)
    cfg = DEFAULT.replace(terms=2)
    a, b = decompose(w, cfg), decompose_reference_loop(w, cfg)
    assert _agreement(a, b) >= 0.999
    assert a.extra["rel_error"] == pytest.approx(b.extra["rel_error"], rel=1e-6)


def test_batched_equals_loop_trained_weights(trained_dense_state):
    for name in ("conv2.weight", "conv3.weight", "fc.weight"):
        w = trained_dense_state[name]
        a = decompose(w, name=name)
        b = decompose_reference_loop(w, name=name)
        assert _agreement(a, b) >= 0.999, name
        assert a.extra["rel_error"] == pytest.approx(b.extra["rel_error"], rel=1e-6), name
        assert torch.equal(a.basis, b.basis), name


def test_chunking_does_not_change_the_result():
    torch.manual_seed(7)
    w = torch.randn(40, 64)
    a = decompose(w)
    b = decompose(w, chunk_weights=100, workers=3)        # one filter per chunk, threads
    assert torch.equal(a.exponent, b.exponent) and torch.equal(a.basis, b.basis)
    assert a.extra["rel_error"] == b.extra["rel_error"]
    threads = torch.get_num_threads()
    decompose(w, workers=1)
    assert torch.get_num_threads() == threads               # intra-op setting restored
    # filters of several blocks, the last one padded (solved apart, all filters at once)
    cfg = DEFAULT.replace(block_rows=16)
    w = torch.randn(13, 130)                                 # 44 rows: 16 + 16 + 12
    a = decompose(w, cfg, workers=1)
    b = decompose(w, cfg, chunk_weights=200, workers=3)
    c = decompose_reference_loop(w, cfg)
    for other in (b, c):
        assert torch.equal(a.exponent, other.exponent) and torch.equal(a.mask, other.mask)
        assert torch.equal(a.basis, other.basis)
        assert a.extra["max_iterations"] == other.extra["max_iterations"]


def test_float64_working_precision_agrees():
    torch.manual_seed(8)
    w = torch.randn(16, 4, 3, 3)
    a = decompose(w)
    b = decompose(w, dtype=torch.float64)
    assert _agreement(a, b) > 0.99
    assert a.extra["rel_error"] == pytest.approx(b.extra["rel_error"], rel=0.05)


# ----------------------------------------------------------- structural pruning
@pytest.mark.parametrize("criterion", ["value", "energy", "population"])
def test_pruning_shares_one_row_pattern_per_group(criterion):
    torch.manual_seed(9)
    w = torch.randn(20, 6, 3, 3)                     # 3 groups of 8 (last one partial)
    sdw = decompose(w, DEFAULT.replace(lanes=8), prune=0.5, criterion=criterion,
                    name="pruned")
    assert sdw.row_keep.shape == (3, 18)
    assert (sdw.row_keep.sum(1) <= 9).all()
    group = torch.arange(20) // 8
    nz = sdw.mask.any(-1).any(-1)
    assert not (nz & ~sdw.row_keep[group]).any()
    # pruned rows are zero in the reconstruction for every filter of the group
    rows = weight_to_rows(sdw.reconstruct(), 3)
    assert (rows[~sdw.row_keep[group]] == 0).all()


def test_pruning_criteria_pick_the_expected_rows():
    w = torch.ones(8, 12)
    w[:, 0:3] = 10.0                # row 0: large values
    w[:, 3:6] = 0.0                 # row 1: all zero
    w[:, 6] = 30.0                  # row 2: one big entry (L1 30+2, energy 902)
    keep_v = prune_rows(w, 0.25, 8, 3, "value")
    assert keep_v.tolist() == [[True, False, True, True]]
    scores = row_scores(weight_to_rows(w, 3), 8, "population")
    assert scores[0, 1] < scores[0, 3] and scores[0, 0] >= scores[0, 3]
    keep_e = prune_rows(w, 0.5, 8, 3, "energy")
    assert keep_e.tolist() == [[True, False, True, False]]


def test_explicit_row_keep_and_all_zero_rows_drop_out():
    w = torch.randn(8, 9)
    w[:, 3:6] = 0
    keep = torch.tensor([[True, True, False]])               # one group of 8 filters
    sdw = decompose(w, DEFAULT.replace(lanes=8), row_keep=keep)
    assert sdw.row_keep.tolist() == [[True, False, False]]    # row 1 zero: not stored
    assert group_rows_any(sdw.mask.any(-1).any(-1), 8).tolist() == [[True, False, False]]


def test_storage_counts_only_kept_rows():
    torch.manual_seed(10)
    w = torch.randn(16, 32, 3, 3)
    full, half = decompose(w), decompose(w, prune=0.5)
    cfg = DEFAULT
    rec = cfg.words_per_record * cfg.ce_word_width
    assert full.storage_bits().total - half.storage_bits().total == \
        (int(full.row_keep.sum()) - int(half.row_keep.sum())) * rec


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("weight,match", [
    (torch.tensor([[1.0, float("nan")]]), "NaN or infinite"),
    (torch.tensor([[1.0, float("inf")]]), "NaN or infinite"),
    (torch.empty(0, 9), "empty"),
    (torch.empty(4, 0), "empty"),
    (torch.randn(3, 4, 5), "unsupported weight with 3 dims"),
    (torch.randn(9), "unsupported weight with 1 dims"),
])
def test_bad_weights_name_the_tensor(weight, match):
    with pytest.raises(ValueError, match=f"layer7.*{match}|{match}"):
        decompose(weight, name="layer7")
    with pytest.raises(ValueError, match="layer7"):
        decompose(weight, name="layer7")


def test_bad_options():
    w = torch.randn(8, 9)
    with pytest.raises(ValueError, match="l: max_c"):
        decompose(w, name="l", max_c=2.0 ** -8)
    with pytest.raises(ValueError, match="l: threshold"):
        decompose(w, name="l", threshold=2.0)
    with pytest.raises(ValueError, match="pruning fraction"):
        decompose(w, name="l", prune=1.0)
    with pytest.raises(ValueError, match="row_keep has shape"):
        decompose(w, name="l", row_keep=torch.ones(5, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="criterion"):
        decompose(w, criterion="magic")
    with pytest.raises(TypeError, match="unknown decompose option"):
        decompose(w, iters=3)
    with pytest.raises(ValueError, match="iterations"):
        DecomposeOptions(iterations=-1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        decompose([[1.0, 2.0]])
    with pytest.raises(ValueError, match="exp_bits"):
        decompose(w, SDConfig(exp_bits=2, exp_min=-6, exp_max=0))


def test_sdweight_validation_still_rejects_bad_codes():
    """`SDWeight.validate` (uint8 fast paths) keeps every check of the boolean form."""
    from dataclasses import replace as dc_replace
    torch.manual_seed(11)
    sdw = decompose(torch.randn(8, 4, 3, 3), name="v")
    dead = (~sdw.mask).nonzero()[0].tolist()
    live = sdw.mask.nonzero()[0].tolist()
    exp = sdw.exponent.clone()
    exp[tuple(dead)] = 100                      # out of range on a masked-off term: fine
    dc_replace(sdw, exponent=exp)
    exp[tuple(live)] = 100                      # ... on a live term: refused
    with pytest.raises(ValueError, match=r"v: exponents \[.*100\] exceed"):
        dc_replace(sdw, exponent=exp)
    sign = sdw.sign.clone()
    sign[tuple(dead)] = True
    with pytest.raises(ValueError, match="v: sign set on a zero term"):
        dc_replace(sdw, sign=sign)
    keep = sdw.row_keep.clone()
    keep[:, live[1]] = False
    with pytest.raises(ValueError, match="v: a row outside the group's structural pattern"):
        dc_replace(sdw, row_keep=keep)

"""SmartDeal decomposition ``W ~= Ce . B``, batched over all blocks.

A weight is reshaped into rows of ``S`` (`golden.sdweight.weight_to_rows`), every
filter's rows are cut into blocks of at most ``config.block_rows`` rows, and every
block ``A`` (``m x S``) is approximated by ``Ce . B`` with ``Ce`` sums of signed powers
of two in the configured exponent range and ``B`` an ``S x S`` basis.  All blocks of a
tensor are solved together: ``(n_blocks, m, S)`` tensors, batched matrix products and a
batched ``torch.linalg.solve`` of the ``S x S`` normal equations; no Python loop runs
over blocks.  `decompose_reference_loop` is the straightforward per-block loop of the
same algorithm, kept as the equivalence and speed reference.

Algorithm, per block (``docs/golden.md`` has the reasoning):

0. Normalise: ``A' = alpha * A`` with ``alpha = 2**e_top / max|A|`` so the largest
   element sits at the top of the exponent range (``e_top = min(exp_max,
   floor(log2(max_c)))``); ``1/alpha`` is folded into ``B`` at the end.
1. ``Ce = A'``, ``B = I``.
2. Up to ``iterations`` times: ``Cq = Q(Ce)`` (`golden.quantize`, nearest power of
   two in linear distance, exponent range, element ``threshold``); stop the block when
   ``max|Cq - Cq_prev| <= tolerance``; ``B = argmin ||Cq B - A'||`` and
   ``Ce = argmin ||Ce B - A'||`` by ridge-regularised normal equations; optionally zero
   rows of ``Ce`` whose L1 norm (after the element threshold) is below
   ``5 * threshold``.
3. ``Cq = Q(Ce)`` and a final least-squares ``B``.
4. ``B / alpha`` is quantised to ``basis_bits`` with one symmetric scale per output
   channel (``max |B|`` over the channel's blocks ``/ basis_max``).

Structural pruning (`golden.sparsity`) zeroes the pruned rows of ``A`` before step 0;
zero rows stay exactly zero through every step (``0 . M = 0``, ``Q(0) = 0``) and add
nothing to the normal equations, which is also why padding blocks to a common row
count with zero rows needs no mask.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import torch

from golden.quantize import check_exp_range, pow2_round, project
from golden.sdweight import SDWeight
from golden.sparsity import CRITERIA, group_of_filters, prune_rows
from hw.config import SDConfig, load_config

__all__ = ["DecomposeOptions", "decompose", "decompose_reference_loop", "check_weight",
           "relative_error", "solve_blocks", "solve_block_loop", "default_workers",
           "intra_op_threads"]


@dataclass(frozen=True)
class DecomposeOptions:
    """Options of the decomposition (defaults follow the reference implementation).

    Attributes
    ----------
    iterations : int
        Most alternating iterations per block (reference: 30).
    threshold : float
        Element threshold on the normalised ``Ce`` (reference: 1e-3).  With the default
        range the quantizer's own zero cut ``2**(exp_min - 1)`` (0.0078) is larger.
    tolerance : float
        A block stops when its quantised ``Ce`` changes by at most this (reference 1e-10).
    max_c : float
        Largest coefficient magnitude (reference 32); the configured ``2**exp_max``
        wins when it is smaller.
    row_threshold : bool
        Zero whole rows of ``Ce`` whose L1 norm is below ``5 * threshold``.
    ridge : float
        Relative ridge of the normal equations: ``lambda = ridge * (1 + trace(G) / S)``.
    prune : float
        Fraction of rows pruned per group of ``lanes`` filters (structural sparsity).
    criterion : str
        Pruning criterion, one of `golden.sparsity.CRITERIA`.
    row_keep : torch.BoolTensor or None
        Explicit structural pattern ``(n_groups, R)``; overrides ``prune``.
    dtype : torch.dtype
        Working precision of the block arithmetic (the ``S x S`` solves are float64).
    chunk_weights : int
        Blocks are processed in equal chunks of whole filters of at most about this
        many weights, their number a multiple of ``workers`` (bounds memory and keeps
        the working set in cache; 2**19 measured best on this CPU).
    workers : int
        Threads solving chunks concurrently (0: one per available core, at most 4).
        torch's intra-op parallelism is set to 1 meanwhile (and restored): the
        operations on one chunk are too small to amortise OpenMP barriers, which also
        stall badly when other processes share the cores, while independent chunks
        run in parallel without synchronising (torch releases the GIL in kernels).
        Results do not depend on it.
    """

    iterations: int = 30
    threshold: float = 1e-3
    tolerance: float = 1e-10
    max_c: float = 32.0
    row_threshold: bool = False
    ridge: float = 1e-10
    prune: float = 0.0
    criterion: str = "value"
    row_keep: torch.Tensor | None = field(default=None, compare=False)
    dtype: torch.dtype = torch.float32
    chunk_weights: int = 1 << 19
    workers: int = 0

    def __post_init__(self):
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) \
                or self.iterations < 0:
            raise ValueError(f"iterations must be an int >= 0, got {self.iterations!r}")
        for name in ("threshold", "tolerance", "ridge"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not isinstance(self.max_c, (int, float)) or not math.isfinite(self.max_c) \
                or self.max_c <= 0:
            raise ValueError(f"max_c must be a finite number > 0, got {self.max_c!r}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown pruning criterion {self.criterion!r}; "
                             f"known: {list(CRITERIA)}")
        if self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {self.dtype}")
        if isinstance(self.chunk_weights, bool) or not isinstance(self.chunk_weights, int) \
                or self.chunk_weights < 1:
            raise ValueError(f"chunk_weights must be an int >= 1, got {self.chunk_weights!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) \
                or self.workers < 0:
            raise ValueError(f"workers must be an int >= 0, got {self.workers!r}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["dtype"] = str(self.dtype).replace("torch.", "")
        d["row_keep"] = None if self.row_keep is None else "explicit"
        return d


# ------------------------------------------------------------------ validation
#: Largest weight magnitude accepted (only float64 weights can exceed it): squares of
#: up to 1e8 such values still sum to a finite float64.
_MAX_MAGNITUDE = 1e150


def check_weight(weight, name: str = "weight") -> torch.Tensor:
    """Validate a dense weight; return it detached on the CPU as float32 or float64."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() not in (2, 4):
        raise ValueError(f"{name}: unsupported weight with {weight.dim()} dims, shape "
                         f"{tuple(weight.shape)}; expected (Cout, N) or (Cout, Cin, kh, kw)")
    if weight.numel() == 0:
        raise ValueError(f"{name}: empty weight tensor of shape {tuple(weight.shape)}")
    if weight.is_complex() or weight.dtype == torch.bool:
        raise ValueError(f"{name}: unsupported weight dtype {weight.dtype}")
    w = weight.detach().to("cpu")
    if w.dtype not in (torch.float32, torch.float64):
        w = w.to(torch.float32)
    # min and max propagate NaN and see every inf: one fast pass (a float64 sum was 20x
    # slower); the element-wise check only runs to locate a bad value.
    lo, hi = (float(v) for v in torch.aminmax(w))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        finite = torch.isfinite(w)
        bad = (~finite).nonzero()[0].tolist()
        raise ValueError(f"{name}: {int((~finite).sum())} NaN or infinite weight "
                         f"value(s), first at index {tuple(bad)} "
                         f"({float(w[tuple(bad)])!r})")
    if max(-lo, hi) > _MAX_MAGNITUDE:
        raise ValueError(f"{name}: weights too large to process (largest magnitude "
                         f"{max(-lo, hi):.3g} > {_MAX_MAGNITUDE:g}: the squared error sums "
                         f"would overflow float64)")
    return w


def _resolve(config, options: dict) -> tuple[SDConfig, DecomposeOptions]:
    cfg = load_config(config)
    opts = options.pop("options", None) or DecomposeOptions()
    if options:
        known = set(DecomposeOptions.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown decompose option(s) {unknown}; known: {sorted(known)}")
        opts = replace(opts, **options)
    return cfg, opts


def _top_exponent(cfg: SDConfig, opts: DecomposeOptions, name: str) -> int:
    """Exponent the normalisation maps a block's largest element to."""
    top = min(cfg.exp_max, math.floor(math.log2(opts.max_c)))
    if top < cfg.exp_min:
        raise ValueError(f"{name}: max_c={opts.max_c} is below the smallest configured "
                         f"magnitude 2**{cfg.exp_min}; no coefficient could be non-zero")
    if opts.threshold >= 2.0 ** top:
        raise ValueError(f"{name}: threshold={opts.threshold} >= largest coefficient "
                         f"2**{top}; every coefficient would be zero")
    check_exp_range(cfg.exp_min, top, opts.dtype)
    return top


# ------------------------------------------------------------ batched algebra
def _ridge(g: torch.Tensor, ridge: float) -> torch.Tensor:
    """``G + lambda I`` in float64, ``lambda = ridge * (1 + trace(G) / S)`` per matrix.

    The problem is normalised (entries of ``Cq`` and ``A'`` are at most 1), so the ``1 +``
    keeps an all-zero block solvable (it gives ``X = 0``, the minimum-norm least-squares
    answer), and the trace term keeps the regularisation relative on large blocks.  A
    zero column of ``Cq`` likewise yields a zero row of ``B`` instead of a singular
    system.
    """
    h = g.to(torch.float64, copy=True)
    diag = h.diagonal(dim1=-2, dim2=-1)
    # The trace as explicit left-to-right adds (what torch.trace of one block does):
    # a reduction over the strided diagonal cost ~10x more per call.
    trace = diag[..., 0]
    for i in range(1, h.shape[-1]):
        trace = trace + diag[..., i]
    lam = ridge * (1.0 + trace / h.shape[-1])
    diag.add_(lam[..., None])
    return h


def _ridge_solve(g: torch.Tensor, rhs: torch.Tensor, ridge: float) -> torch.Tensor:
    """Solve ``(G + lambda I) X = rhs`` (see `_ridge`) for a batch of small SPD ``G``.

    A batched ``torch.linalg.solve`` (LU) costs ~0.12 us per 3 x 3 system here; closed
    forms (adjugate, hand-written Cholesky) built from torch operations were measured
    no faster (each operation on ``(n, 3, 3)`` costs a few us of fixed overhead), and
    the LU keeps the codes identical to the per-block loop on ill-conditioned blocks.
    """
    return torch.linalg.solve(_ridge(g, ridge), rhs.to(torch.float64))


def _gram_is_exact(exp_min: int, top: int, terms: int, m: int, dtype: torch.dtype) -> bool:
    """Whether ``Cq Cq^T`` of an ``S x m`` block is exact in ``dtype``.

    Coefficients are multiples of ``2**exp_min`` below ``2**(top + terms)``, so every
    product and partial sum is a multiple of ``2**(2 exp_min)`` below
    ``m * 4**(top + terms)``; it is exact when that span fits the mantissa.  Then
    equal ``Cq`` give bitwise equal Gram matrices, whatever the summation order.
    """
    mant = 24 if dtype == torch.float32 else 53
    return 2 * (top + terms - exp_min) + math.ceil(math.log2(max(m, 1))) <= mant


def _fit_basis(cqt: torch.Tensor, at: torch.Tensor, ridge: float) -> torch.Tensor:
    """Least-squares ``B`` of ``Cq B ~= A`` per block, float64 ``(nb, S, S)``.

    Takes the transposed blocks ``Cq^T``, ``A^T`` (``(nb, S, m)``): the Gram products
    then read contiguous rows, several times faster than the ``(nb, m, S)`` layout.
    """
    return _ridge_solve(torch.bmm(cqt, cqt.transpose(-2, -1)),
                        torch.bmm(cqt, at.transpose(-2, -1)), ridge)


def _ce_operator_t(b: torch.Tensor, ridge: float, dtype: torch.dtype) -> torch.Tensor:
    """``M^T`` with ``Ce = A M`` the least-squares ``Ce`` of ``Ce B ~= A``.

    ``M = B^T (B B^T + lambda I)^-1``, so ``M^T = (B B^T + lambda I)^-1 B``.
    """
    return torch.linalg.solve(_ridge(torch.bmm(b, b.transpose(-2, -1)), ridge), b).to(dtype)


def _row_threshold_t(cet: torch.Tensor, threshold: float) -> torch.Tensor:
    """Zero rows (columns of ``Ce^T``) whose thresholded L1 norm is below 5 threshold."""
    a = cet.abs()
    l1 = torch.where(a < threshold, 0.0, a).sum(-2, keepdim=True)
    return cet.masked_fill(l1 < 5.0 * threshold, 0.0)


def _alpha(amax: torch.Tensor, top: int) -> torch.Tensor:
    """float64 normalisation factors ``2**top / max|A|`` (1 for an all-zero block)."""
    amax = amax.to(torch.float64)
    return torch.where(amax > 0, 2.0 ** top / torch.where(amax > 0, amax, 1.0),
                       torch.ones_like(amax))


def _normalise(a: torch.Tensor, top: int, dtype: torch.dtype):
    """Scale every block so its largest magnitude is ``2**top``.

    ``a`` is ``(..., S, m)`` (a strided view is fine); returns a contiguous ``dtype``
    copy ``(nb, S, m)`` (leading dimensions flattened) and the float64 ``alpha``
    ``(nb,)``.  The product is taken in float64 and rounded once (``2**top / max|A|``
    overflows float32 for subnormal weights, and one rounding keeps the shipped
    checkpoint reproducible); `solve_block_loop` does the same.
    """
    alpha = _alpha(a.abs().amax(dim=(-2, -1)), top)
    # float32 x float64 into a float32 ``out``: computed in float64 element by element
    # and rounded on store, bitwise ``(a.to(float64) * alpha).to(dtype)`` without the
    # two float64 temporaries (fresh allocations cost page faults).
    out = torch.empty(a.shape, dtype=dtype)
    torch.mul(a, alpha[..., None, None], out=out)
    return out.view(-1, *a.shape[-2:]), alpha.reshape(-1)


class _Projector:
    """`golden.quantize.project` into caller-owned buffers (the hot loop's form).

    The same rounding as `golden.quantize.pow2_round`, in seven passes over buffers
    allocated once per chunk (fresh multi-megabyte tensors cost page faults):

    1. ``hardshrink`` zeroes every ``|x| < cut`` (it keeps ``|x| > lambda``, and
       ``lambda`` is the float just below the cut): the zero cut, both signs, one pass;
    2. ``sign`` (0 for those zeros);
    3-6. magnitude bits ``+ half``, clear the mantissa, clamp to ``[2**exp_min,
       2**exp_max]``: the nearest power of two with ties up (see `golden.quantize`);
    7. times the sign, which also turns the clamped zeros back into 0 (never -0.0).

    Bitwise equal to `golden.quantize.project` (``tests/test_decompose.py``); the
    integer form there takes ten passes (the cut and the sign as bit masks).
    """

    def __init__(self, shape, dtype: torch.dtype, exp_min: int, exp_max: int, terms: int,
                 threshold: float):
        self.idt, mbits = (torch.int32, 23) if dtype == torch.float32 else (torch.int64, 52)
        nbits = torch.iinfo(self.idt).bits
        self.exp_field = ((1 << (nbits - 1 - mbits)) - 1) << mbits
        self.half = 1 << (mbits - 1)

        def bits(v: float) -> int:
            return int(torch.tensor(v, dtype=dtype).view(self.idt))

        def below(v: float) -> float:
            """The ``dtype`` number just below ``v`` (itself rounded to ``dtype``)."""
            t = torch.tensor(v, dtype=dtype)
            return float(torch.nextafter(t, torch.zeros_like(t)))

        self.lo, self.hi = bits(2.0 ** exp_min), bits(2.0 ** exp_max)
        cut = 2.0 ** (exp_min - 1)                   # below half the smallest level: 0
        self.lam = below(cut)
        thr = float(torch.tensor(float(threshold), dtype=dtype)) if threshold > 0 else 0.0
        self.lam_first = below(max(cut, thr))
        self.terms = terms
        self.shrunk = torch.empty(shape, dtype=dtype)
        self.sign = torch.empty(shape, dtype=dtype)
        if terms == 2:
            self.residual = torch.empty(shape, dtype=dtype)
            self.second = torch.empty(shape, dtype=dtype)

    def _round(self, x: torch.Tensor, out: torch.Tensor, lam: float) -> None:
        n = x.shape[0]
        y, sign = self.shrunk[:n], self.sign[:n]
        torch.ops.aten.hardshrink.out(x, lam, out=y)
        torch.sign(y, out=sign)
        torch.abs(y, out=out)
        q = out.view(self.idt)
        q.add_(self.half).bitwise_and_(self.exp_field).clamp_(self.lo, self.hi)
        out.mul_(sign)

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Write the projection of ``x`` (contiguous, leading dim <= the buffers') into
        ``out`` (same shape, contiguous, not ``x``); return ``out``."""
        self._round(x, out, self.lam_first)
        if self.terms == 2:
            n = x.shape[0]
            res, second = self.residual[:n], self.second[:n]
            torch.sub(x, out, out=res)
            self._round(res, second, self.lam)
            out.add_(second)
        return out


#: Stopped blocks are dropped from the active set (the survivors copied together) once
#: they are at least this fraction of it.  Until then they are computed along (their
#: result was saved when they stopped), which costs less than compacting the three
#: block tensors on every iteration; measured best between 0 and 0.5 (see docs).
_COMPACT_FRACTION = 0.2


def solve_short_filters(blocks: torch.Tensor, exp_min: int, top: int, terms: int,
                        opts: DecomposeOptions):
    """`solve_blocks` for filters of fewer rows than ``S`` (both solvers use it).

    Blocks ``(nb, m, S)`` with ``m < S``: ``Ce = 2^top [I | 0]``, ``B = A / 2^top``.
    ``m < S`` rows cannot determine an ``S x S`` basis: the alternating algorithm then
    settles on a basis with large, cancelling entries that the per-filter 8-bit basis scale
    cannot hold (relative errors 0.2-0.85 on Gaussian filters of 4-6 inputs).  The identity
    code is exact; only the basis's rounding remains.  All-zero rows (pruned, padding) keep
    a zero code; no iteration runs (``iters`` 0).
    """
    nb, m, s = blocks.shape
    cq = torch.zeros(nb, m, s, dtype=opts.dtype)
    diag = torch.arange(m)
    cq[:, diag, diag] = blocks.ne(0).any(-1).to(opts.dtype) * 2.0 ** top
    basis = torch.zeros(nb, s, s, dtype=torch.float64)
    basis[:, :m] = blocks.to(torch.float64) * 2.0 ** -top
    return cq.transpose(1, 2).contiguous(), basis, torch.zeros(nb, dtype=torch.int64)


def solve_blocks(blocks: torch.Tensor, exp_min: int, top: int, terms: int,
                 opts: DecomposeOptions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decompose a batch of blocks at once (steps 0-3 of the module docstring).

    Parameters
    ----------
    blocks : torch.Tensor, shape (nb, m, S) or (f, k, m, S), float32 or float64
        The blocks (zero rows for padding and pruned rows); a 4-d view (``k`` blocks of
        ``f`` filters, any strides) is read as ``f * k`` blocks without a copy.

    Returns
    -------
    cqt : torch.Tensor, shape (nb, S, m), ``opts.dtype``
        Quantised coefficients, transposed (``Cq^T`` of every block).
    basis : torch.Tensor, shape (nb, S, S), float64
        Real basis with ``1/alpha`` folded in: ``A ~= cqt^T @ basis``.
    iters : torch.Tensor, shape (nb,), int64
        Iterations run per block (the iteration at which it stopped).
    """
    dtype = opts.dtype
    # Work on transposed blocks (nb, S, m): every product then streams contiguous rows.
    a, alpha = _normalise(blocks.transpose(-2, -1), top, dtype)
    nb = a.shape[0]
    thr, tol, ridge = opts.threshold, opts.tolerance, opts.ridge
    project = _Projector(a.shape, dtype, exp_min, top, terms, thr)
    ce_out = a.clone() if opts.iterations == 0 else torch.empty_like(a)
    iters = torch.full((nb,), opts.iterations, dtype=torch.int64)
    # Work buffers, used as prefixes [:n] of the n active blocks: the new Ce, the new
    # and the previous Cq (swapped every iteration), the difference of the two, and
    # compacted copies of A' (two, swapped on every compaction).
    ce_buf, diff = torch.empty_like(a), torch.empty_like(a)
    cq_new, cq_old = torch.empty_like(a), torch.empty_like(a)
    a_bufs: list[torch.Tensor] = []
    a_slot = 1                          # a_bufs[a_slot] holds a_w once compacted
    act = torch.arange(nb)              # active blocks, indices into ce_out
    live = None                         # which active blocks still iterate (None: all)
    n_live = nb
    a_w, ce_w, prev = a, a, None
    gram_test = _gram_is_exact(exp_min, top, terms, a.shape[2], dtype) \
        and tol < 2.0 ** (exp_min - 1)
    for it in range(opts.iterations):
        n = act.numel()
        cq = project(ce_w, cq_new[:n])
        gram = torch.bmm(cq, cq.transpose(1, 2))
        rhs = torch.bmm(cq, a_w.transpose(1, 2))
        if prev is not None:
            if gram_test:
                # Cq = prev implies an equal (exact) Gram matrix; only blocks whose Gram
                # did not change (the few that may stop) are compared element-wise.
                changed = (gram != gram_prev).view(n, -1).any(1)
                cand = (~changed).nonzero().squeeze(1)
                if cand.numel():
                    d = cq.index_select(0, cand).sub_(prev.index_select(0, cand))
                    changed[cand] = d.abs_().view(cand.numel(), -1).amax(1) > tol
            else:
                d = torch.sub(cq, prev, out=diff[:n]).abs_()
                changed = d.view(n, -1).amax(1) > tol
            stopped = ~changed if live is None else live & ~changed
            idx = stopped.nonzero().squeeze(1)
            if idx.numel():
                # These blocks stop here: save their Ce (the loop's final Ce).
                ce_out.index_copy_(0, act[idx], ce_w.index_select(0, idx))
                iters[act[idx]] = it
                live = changed if live is None else live & changed
                n_live -= idx.numel()
                if n_live == 0:
                    break
                if n - n_live >= _COMPACT_FRACTION * n:
                    # index_select: several times faster than boolean indexing.  The
                    # previous Cq is no longer needed: its buffer takes the survivors.
                    keep = live.nonzero().squeeze(1)
                    a_slot = 1 - a_slot
                    if len(a_bufs) <= a_slot:
                        a_bufs.append(torch.empty_like(a))
                    a_w = torch.index_select(a_w, 0, keep, out=a_bufs[a_slot][:n_live])
                    cq = torch.index_select(cq, 0, keep, out=cq_old[:n_live])
                    cq_new, cq_old = cq_old, cq_new
                    gram, rhs = gram.index_select(0, keep), rhs.index_select(0, keep)
                    act, live = act[keep], None
        b = _ridge_solve(gram, rhs, ridge)
        ce_w = torch.bmm(_ce_operator_t(b, ridge, dtype), a_w, out=ce_buf[:act.numel()])
        if opts.row_threshold:
            ce_w = _row_threshold_t(ce_w, thr)
        prev, gram_prev = cq, gram
        cq_new, cq_old = cq_old, cq_new
    if n_live:                          # blocks that ran all iterations
        idx = torch.arange(act.numel()) if live is None else live.nonzero().squeeze(1)
        ce_out.index_copy_(0, act[idx], ce_w.index_select(0, idx))
    cq = project(ce_out, torch.empty_like(a))
    basis = _fit_basis(cq, a, ridge) / alpha[:, None, None]
    return cq, basis, iters


def solve_block_loop(block: torch.Tensor, exp_min: int, top: int, terms: int,
                     opts: DecomposeOptions) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The same algorithm for ONE block ``(m, S)``, written plainly (the reference).

    Returns ``cq`` ``(m, S)``, the real basis ``(S, S)`` (float64) and the iteration
    at which the block stopped.
    """
    dtype = opts.dtype
    alpha = float(_alpha(block.abs().max(), top))
    a = (block.to(torch.float64) * alpha).to(dtype)
    s = a.shape[1]
    eye = torch.eye(s, dtype=torch.float64)
    ce, prev, iters = a.clone(), None, opts.iterations

    def ridge_solve(g, rhs):
        g = g.to(torch.float64)
        lam = opts.ridge * (1.0 + float(torch.trace(g)) / s)
        return torch.linalg.solve(g + lam * eye, rhs.to(torch.float64))

    for it in range(opts.iterations):
        cq = project(ce, exp_min, top, terms, opts.threshold)
        if prev is not None and float((cq - prev).abs().max()) <= opts.tolerance:
            iters = it
            break
        b = ridge_solve(cq.T @ cq, cq.T @ a)
        m = ridge_solve(b @ b.T, b).T.to(dtype)
        ce = a @ m
        if opts.row_threshold:
            ce = _row_threshold_t(ce.T, opts.threshold).T
        prev = cq
    cq = project(ce, exp_min, top, terms, opts.threshold)
    basis = ridge_solve(cq.T @ cq, cq.T @ a) / alpha
    return cq, basis, iters


# ------------------------------------------------------------------ assembly
def _blocks_of(w: torch.Tensor, basis_size: int, block_rows: int,
               copy: bool = True) -> tuple[torch.Tensor, int]:
    """``(Cout, ...)`` weight -> ``(Cout * n_blocks, m, S)`` zero-padded blocks.

    Rows follow `golden.sdweight.weight_to_rows` (flatten, zero-pad to ``R*S``); a
    filter's ``R`` rows are cut into ``n_blocks`` blocks of ``m = block_rows`` rows (or
    ``m = R`` when one block suffices), the last block padded with zero rows.  Without
    padding and with ``copy=False`` the result is a view of ``w`` (one pass less).
    """
    cout = w.shape[0]
    k = math.prod(w.shape[1:])
    r = -(-k // basis_size)
    n_blocks = -(-r // block_rows)
    m = r if n_blocks == 1 else block_rows
    if not copy and k == n_blocks * m * basis_size:
        return w.reshape(cout * n_blocks, m, basis_size), n_blocks
    out = torch.zeros(cout, n_blocks * m * basis_size, dtype=w.dtype)
    out[:, :k] = w.reshape(cout, k)
    return out.view(cout * n_blocks, m, basis_size), n_blocks


def _structure(w: torch.Tensor, cfg: SDConfig, opts: DecomposeOptions,
               name: str) -> torch.Tensor:
    """The structural row pattern ``(n_groups, R)`` (all True without pruning)."""
    r = -(-math.prod(w.shape[1:]) // cfg.basis_size)
    n_groups = -(-w.shape[0] // cfg.lanes)
    if opts.row_keep is not None:
        keep = torch.as_tensor(opts.row_keep)
        if tuple(keep.shape) != (n_groups, r):
            raise ValueError(f"{name}: row_keep has shape {tuple(keep.shape)}, expected "
                             f"({n_groups}, {r}) (groups of {cfg.lanes} filters x rows)")
        return keep.bool().clone()
    if opts.prune:
        return prune_rows(w, opts.prune, cfg.lanes, cfg.basis_size, opts.criterion,
                          cfg.exp_max - cfg.exp_min, name=name)
    return torch.ones(n_groups, r, dtype=torch.bool)


def _term_codes(q: torch.Tensor, exp_min: int, exp_max: int):
    """mask, sign, int8 exponent of one-term values ``q`` (0 or ``+-2**e``).

    Read from the IEEE bits (exact, and faster than ``frexp``): a zero's biased exponent
    field is 0, which clamps to ``exp_min`` as the code convention wants.
    """
    # float32 holds every 0 / +-2**e of the code range exactly (also for float64 work);
    # adding +0.0 turns a -0.0 into +0.0, so no "negative zero" code appears.
    q = q.to(torch.float32) + 0.0
    bits = q.view(torch.int32)
    # Masks as 0/1 integers viewed as bool, and the exponent field masked before the
    # shift: comparisons producing bool tensors, and ``(bits >> 23) & 0xFF``, were
    # several times slower (this function was 5 % of a decomposition).
    mag = bits & 0x7FFFFFFF
    exponent = (mag >> 23).sub_(127).clamp_(exp_min, exp_max).to(torch.int8)
    mask = mag.clamp_(0, 1).to(torch.uint8).view(torch.bool)
    sign = (bits >> 31).neg_().to(torch.uint8).view(torch.bool)
    return mask, sign, exponent


def _sum_squares(t: torch.Tensor) -> float:
    """Sum of squares: float32/64 per row of the last dimension, float64 over rows.

    Rows are short (a block's ``m`` or a filter's ``N``), so their float32 sums are
    accurate to ~1e-7; a float64 copy of the whole tensor (or ``sum(dtype=float64)``,
    ~3x slower still) cost more than the rest of the error computation.
    """
    t = t.reshape(-1, t.shape[-1]) if t.dim() else t.reshape(1, 1)
    return float(torch.square(t).sum(-1).sum(dtype=torch.float64))


def _group_rows_nonzero(mask: torch.Tensor, lanes: int) -> torch.Tensor:
    """``(n_groups, R)``: whether any term of the row is live in any filter of the group.

    Maxima over a uint8 view: boolean ``any`` reductions are 10-60x slower on CPU.
    """
    cout, r = mask.shape[:2]
    m8 = mask.view(torch.uint8).reshape(cout, r, -1)
    rows = m8[..., 0]
    for k in range(1, m8.shape[-1]):
        rows = torch.maximum(rows, m8[..., k])
    n_groups = -(-cout // lanes)
    if n_groups * lanes != cout:
        rows = torch.cat([rows, rows.new_zeros(n_groups * lanes - cout, r)])
    return rows.view(n_groups, lanes, r).amax(1).bool()


@dataclass
class _Result:
    """Output tensors of a decomposition, filled chunk by chunk."""

    mask: torch.Tensor
    sign: torch.Tensor
    exponent: torch.Tensor
    basis: torch.Tensor
    scale: torch.Tensor
    iters: torch.Tensor
    err2: float = 0.0


def _finish_chunk(res: _Result, f0: int, cqt: torch.Tensor, basis: torch.Tensor,
                  iters: torch.Tensor, chunk: torch.Tensor, cfg: SDConfig,
                  n_blocks: int, fan_in: int) -> float:
    """Quantise the basis of filters ``f0...`` (one scale per filter), store codes;
    return the squared reconstruction error of the chunk's kept rows."""
    s = cfg.basis_size
    nb, _, m = cqt.shape
    f = nb // n_blocks
    basis = basis.view(f, n_blocks, s, s)
    bmax = basis.abs().flatten(1).amax(1)
    scale = torch.where(bmax > 0, bmax / cfg.basis_max, torch.ones_like(bmax))
    b_int = torch.round(basis / scale[:, None, None, None]).clamp_(cfg.basis_min,
                                                                  cfg.basis_max)
    res.basis[f0:f0 + f] = b_int.to(torch.int32)
    res.scale[f0:f0 + f] = scale
    res.iters[f0 * n_blocks:f0 * n_blocks + nb] = iters
    # What the hardware rebuilds, w^T = Bq^T Cq^T per block, against the kept weights
    # (float32 products, float64 sum: ~1e-7 relative, same arithmetic in both solvers).
    bq = (b_int * scale[:, None, None, None]).view(nb, s, s).to(cqt.dtype)
    what_t = torch.bmm(bq.transpose(1, 2), cqt)
    diff = chunk.transpose(1, 2).to(cqt.dtype) - what_t
    err2 = _sum_squares(diff)
    # Only real weights count: the zero padding past K (last row of each filter) is
    # dropped by rows_to_weight, so its rebuilt values are no error.
    r = res.mask.shape[1]
    pad = r * s - fan_in
    if pad:
        last = what_t.view(f, n_blocks, s, m)[:, -1, s - pad:, (r - 1) - (n_blocks - 1) * m]
        err2 -= _sum_squares(last)
    cq = cqt.transpose(1, 2).reshape(f, n_blocks * m, s)[:, :r]
    terms = res.mask.shape[-1]
    parts = [cq] if terms == 1 else [pow2_round(cq.contiguous(), cfg.exp_min, cfg.exp_max)]
    if terms == 2:
        parts.append(cq - parts[0])
    for t, q in enumerate(parts):
        mask, sign, exponent = _term_codes(q.contiguous(), cfg.exp_min, cfg.exp_max)
        res.mask[f0:f0 + f, :, :, t] = mask
        res.sign[f0:f0 + f, :, :, t] = sign
        res.exponent[f0:f0 + f, :, :, t] = exponent
    return err2


def default_workers(requested: int) -> int:
    """Worker threads over chunks: ``requested``, or (0) one per available core, max 4."""
    if requested > 0:
        return requested
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


@contextmanager
def intra_op_threads(n: int):
    """Temporarily set torch's intra-op thread count."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _run(weight, config, name, options, solver) -> SDWeight:
    """Shared driver of `decompose` and `decompose_reference_loop`.

    torch's intra-op parallelism is off for the whole call, not only while chunks are
    solved: every OpenMP region (even a reduction taking 1 ms) stalls for a whole time
    slice (~15 ms measured) when another process holds the second core, and the
    checks before and after the chunks are a dozen such operations; the chunks
    themselves run on `workers` threads.
    """
    with intra_op_threads(1):
        return _run_serial(weight, config, name, options, solver)


def _run_serial(weight, config, name, options, solver) -> SDWeight:
    """`_run` with intra-op parallelism already off."""
    cfg, opts = _resolve(config, options)
    w = check_weight(weight, name)
    top = _top_exponent(cfg, opts, name)
    keep = _structure(w, cfg, opts, name)
    s = cfg.basis_size
    pruned = not bool(keep.all())
    blocks, n_blocks = _blocks_of(w, s, cfg.block_rows, copy=pruned)
    cout, r = w.shape[0], keep.shape[1]
    if r < s:
        solver = solve_short_filters
    if pruned:
        rows = blocks.view(cout, -1, s)
        rows[:, :r] *= keep[group_of_filters(cout, cfg.lanes)][..., None].to(w.dtype)
    m = blocks.shape[1]
    shape4 = (cout, r, s, cfg.terms)
    res = _Result(mask=torch.empty(shape4, dtype=torch.bool),
                  sign=torch.empty(shape4, dtype=torch.bool),
                  exponent=torch.empty(shape4, dtype=torch.int8),
                  basis=torch.empty(cout, n_blocks, s, s, dtype=torch.int32),
                  scale=torch.empty(cout, dtype=torch.float64),
                  iters=torch.empty(cout * n_blocks, dtype=torch.int64))
    # Chunks of whole filters (the basis scale spans all blocks of a filter), each of
    # many blocks: bounded memory, cache-sized working set.  Their number is a multiple
    # of the workers and their sizes equal, so no worker idles at the end (5 chunks
    # on 2 workers took as long as 6).
    workers = default_workers(opts.workers)
    n_chunks = -(-cout * n_blocks * m * s // opts.chunk_weights)
    n_chunks = min(cout, -(-n_chunks // workers) * workers)
    filters = -(-cout // n_chunks)
    starts = list(range(0, cout, filters))
    workers = min(workers, len(starts))
    fan_in = math.prod(w.shape[1:])
    # The last block of a filter may hold only m_last < m real rows (a 4096-wide FC
    # filter: 1366 rows in 8 blocks of 192, 11 % padding).  The batched solver takes
    # these blocks apart, padding cut off, all filters in one batch (per chunk they
    # were too small a batch to pay off); zero rows add nothing to any product, so
    # the codes are those of the padded blocks (equivalence tests).  The loop
    # reference solves the padded blocks as they are.
    m_last = r - (n_blocks - 1) * m
    split = solver is solve_blocks and n_blocks > 1 and m_last < m
    per_filter = blocks.view(cout, n_blocks, m, s)
    tails = None

    def solve_tails(t0: int):
        with torch.no_grad():
            return solve_blocks(per_filter[t0:t0 + t_filters, -1, :m_last], cfg.exp_min,
                                top, cfg.terms, opts)

    def work(f0: int) -> float:
        """Solve and finish one chunk; writes disjoint slices of ``res``."""
        with torch.no_grad():
            f1 = min(cout, f0 + filters)
            chunk = blocks[f0 * n_blocks:f1 * n_blocks]
            if not split:
                cqt, basis, iters = solver(chunk, cfg.exp_min, top, cfg.terms, opts)
            else:
                f = f1 - f0
                cq_a, b_a, it_a = solve_blocks(per_filter[f0:f1, :-1], cfg.exp_min, top,
                                               cfg.terms, opts)
                cqt = cq_a.new_zeros(f, n_blocks, s, m)
                cqt[:, :-1] = cq_a.view(f, n_blocks - 1, s, m)
                cqt[:, -1, :, :m_last] = tails[0][f0:f1]
                cqt = cqt.view(-1, s, m)
                basis = torch.cat([b_a.view(f, n_blocks - 1, s, s),
                                   tails[1][f0:f1, None]], 1).view(-1, s, s)
                iters = torch.cat([it_a.view(f, n_blocks - 1),
                                   tails[2][f0:f1, None]], 1).view(-1)
            return _finish_chunk(res, f0, cqt, basis, iters, chunk, cfg, n_blocks, fan_in)

    def run_all(fn, items):
        # Intra-op parallelism is off (see `_run`): the per-chunk tensors are small, and
        # OpenMP barriers spin for a whole time slice whenever another process holds a
        # core (measured: 30x slower on this 2-core machine under load); chunks run in
        # parallel on the workers instead.
        if workers > 1 and len(items) > 1:
            with ThreadPoolExecutor(workers) as pool:
                return list(pool.map(fn, items))
        return [fn(i) for i in items]

    if split:
        n_t = -(-cout * m_last * s // opts.chunk_weights)
        n_t = min(cout, -(-n_t // workers) * workers)
        t_filters = -(-cout // n_t)
        outs = run_all(solve_tails, list(range(0, cout, t_filters)))
        tails = tuple(torch.cat([o[k] for o in outs]) for k in range(3))
    parts = run_all(work, starts)
    res.err2 = math.fsum(parts)                  # chunk order: same sum for any workers
    row_keep = keep & _group_rows_nonzero(res.mask, cfg.lanes)
    total2 = _sum_squares(w)
    err2 = res.err2
    if pruned:                                           # pruned rows are lost entirely
        err2 += max(0.0, total2 - _sum_squares(blocks))
    extra = {"decompose": opts.as_dict(),
             "mean_iterations": float(res.iters.to(torch.float64).mean()),
             "max_iterations": int(res.iters.max()),
             "rel_error": math.sqrt(err2 / total2) if total2 > 0 else math.sqrt(err2)}
    return SDWeight(config=cfg, weight_shape=tuple(w.shape), mask=res.mask, sign=res.sign,
                    exponent=res.exponent, basis=res.basis, basis_scale=res.scale,
                    row_keep=row_keep, name=name, extra=extra)


def decompose(weight: torch.Tensor, config: "SDConfig | str | None" = None, *,
              name: str = "weight", **options) -> SDWeight:
    """Decompose a dense weight into SmartDeal form, all blocks batched.

    Parameters
    ----------
    weight : torch.Tensor
        ``(Cout, N)`` (fully connected) or ``(Cout, Cin, kh, kw)`` (convolution), any
        kernel size; finite values.
    config : SDConfig, preset name, JSON path or None
        Exponent range, ``terms``, ``basis_bits``, ``block_rows``, ``lanes`` and ``S``
        come from here (default preset when None).
    name : str
        Layer / tensor name used in error messages and in the result.
    **options
        Fields of `DecomposeOptions` (or ``options=DecomposeOptions(...)``).

    Returns
    -------
    SDWeight
        ``extra`` holds the options, the mean/max iteration count and ``rel_error``, the
        relative Frobenius error of ``reconstruct()`` against ``weight``.

    Raises
    ------
    ValueError
        NaN/inf or empty weights, unsupported dimensions, an option the configured
        range cannot honour.  The message names ``name``.
    """
    return _run(weight, config, name, options, solve_blocks)


def _solve_loop(blocks: torch.Tensor, exp_min: int, top: int, terms: int,
                opts: DecomposeOptions):
    """`solve_blocks` interface on top of the one-block `solve_block_loop`."""
    out = [solve_block_loop(blk, exp_min, top, terms, opts) for blk in blocks]
    cqt = torch.stack([o[0].T for o in out])
    basis = torch.stack([o[1] for o in out])
    iters = torch.tensor([o[2] for o in out], dtype=torch.int64)
    return cqt, basis, iters


def decompose_reference_loop(weight: torch.Tensor, config: "SDConfig | str | None" = None,
                             *, name: str = "weight", **options) -> SDWeight:
    """`decompose`, but solving one block at a time in a Python loop.

    The straightforward implementation of the same algorithm: the equivalence and
    speed reference of `decompose` (tests and `golden.bench_decompose`).
    """
    options.setdefault("workers", 1)          # the plain reference: one block at a time
    return _run(weight, config, name, options, _solve_loop)


def relative_error(weight: torch.Tensor, sdw: SDWeight) -> float:
    """Relative Frobenius error ``||W - reconstruct()|| / ||W||`` (absolute for W = 0)."""
    w = weight.detach().to(torch.float64).reshape(sdw.weight_shape)
    err = (w - sdw.reconstruct().to(torch.float64)).norm()
    ref = w.norm()
    return float(err / ref) if ref > 0 else float(err)

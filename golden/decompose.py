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
from golden.sparsity import CRITERIA, group_of_filters, group_rows_any, prune_rows
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
        Blocks are processed in chunks of about this many weights (bounds memory and
        keeps the working set in cache).
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
    # One float64 sum is NaN/inf iff some element is (it cannot overflow for float32
    # input); the elementwise check only runs to locate a bad value.
    if not math.isfinite(float(torch.sum(w, dtype=torch.float64))):
        finite = torch.isfinite(w)
        if not finite.all():
            bad = (~finite).nonzero()[0].tolist()
            raise ValueError(f"{name}: {int((~finite).sum())} NaN or infinite weight "
                             f"value(s), first at index {tuple(bad)} "
                             f"({float(w[tuple(bad)])!r})")
        raise ValueError(f"{name}: weights too large to process (their float64 sum "
                         f"overflows)")
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
    lam = ridge * (1.0 + diag.sum(-1) / h.shape[-1])
    diag.add_(lam[..., None])
    return h


#: Smallest ``det(H) / prod(diag(H))`` (the determinant of ``H``'s correlation matrix,
#: 1 for orthogonal columns) solved with the adjugate; below it `torch.linalg.solve`.
#: It bounds ``cond`` of the correlation matrix by ``S**S / ratio`` (3e5 for S = 3), so
#: the adjugate's error (~cond * 1e-16) stays far below the float32 rounding of the
#: ``Ce`` operator that follows and the codes stay those of the LU solve.
_ADJUGATE_MIN_RATIO = 1e-4


def _solve_spd(h: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``H^-1 rhs`` for a batch ``(n, S, S)`` of symmetric positive definite ``H``, float64.

    ``S = 3`` (the default basis) uses the adjugate: row ``i`` of ``adj(H)`` is the
    cross product of rows ``i+1`` and ``i+2`` (cyclic) and ``det H = h_0 . adj_0``.
    That is a handful of batched element-wise operations instead of a batched LU
    factorisation, which costs about 0.4 us per 3 x 3 system on this CPU (per-matrix
    pivoting dominates; it was a quarter of the decomposition's time).  On
    well-conditioned systems the two agree to ~1e-16 relative; the ill-conditioned ones
    (blocks with fewer rows than ``S``, nearly dependent columns: ratio below
    `_ADJUGATE_MIN_RATIO`) are re-solved with `torch.linalg.solve`, the per-block loop's
    solver, whose answer there is one of many near-equivalent ones.  Other ``S`` use
    `torch.linalg.solve` throughout.
    """
    if h.shape[-1] != 3:
        return torch.linalg.solve(h, rhs)
    adj = torch.linalg.cross(h.roll(-1, dims=-2), h.roll(-2, dims=-2), dim=-1)
    det = torch.linalg.vecdot(h[:, 0], adj[:, 0])
    x = torch.bmm(adj, rhs).div_(det[:, None, None])
    ratio = det / h.diagonal(dim1=-2, dim2=-1).prod(-1)
    bad = (~(ratio > _ADJUGATE_MIN_RATIO)).nonzero().squeeze(1)     # also NaN
    if bad.numel():
        x.index_copy_(0, bad, torch.linalg.solve(h.index_select(0, bad),
                                                 rhs.index_select(0, bad)))
    return x


def _ridge_solve(g: torch.Tensor, rhs: torch.Tensor, ridge: float) -> torch.Tensor:
    """Solve ``(G + lambda I) X = rhs`` (see `_ridge`) for a batch of small SPD ``G``."""
    return _solve_spd(_ridge(g, ridge), rhs.to(torch.float64))


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
    return _solve_spd(_ridge(torch.bmm(b, b.transpose(-2, -1)), ridge), b).to(dtype)


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

    ``a`` is ``(nb, S, m)`` (a transposed view is fine); returns a contiguous ``dtype``
    copy and the float64 ``alpha``.  The product is taken in float64 and rounded once
    (``2**top / max|A|`` overflows float32 for subnormal weights, and one rounding keeps
    the shipped checkpoint reproducible); `solve_block_loop` does the same.
    """
    alpha = _alpha(a.abs().amax(dim=(1, 2)), top)
    out = torch.empty(a.shape, dtype=dtype)
    out.copy_(a.to(torch.float64) * alpha[:, None, None])
    return out, alpha


def solve_blocks(blocks: torch.Tensor, exp_min: int, top: int, terms: int,
                 opts: DecomposeOptions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decompose a batch of blocks at once (steps 0-3 of the module docstring).

    Parameters
    ----------
    blocks : torch.Tensor, shape (nb, m, S), float32 or float64
        The blocks (zero rows for padding and pruned rows).

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
    a, alpha = _normalise(blocks.transpose(1, 2), top, dtype)
    nb = a.shape[0]
    thr, tol, ridge = opts.threshold, opts.tolerance, opts.ridge
    ce_out = a.clone() if opts.iterations == 0 else torch.empty_like(a)
    iters = torch.full((nb,), opts.iterations, dtype=torch.int64)
    act = torch.arange(nb)              # blocks still iterating, indices into ce_out
    a_w, ce_w, prev = a, a, None
    for it in range(opts.iterations):
        cq = project(ce_w, exp_min, top, terms, thr)
        if prev is not None:
            changed = (cq - prev).abs_().flatten(1).amax(1) > tol
            if not bool(changed.all()):
                # Converged blocks freeze here; the survivors are compacted so later
                # iterations only touch blocks that still change (index_select: several
                # times faster than boolean or advanced indexing).
                done = (~changed).nonzero().squeeze(1)
                ce_out.index_copy_(0, act[done], ce_w.index_select(0, done))
                iters[act[done]] = it
                keep = changed.nonzero().squeeze(1)
                if keep.numel() == 0:
                    act = keep
                    break
                act = act[keep]
                a_w, ce_w, cq = (t.index_select(0, keep) for t in (a_w, ce_w, cq))
        b = _fit_basis(cq, a_w, ridge)
        ce_w = torch.bmm(_ce_operator_t(b, ridge, dtype), a_w)
        if opts.row_threshold:
            ce_w = _row_threshold_t(ce_w, thr)
        prev = cq
    if act.numel():
        ce_out.index_copy_(0, act, ce_w)
    cq = project(ce_out, exp_min, top, terms, thr)
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
def _blocks_of(w: torch.Tensor, basis_size: int, block_rows: int) -> tuple[torch.Tensor, int]:
    """``(Cout, ...)`` weight -> ``(Cout * n_blocks, m, S)`` zero-padded blocks (one copy).

    Rows follow `golden.sdweight.weight_to_rows` (flatten, zero-pad to ``R*S``); a
    filter's ``R`` rows are cut into ``n_blocks`` blocks of ``m = block_rows`` rows (or
    ``m = R`` when one block suffices), the last block padded with zero rows.
    """
    cout = w.shape[0]
    k = math.prod(w.shape[1:])
    r = -(-k // basis_size)
    n_blocks = -(-r // block_rows)
    m = r if n_blocks == 1 else block_rows
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
    exponent = ((bits >> 23) & 0xFF).sub_(127).clamp_(exp_min, exp_max).to(torch.int8)
    return q != 0, bits < 0, exponent


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
    err2 = float(torch.sum(diff * diff, dtype=torch.float64))
    # Only real weights count: the zero padding past K (last row of each filter) is
    # dropped by rows_to_weight, so its rebuilt values are no error.
    r = res.mask.shape[1]
    pad = r * s - fan_in
    if pad:
        last = what_t.view(f, n_blocks, s, m)[:, -1, s - pad:, (r - 1) - (n_blocks - 1) * m]
        err2 -= float(torch.sum(last * last, dtype=torch.float64))
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
    """Shared driver of `decompose` and `decompose_reference_loop`."""
    cfg, opts = _resolve(config, options)
    w = check_weight(weight, name)
    top = _top_exponent(cfg, opts, name)
    keep = _structure(w, cfg, opts, name)
    s = cfg.basis_size
    blocks, n_blocks = _blocks_of(w, s, cfg.block_rows)
    cout, r = w.shape[0], keep.shape[1]
    if not bool(keep.all()):
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
    # many blocks: bounded memory, cache-sized working set.
    filters = max(1, opts.chunk_weights // (n_blocks * m * s))
    starts = list(range(0, cout, filters))
    fan_in = math.prod(w.shape[1:])

    def work(f0: int) -> float:
        """Solve and finish one chunk; writes disjoint slices of ``res``."""
        with torch.no_grad():
            chunk = blocks[f0 * n_blocks:min(cout, f0 + filters) * n_blocks]
            cqt, basis, iters = solver(chunk, cfg.exp_min, top, cfg.terms, opts)
            return _finish_chunk(res, f0, cqt, basis, iters, chunk, cfg, n_blocks, fan_in)

    workers = min(default_workers(opts.workers), len(starts))
    # Intra-op parallelism off in any case: the per-chunk tensors are small, and OpenMP
    # barriers spin for a whole time slice whenever another process holds a core
    # (measured: 30x slower on this 2-core machine under load); chunks run in parallel.
    with intra_op_threads(1):
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                parts = list(pool.map(work, starts))
        else:
            parts = [work(f0) for f0 in starts]
    res.err2 = math.fsum(parts)                  # chunk order: same sum for any workers
    rows_nz = res.mask.any(dim=-1).any(dim=-1)                           # (Cout, R)
    row_keep = keep & group_rows_any(rows_nz, cfg.lanes)
    kept2 = float(torch.sum(blocks * blocks, dtype=torch.float64))
    total2 = float(torch.sum(w * w, dtype=torch.float64))
    err2 = res.err2 + max(0.0, total2 - kept2)           # pruned rows are lost entirely
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

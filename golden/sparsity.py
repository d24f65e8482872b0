"""Structural row pruning: whole coefficient rows dropped for a group of filters.

The hardware processes ``lanes`` filters in lock-step; a row pruned for a group is
not stored and costs no cycle (``docs/format.md``).  As in the reference
(``smart_exchange_structural.py``) a per-row score is summed over the filters of a
group and the lowest-scoring fraction of rows is pruned for the whole group.

Criteria (scores of one row ``w[o, r, :]``, summed over the group's filters):

``value``
    L1 norm ``sum |w|`` (the reference's criterion).
``energy``
    squared L2 norm ``sum w**2`` (the reconstruction error the row's removal adds).
``population``
    number of elements the coefficient quantizer would keep, i.e. with
    ``|w| >= 2**(exp_min - exp_max - 1) * max|w|`` of the filter (elements below half
    the smallest level after normalisation vanish anyway); ties broken by L1.

Rows are the ``S``-element rows of `golden.sdweight.weight_to_rows`.  Two scopes say
where the pruned rows are counted:

``group`` (the reference's)
    every group prunes ``floor(fraction * R + 0.5)`` of its own rows.
``layer`` (cost-aware)
    a kept row of a group costs one Ce record whatever the group's scores, so the
    ``floor(fraction * n_groups * R + 0.5)`` lowest-scoring (group, row) records of the
    whole layer are pruned.  A group whose rows matter less (e.g. the last group of a
    layer whose ``Cout`` is not a multiple of ``lanes``, which holds padding lanes and so
    sums fewer filters) loses more rows; every group keeps at least one row.
"""

from __future__ import annotations

import math

import torch

from golden.sdweight import weight_to_rows

__all__ = ["CRITERIA", "SCOPES", "row_scores", "prune_rows", "group_of_filters", "group_rows_any"]

CRITERIA = ("value", "energy", "population")
SCOPES = ("group", "layer")


def group_of_filters(out_channels: int, lanes: int) -> torch.Tensor:
    """Group index of each output filter, shape (Cout,)."""
    return torch.arange(out_channels) // lanes


def group_rows_any(rows_nonzero: torch.Tensor, lanes: int) -> torch.Tensor:
    """Per group, whether any filter has the row non-zero: (Cout, R) -> (n_groups, R)."""
    cout, r = rows_nonzero.shape
    n_groups = -(-cout // lanes)
    out = torch.zeros(n_groups, r, dtype=torch.bool)
    out.index_put_((group_of_filters(cout, lanes),), rows_nonzero.bool(), accumulate=True)
    return out


def row_scores(rows: torch.Tensor, lanes: int, criterion: str = "value",
               exp_span: int = 6) -> torch.Tensor:
    """Score of every row per group.

    Parameters
    ----------
    rows : torch.Tensor, shape (Cout, R, S)
        Weight rows (see `weight_to_rows`).
    lanes : int
        Filters per group.
    criterion : {"value", "energy", "population"}
    exp_span : int
        ``exp_max - exp_min`` of the configuration (population criterion only).

    Returns
    -------
    torch.Tensor, shape (n_groups, R), float64
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown pruning criterion {criterion!r}; known: {list(CRITERIA)}")
    rows = rows.to(torch.float64)
    a = rows.abs()
    l1 = a.sum(dim=-1)
    if criterion == "value":
        per_filter = l1
    elif criterion == "energy":
        per_filter = (rows * rows).sum(dim=-1)
    else:
        fmax = a.amax(dim=(1, 2), keepdim=True)
        alive = (a >= fmax * 2.0 ** (-exp_span - 1)) & (a > 0)
        # Population dominates; L1 (normalised per filter to < 1) only breaks ties.
        per_filter = alive.sum(dim=-1).to(torch.float64) + l1 / (l1.sum(dim=1, keepdim=True)
                                                                 + 1e-300) * 0.5
    cout, r = per_filter.shape
    n_groups = -(-cout // lanes)
    scores = torch.zeros(n_groups, r, dtype=torch.float64)
    scores.index_add_(0, group_of_filters(cout, lanes), per_filter)
    return scores


def prune_rows(weight: torch.Tensor, fraction: float, lanes: int, basis_size: int,
               criterion: str = "value", exp_span: int = 6,
               name: str = "weight", scope: str = "group") -> torch.Tensor:
    """Structural row pattern keeping the best ``1 - fraction`` rows (see ``scope``).

    Parameters
    ----------
    weight : torch.Tensor
        ``(Cout, N)`` or ``(Cout, Cin, kh, kw)`` weight.
    fraction : float
        Fraction of rows to prune per group, in ``[0, 1)``.
    lanes, basis_size : int
        Group size and row length ``S`` (from the `SDConfig`).
    criterion : str
        See the module docstring.
    scope : {"group", "layer"}
        Count the pruned rows per group (reference) or over the whole layer
        (cost-aware, see the module docstring).

    Returns
    -------
    torch.BoolTensor, shape (n_groups, R)
        True for kept rows.  Ties keep the lower row index (stable sort; in the layer
        scope, the lower group first).
    """
    if scope not in SCOPES:
        raise ValueError(f"{name}: pruning scope must be one of {list(SCOPES)}, got {scope!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not math.isfinite(fraction) or not 0.0 <= fraction < 1.0:
        raise ValueError(f"{name}: pruning fraction must be in [0, 1), got {fraction!r}")
    rows = weight_to_rows(weight.detach(), basis_size)
    scores = row_scores(rows, lanes, criterion, exp_span)
    n_groups, r = scores.shape
    keep = torch.ones(n_groups, r, dtype=torch.bool)
    if scope == "layer":
        n_prune = min(math.floor(fraction * n_groups * r + 0.5), n_groups * (r - 1))
        if n_prune:
            # Each group's best row is exempt, so that no group of filters is left empty.
            flat = scores.clone()
            flat[torch.arange(n_groups), scores.argmax(dim=1)] = math.inf
            order = torch.sort(flat.flatten(), stable=True, descending=True).indices
            keep.view(-1)[order[n_groups * r - n_prune:]] = False
        return keep
    n_prune = math.floor(fraction * r + 0.5)
    if n_prune:
        # Stable descending sort: among equal scores the higher row index is pruned first.
        order = torch.sort(scores, dim=1, stable=True, descending=True).indices
        keep.scatter_(1, order[:, r - n_prune:], False)
    return keep

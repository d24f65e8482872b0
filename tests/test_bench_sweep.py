"""Sweep bookkeeping: Pareto front, grid and per-point configurations (no training)."""

import sys
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:  # `bench/` is a top-level folder
    sys.path.insert(0, str(_REPO))

from bench.plots import pareto_front  # noqa: E402
from bench.sweep import point_config, sweep_points  # noqa: E402
from hw.config import SDConfig  # noqa: E402


def test_pareto_front_keeps_only_undominated_points():
    pts = [(3.0, 90.0), (2.0, 80.0), (2.5, 79.0), (4.0, 90.0), (5.0, 97.0), (2.0, 70.0)]
    assert pareto_front(pts) == [1, 0, 4]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 50.0)]) == [0]


@pytest.mark.parametrize("quick", [True, False])
def test_grid_covers_every_knob(quick):
    pts = sweep_points(quick)
    assert {p["exp_bits"] for p in pts} == {2, 3, 4}
    assert len({p["prune"] for p in pts}) >= 3
    if not quick:
        assert {p["basis_bits"] for p in pts} == {4, 6, 8}
        assert any(p["threshold"] for p in pts)


def test_point_config_is_buildable_and_uses_full_field_range():
    base = SDConfig()
    for e in (2, 3, 4):
        for b in (4, 6, 8):
            cfg = point_config(base, e, b)
            assert cfg.exp_levels == cfg.max_exp_levels == (1 << e) - 1
            assert cfg.basis_bits == b
            assert cfg.acc_bits - cfg.product_bits >= base.acc_bits - base.product_bits
    assert point_config(base, 3, 8) == base      # the default preset is a sweep point

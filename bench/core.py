"""Building blocks of the benchmark: statistics, targets with flags, "not available".

A benchmark *section* is a function ``run(ctx) -> dict`` that measures something and
returns its values (and the measured value of every target it owns).  Sections never
decide pass or fail themselves: `evaluate` computes every flag from the measured value
and the target, in one place, so a flag can be traced to a number.

A section whose dependency is not in the tree yet raises `NotAvailable`; the runner
records it as "not available" (never as a pass) and carries on, so the benchmark runs at
every stage of the project.
"""

from __future__ import annotations

import importlib
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

__all__ = ["NotAvailable", "Stat", "measure", "timed", "require", "TargetSpec", "evaluate",
           "target_entry", "SectionOutput", "PASS", "FAIL", "NOT_AVAILABLE", "NOT_RUN"]

PASS = "pass"
FAIL = "fail"
NOT_AVAILABLE = "not available"
NOT_RUN = "not run"
STATUSES = (PASS, FAIL, NOT_AVAILABLE, NOT_RUN)


class NotAvailable(RuntimeError):
    """A section cannot run because something it needs is not there (yet)."""


def require(module: str, *names: str):
    """Import ``module`` and check it has ``names``; raise `NotAvailable` if not.

    Only a missing module (or missing attribute) counts as "not available"; an error
    raised while importing a module that exists propagates, because that is a bug.
    """
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module == missing or module.startswith(missing + "."):
            raise NotAvailable(f"module {module} is not in the tree yet") from None
        raise
    absent = [n for n in names if not hasattr(mod, n)]
    if absent:
        raise NotAvailable(f"{module} has no {', '.join(absent)} yet")
    return mod


@dataclass(frozen=True)
class Stat:
    """Median of repeated measurements with their spread (min, max, quartiles)."""

    median: float
    min: float
    max: float
    q1: float
    q3: float
    n: int
    unit: str = ""

    @classmethod
    def of(cls, samples: Sequence[float], unit: str = "") -> "Stat":
        xs = sorted(float(x) for x in samples)
        if not xs:
            raise ValueError("Stat.of needs at least one sample")
        bad = [x for x in xs if not math.isfinite(x)]
        if bad:
            raise ValueError(f"Stat.of got non-finite samples {bad}")
        if len(xs) >= 2:
            q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
        else:
            q1 = q3 = xs[0]
        return cls(statistics.median(xs), xs[0], xs[-1], q1, q3, len(xs), unit)

    def as_dict(self) -> dict:
        return {"median": self.median, "min": self.min, "max": self.max, "q1": self.q1,
                "q3": self.q3, "n": self.n, "unit": self.unit}

    def __str__(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.n == 1 or self.min == self.max:
            return f"{_num(self.median)}{unit} (n={self.n})"
        return (f"{_num(self.median)}{unit} [{_num(self.min)}, {_num(self.max)}] "
                f"(n={self.n})")


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"


def measure(fn: Callable[[], Any], repeats: int, unit: str = "s",
            key: Callable[[Any], float] | None = None) -> tuple[Stat, list]:
    """Call ``fn`` ``repeats`` times; ``key(result)`` (default: wall time) gives the sample.

    Returns the `Stat` and the list of raw results.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    samples, results = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        results.append(out)
        samples.append(dt if key is None else key(out))
    return Stat.of(samples, unit), results


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of one call and its result."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda m, t: m >= t,
    "<=": lambda m, t: m <= t,
    "<": lambda m, t: m < t,
    ">": lambda m, t: m > t,
}


@dataclass(frozen=True)
class TargetSpec:
    """A number some issue sets: ``measured <op> target``.

    Parameters
    ----------
    key : str
        Stable identifier in results.json (``section.metric``).
    description : str
        What is measured, in words.
    op : str
        One of ``>=``, ``<=``, ``<``, ``>``.
    target : float
        The bound.
    unit : str
        Unit of measured and target.
    issue : int
        Issue number that sets the target.
    section : str
        Benchmark section that measures it.
    command : str
        Command that produces the figure.
    kind : str
        ``"must"`` (a requirement) or ``"goal"`` (reported against a goal, e.g. the
        paper's 2.44x energy efficiency).
    missing_status : str
        Status when nothing was measured: "not available" or, for steps the bench only
        reuses (FPGA reports), "not run".
    """

    key: str
    description: str
    op: str
    target: float
    unit: str
    issue: int
    section: str
    command: str = "smartdeal bench"
    kind: str = "must"
    missing_status: str = NOT_AVAILABLE

    def __post_init__(self):
        if self.op not in _OPS:
            raise ValueError(f"target {self.key}: unknown operator {self.op!r}; "
                             f"known: {sorted(_OPS)}")
        if self.kind not in ("must", "goal"):
            raise ValueError(f"target {self.key}: kind must be 'must' or 'goal', "
                             f"got {self.kind!r}")
        if self.missing_status not in (NOT_AVAILABLE, NOT_RUN):
            raise ValueError(f"target {self.key}: missing_status must be "
                             f"{NOT_AVAILABLE!r} or {NOT_RUN!r}, got {self.missing_status!r}")


def evaluate(spec: TargetSpec, measured: float | None) -> str:
    """Flag of ``measured`` against ``spec``: pass, fail, or the missing status.

    ``None`` (nothing measured) gives ``spec.missing_status``; a NaN or infinite value is
    a failed measurement and raises, so it can never turn into a pass.
    """
    if measured is None:
        return spec.missing_status
    if isinstance(measured, bool) or not isinstance(measured, (int, float)):
        raise TypeError(f"target {spec.key}: measured value must be a number or None, "
                        f"got {measured!r}")
    if not math.isfinite(measured):
        raise ValueError(f"target {spec.key}: measured value {measured!r} is not finite")
    return PASS if _OPS[spec.op](float(measured), float(spec.target)) else FAIL


def target_entry(spec: TargetSpec, measured: float | None, *, reason: str | None = None,
                 detail: dict | None = None, failed: bool = False) -> dict:
    """The results.json record of one target: measured value, bound, flag and origin.

    ``failed`` marks a target whose measuring step ran and failed (e.g. place-and-route
    that did not complete): no value, and the flag is "fail".
    """
    if failed and measured is not None:
        raise ValueError(f"target {spec.key}: a failed measurement cannot have a value")
    status = FAIL if failed else evaluate(spec, measured)
    entry = {
        "key": spec.key, "description": spec.description, "issue": spec.issue,
        "section": spec.section, "kind": spec.kind, "measured": measured,
        "op": spec.op, "target": spec.target, "unit": spec.unit, "status": status,
        "command": spec.command,
    }
    if reason and (status in (NOT_AVAILABLE, NOT_RUN) or failed):
        entry["reason"] = reason
    if detail:
        entry["detail"] = detail
    return entry


@dataclass
class SectionOutput:
    """What a section returns: values, measured targets, plots, notes."""

    values: dict = field(default_factory=dict)
    measured: dict = field(default_factory=dict)   # target key -> measured value
    details: dict = field(default_factory=dict)    # target key -> detail dict
    plots: list = field(default_factory=list)      # paths of PNGs written
    notes: list = field(default_factory=list)      # sentences for docs/results.md
    # Tables for docs/results.md: {"title": str, "header": [str], "rows": [[cell]]}.
    tables: list = field(default_factory=list)
    # Target key -> why it was not measured (its part could not run).
    unavailable: dict = field(default_factory=dict)
    # Target key -> why its measuring step ran and failed (flagged "fail", no value).
    failed: dict = field(default_factory=dict)


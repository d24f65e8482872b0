"""Matplotlib figures of the benchmark (PNG, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: CI and this machine have no display
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["pareto_front", "accuracy_vs_bits", "grouped_bars", "stacked_energy"]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated in (fewer bits, higher accuracy).

    A point is on the front when no other point has bits <= and accuracy >= with one of
    them strict.  Returned in order of increasing bits.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_vs_bits(series: dict[str, list[tuple[float, float]]],
                     references: dict[str, tuple[float, float]],
                     front: list[tuple[float, float]], path: Path,
                     title: str = "") -> Path:
    """Scatter of accuracy vs bits/weight per series, reference points, Pareto front line."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = iter("o^sDvP")
    for label, pts in series.items():
        if pts:
            xs, ys = zip(*pts)
            ax.scatter(xs, ys, s=22, alpha=0.75, marker=next(markers), label=label)
    if front:
        xs, ys = zip(*sorted(front))
        ax.plot(xs, ys, "k--", lw=1.2, label="Pareto front (integer reference)")
    for (label, (x, y)), c in zip(references.items(), ("tab:red", "tab:purple", "tab:brown")):
        ax.scatter([x], [y], s=90, marker="*", color=c, zorder=5, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bits per weight (codes, index, basis and scales counted)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def grouped_bars(categories: Sequence[str], groups: dict[str, Sequence[float]], path: Path,
                 ylabel: str, title: str = "", errors: dict[str, Sequence[tuple[float, float]]]
                 | None = None, log: bool = False, hline: float | None = None,
                 hline_label: str = "") -> Path:
    """Bars per category, one bar per group; optional asymmetric error bars (lo, hi)."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(categories) + 2), 4.2))
    n = max(1, len(groups))
    width = 0.8 / n
    for k, (label, vals) in enumerate(groups.items()):
        xs = [i + (k - (n - 1) / 2) * width for i in range(len(categories))]
        err = None
        if errors and label in errors:
            err = [[v - lo for v, (lo, _) in zip(vals, errors[label])],
                   [hi - v for v, (_, hi) in zip(vals, errors[label])]]
        ax.bar(xs, vals, width, yerr=err, capsize=3, label=label)
    if hline is not None:
        ax.axhline(hline, color="k", ls="--", lw=1, label=hline_label or None)
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels(categories, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def stacked_energy(labels: Sequence[str], parts: dict[str, Sequence[float]], path: Path,
                   title: str = "", ylabel: str = "energy (nJ)") -> Path:
    """Stacked bars: one bar per label, one stack segment per energy category."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.4))
    bottom = [0.0] * len(labels)
    for name, vals in parts.items():
        ax.bar(range(len(labels)), vals, 0.7, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)

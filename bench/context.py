"""The state one benchmark invocation shares between its sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from tqdm.auto import tqdm

__all__ = ["Context", "REPO"]

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Context:
    """Options and shared results of one ``smartdeal bench`` run.

    Attributes
    ----------
    quick : bool
        Reduced run (fewer repeats, smaller sweeps) for CI-sized checks.
    out_dir : Path
        Where results.json and working plots go (``bench/``).
    img_dir : Path
        Where plots that docs/results.md shows go (``docs/img/``).
    seed : int
        Base seed of every random choice.
    shared : dict
        Results one section computes and another reuses in the same invocation (e.g. the
        trained dense model, the RTL counters), so every comparison is made on one run.
    progress : bool
        Show tqdm progress bars.
    """

    quick: bool = False
    out_dir: Path = REPO / "bench"
    img_dir: Path = REPO / "docs" / "img"
    seed: int = 0
    shared: dict = field(default_factory=dict)
    progress: bool = True

    def repeats(self, full: int, quick: int) -> int:
        """Number of repetitions of a measurement in this mode."""
        return quick if self.quick else full

    def bar(self, iterable: Iterable | None = None, desc: str = "", total: int | None = None,
            **kw) -> tqdm:
        return tqdm(iterable, desc=desc, total=total, disable=not self.progress, leave=False,
                    dynamic_ncols=True, **kw)

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """``shared[key]``, computed once per invocation.

        A computation that raised raises the same exception again for later sections
        instead of running again (a failed RTL run is not repeated by every section that
        needs its results).
        """
        if key not in self.shared:
            try:
                self.shared[key] = compute()
            except Exception as exc:
                self.shared[key] = _Failed(exc)
                raise
        value = self.shared[key]
        if isinstance(value, _Failed):
            raise value.exc
        return value


class _Failed:
    """Marker of a shared computation that raised."""

    def __init__(self, exc: BaseException):
        self.exc = exc

"""Reusable cocotb testbench parts: clock/reset, stream driver and sink, scoreboard.

Amaranth 0.5 flattens a ``lib.stream`` port ``x`` into the Verilog ports ``x__valid``,
``x__ready`` and ``x__payload``; a `StructLayout`/`ArrayLayout` payload is **one** flat
``x__payload`` vector (its fields are only internal wires).  `StreamDriver` and
`StreamSink` therefore take the payload's Amaranth shape and convert between Python values
and bits with `pack` / `unpack`: a ``StructLayout`` payload is a ``dict`` of its fields, an
``ArrayLayout`` a ``list``, nested as deep as the layout, and a plain shape an ``int``.

A block test follows one pattern::

    clock = ClockReset(dut)                       # starts the clock
    await clock.reset()
    sb = Scoreboard("shifter")
    src = StreamDriver(dut, "i", in_layout, clock, idle=random_stalls(0.3, seed=1))
    sink = StreamSink(dut, "o", out_layout, clock, stall=random_stalls(0.3, seed=2),
                      callback=sb.compare)
    for x in inputs:
        sb.expect(model(x), inputs=x)             # expected values from golden/
        src.send(x)
    await sink.wait_for(len(inputs))
    sb.check()

Transfers are sampled in the ``ReadOnly`` phase of the cycle in which ``valid & ready``
hold, so ``cycle`` numbers are those of the clock edge that completes the transfer minus
one: a block of latency ``L`` shows ``sink cycle - driver cycle == L``.
"""

from __future__ import annotations

import itertools
import os
import pickle
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import cocotb
from amaranth.hdl import Shape
from amaranth.lib import data
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge
from cocotb.utils import get_sim_time

from tb.harness import CONFIG_ENV, config_from_env

__all__ = ["pack", "unpack", "random_stalls", "load_pickled_env", "ClockReset", "StreamDriver", "StreamMonitor",
           "StreamSink", "Scoreboard", "config_from_env", "CONFIG_ENV"]


# ------------------------------------------------------------------ payload packing
def pack(shape, value, _path: str = "payload") -> int:
    """Bits (a non-negative int) of ``value`` laid out as Amaranth ``shape``.

    ``shape`` is a plain shape (``8``, ``signed(8)``, ``unsigned(3)``) for an ``int`` value,
    or a `data.Layout` for a ``dict`` (struct) / ``list`` (array) value.

    Raises
    ------
    ValueError
        If a field is missing or unknown, or an integer does not fit its field; the
        message names the field path (``payload.weights[2]``).
    """
    if isinstance(shape, data.Layout):
        if isinstance(shape, data.ArrayLayout):
            if len(value) != shape.length:
                raise ValueError(f"{_path}: expected {shape.length} elements, got {len(value)}")
            items = list(enumerate(value))
        else:
            if not isinstance(value, Mapping):
                raise ValueError(f"{_path}: expected a dict of fields, got {value!r}")
            names = {key for key, _ in shape}
            unknown = sorted(set(value) - names)
            if unknown:
                raise ValueError(f"{_path}: unknown field(s) {unknown}; fields: {sorted(names)}")
            missing = sorted(names - set(value))
            if missing:
                raise ValueError(f"{_path}: missing field(s) {missing}")
            items = list(value.items())
        bits = 0
        for key, sub in items:
            field = shape[key]
            sub_path = f"{_path}[{key}]" if isinstance(key, int) else f"{_path}.{key}"
            bits |= pack(field.shape, sub, sub_path) << field.offset
        return bits
    s = Shape.cast(shape)
    v = int(value)
    lo, hi = (-(1 << (s.width - 1)), (1 << (s.width - 1)) - 1) if s.signed else (0, (1 << s.width) - 1)
    if not lo <= v <= hi:
        raise ValueError(f"{_path}: {v} does not fit {s} (range [{lo}, {hi}])")
    return v & ((1 << s.width) - 1)


def unpack(shape, bits: int):
    """Inverse of `pack`: a Python value (int, dict or list) from the bits of ``shape``."""
    bits = int(bits)
    if isinstance(shape, data.Layout):
        fields = {key: unpack(f.shape, (bits >> f.offset) & ((1 << _width(f.shape)) - 1))
                  for key, f in shape}
        if isinstance(shape, data.ArrayLayout):
            return [fields[i] for i in range(shape.length)]
        return fields
    s = Shape.cast(shape)
    bits &= (1 << s.width) - 1
    if s.signed and s.width and bits >> (s.width - 1):
        bits -= 1 << s.width
    return bits


def _bits(value) -> int:
    # Vectors read back as LogicArray, single bits as Logic.
    return value.to_unsigned() if hasattr(value, "to_unsigned") else int(value)


def _width(shape) -> int:
    return shape.size if isinstance(shape, data.Layout) else Shape.cast(shape).width


# ------------------------------------------------------------------------ generators
def random_stalls(probability: float, seed: int = 0) -> Iterator[bool]:
    """Endless seeded stream of booleans, ``True`` with ``probability`` (idle / stall)."""
    if not 0.0 <= probability < 1.0:
        raise ValueError(f"stall probability must be in [0, 1), got {probability!r}")
    if probability == 0.0:
        return itertools.repeat(False)
    rng = random.Random(seed)
    return (rng.random() < probability for _ in itertools.count())


def load_pickled_env(variable: str, runner: str):
    """The object pickled at the path the environment ``variable`` names.

    The pytest side of a cocotb test hands large inputs (prepared networks, expected
    outputs) to the simulator process this way; ``runner`` says what sets ``variable``,
    for the error when it is missing.
    """
    path = os.environ.get(variable)
    if not path:
        raise RuntimeError(f"{variable} is not set; run through {runner}")
    with open(path, "rb") as fh:
        return pickle.load(fh)


# ------------------------------------------------------------------- clock and reset
class ClockReset:
    """Starts the clock of ``dut`` and drives its synchronous reset.

    Parameters
    ----------
    dut : cocotb handle
    clk, rst : str
        Port names (Amaranth: ``clk``, ``rst``).
    period_ns : int
        Clock period.
    """

    def __init__(self, dut, clk: str = "clk", rst: str = "rst", period_ns: int = 10):
        self.dut = dut
        self.clk = getattr(dut, clk)
        self.rst = getattr(dut, rst) if rst else None
        self.period_ns = period_ns
        Clock(self.clk, period_ns, unit="ns").start()

    @property
    def cycle(self) -> int:
        """Index of the current clock cycle (rising edge ``n`` starts cycle ``n``)."""
        return int(get_sim_time("ns") // self.period_ns)

    async def reset(self, cycles: int = 2) -> None:
        """Hold reset for ``cycles`` rising edges, then release it."""
        if self.rst is not None:
            self.rst.value = 1
        for _ in range(cycles):
            await RisingEdge(self.clk)
        if self.rst is not None:
            self.rst.value = 0

    async def cycles(self, n: int) -> None:
        for _ in range(n):
            await RisingEdge(self.clk)


# --------------------------------------------------------------------------- streams
class _StreamPorts:
    def __init__(self, dut, name: str, shape, clock: ClockReset):
        try:
            self.valid = getattr(dut, f"{name}__valid")
            self.ready = getattr(dut, f"{name}__ready")
            self.payload = getattr(dut, f"{name}__payload")
        except AttributeError as exc:
            raise AttributeError(f"stream {name!r} not found on {dut._name}: expected ports "
                                 f"{name}__valid / {name}__ready / {name}__payload") from exc
        self.name, self.shape, self.clock = name, shape, clock
        width = len(self.payload)
        if width != _width(shape):
            raise ValueError(f"stream {name!r}: payload port is {width} bits but the shape "
                             f"{shape!r} has {_width(shape)}")


class StreamDriver(_StreamPorts):
    """Pushes payloads into a valid/ready input stream of the DUT.

    Parameters
    ----------
    dut, name, shape, clock
        DUT handle, stream port name, payload shape (as in the Amaranth signature) and the
        `ClockReset` of the DUT.
    idle : iterator of bool, optional
        Consulted before offering each new item; ``True`` inserts one idle cycle (valid
        low).  Use `random_stalls`.  ``valid`` is never dropped before ``ready``.
    on_offer : callable(item), optional
        Called when an item is put on the bus, in the same cycle: drives side signals
        that must travel with the item (e.g. `MacLanes.quant`).

    Attributes
    ----------
    sent : list of (cycle, item)
        Items in the order the DUT accepted them.
    """

    def __init__(self, dut, name: str, shape, clock: ClockReset, *,
                 idle: Iterator[bool] | None = None,
                 on_offer: Callable[[Any], None] | None = None):
        super().__init__(dut, name, shape, clock)
        self.idle = idle if idle is not None else itertools.repeat(False)
        self.on_offer = on_offer
        self.sent: list[tuple[int, Any]] = []
        self._queue: deque = deque()
        self._current = None
        self.valid.value = 0
        self._task = cocotb.start_soon(self._run())

    def send(self, item) -> None:
        """Queue one payload (checked against the shape now, not when it is driven)."""
        pack(self.shape, item, f"{self.name}.payload")
        self._queue.append(item)

    def send_all(self, items: Iterable) -> None:
        for item in items:
            self.send(item)

    @property
    def busy(self) -> bool:
        return bool(self._queue) or self._current is not None

    def flush(self) -> None:
        """Drop the queued items and the one on offer and drive ``valid`` low now.

        For a reset in mid-stream: call it after a clock edge, then reset the DUT.
        """
        self._queue.clear()
        self._current = None
        self.valid.value = 0

    async def _run(self):
        while True:
            await RisingEdge(self.clock.clk)
            if self._current is None and self._queue and not next(self.idle):
                self._current = self._queue.popleft()
                self.payload.value = pack(self.shape, self._current)
                if self.on_offer is not None:
                    self.on_offer(self._current)
            self.valid.value = int(self._current is not None)
            await ReadOnly()
            if self._current is not None and int(self.ready.value):
                self.sent.append((self.clock.cycle, self._current))
                self._current = None


class StreamMonitor(_StreamPorts):
    """Records every transfer of a stream without driving it.

    Parameters
    ----------
    callback : callable(item, cycle), optional
        Called for each transfer (e.g. `Scoreboard.compare`).

    Attributes
    ----------
    items, cycles : list
        Payloads (unpacked) and the cycle of each transfer.
    """

    def __init__(self, dut, name: str, shape, clock: ClockReset, *,
                 callback: Callable[[Any, int], None] | None = None):
        super().__init__(dut, name, shape, clock)
        self.callback = callback
        self.items: list = []
        self.cycles: list[int] = []
        self._task = cocotb.start_soon(self._run())

    def _drive(self) -> bool:
        return True  # a passive monitor takes whatever ready the design has

    async def _run(self):
        while True:
            await RisingEdge(self.clock.clk)
            taking = self._drive()
            await ReadOnly()
            if taking and int(self.valid.value) and int(self.ready.value):
                item = unpack(self.shape, _bits(self.payload.value))
                cycle = self.clock.cycle
                self.items.append(item)
                self.cycles.append(cycle)
                if self.callback is not None:
                    self.callback(item, cycle)

    async def wait_for(self, count: int, timeout_cycles: int | None = None) -> None:
        """Wait until ``count`` items arrived; ``AssertionError`` after ``timeout_cycles``.

        The default timeout is ``100 + 20 * count`` cycles.
        """
        limit = 100 + 20 * count if timeout_cycles is None else timeout_cycles
        for _ in range(limit):
            if len(self.items) >= count:
                return
            await RisingEdge(self.clock.clk)
        if len(self.items) < count:
            raise AssertionError(f"stream {self.name!r}: expected {count} items, got "
                                 f"{len(self.items)} after {limit} cycles")


class StreamSink(StreamMonitor):
    """Consumes an output stream of the DUT, with back-pressure from ``stall``.

    Parameters
    ----------
    stall : iterator of bool, optional
        One value per cycle; ``True`` holds ``ready`` low for that cycle.
    """

    def __init__(self, dut, name: str, shape, clock: ClockReset, *,
                 stall: Iterator[bool] | None = None,
                 callback: Callable[[Any, int], None] | None = None):
        self.stall = stall if stall is not None else itertools.repeat(False)
        super().__init__(dut, name, shape, clock, callback=callback)
        self.ready.value = 0  # the monitor task only starts at the next trigger

    def _drive(self) -> bool:
        ready = not next(self.stall)
        self.ready.value = int(ready)
        return ready


# ------------------------------------------------------------------------ scoreboard
def _diff(expected, got, path: str) -> list[str]:
    if isinstance(expected, Mapping) and isinstance(got, Mapping):
        out = []
        for key in expected:
            if key not in got:
                out.append(f"{path}.{key}: missing")
            else:
                out += _diff(expected[key], got[key], f"{path}.{key}")
        return out
    if isinstance(expected, Sequence) and isinstance(got, Sequence) \
            and not isinstance(expected, str):
        if len(expected) != len(got):
            return [f"{path}: expected {len(expected)} elements, got {len(got)}"]
        out = []
        for i, (e, g) in enumerate(zip(expected, got)):
            out += _diff(e, g, f"{path}[{i}]")
        return out
    if _as_int(expected) != _as_int(got):
        return [f"{path}: expected {expected!r}, got {got!r}"]
    return []


def _as_int(x):
    try:
        return int(x)
    except (TypeError, ValueError):
        return x


def _context(context: Mapping) -> str:
    return (" for " + ", ".join(f"{k}={v!r}" for k, v in context.items())) if context else ""


class Scoreboard:
    """Compares DUT outputs in order against expected values from the golden model.

    Parameters
    ----------
    name : str
        Shown in every message.
    max_report : int
        Mismatches listed in full by `check` (all are counted).

    Attributes
    ----------
    matched, mismatched : int
        Counters.
    """

    def __init__(self, name: str = "scoreboard", max_report: int = 10):
        self.name = name
        self.max_report = max_report
        self._expected: deque = deque()
        self._index = 0
        self.matched = 0
        self.mismatched = 0
        self.errors: list[str] = []

    def expect(self, item, **context) -> None:
        """Queue the next expected item; ``context`` (e.g. the inputs) is shown on mismatch."""
        self._expected.append((item, context))

    def compare(self, got, cycle: int | None = None) -> None:
        """Check one DUT output against the oldest expected item (a monitor callback)."""
        index = self._index
        self._index += 1
        at = f"item #{index}" + (f" (cycle {cycle})" if cycle is not None else "")
        if not self._expected:
            self.mismatched += 1
            self.errors.append(f"{at}: unexpected output {got!r}")
            return
        expected, context = self._expected.popleft()
        diffs = _diff(expected, got, "payload")
        if diffs:
            self.mismatched += 1
            ctx = _context(context)
            self.errors.append(f"{at}{ctx}: " + "; ".join(diffs))
        else:
            self.matched += 1

    @property
    def pending(self) -> int:
        """Expected items not yet seen."""
        return len(self._expected)

    def check(self) -> None:
        """Raise ``AssertionError`` if any item differed, was missing or was extra."""
        problems = list(self.errors[:self.max_report])
        if len(self.errors) > self.max_report:
            problems.append(f"... and {len(self.errors) - self.max_report} more")
        if self._expected:
            item, context = self._expected[0]
            problems.append(f"{len(self._expected)} expected item(s) never arrived, first: "
                            f"{item!r}{_context(context)}")
        if problems:
            raise AssertionError(f"{self.name}: {self.mismatched} mismatch(es), "
                                 f"{self.matched} matched:\n  " + "\n  ".join(problems))
        if self.matched == 0:
            raise AssertionError(f"{self.name}: nothing was compared")

"""Registry of the generated hardware blocks: name -> factory.

Each entry is ``"name": "module:attribute"``, where ``attribute`` is a callable that takes an
`SDConfig` and returns an Amaranth ``wiring.Component`` (a class like ``Pow2Shifter`` or a
small function).  Adding a block is one line.  ``smartdeal verilog`` writes ``<name>.v``
(top module ``sd_<name>``) for every entry; entries are imported lazily so that the
registry itself imports nothing heavy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from hw.config import SDConfig

__all__ = ["DESIGNS", "factory", "build", "top_name"]

DESIGNS: dict[str, str] = {
    "shift": "hw.shifter:Pow2Shift",          # combinational +-value << k core
    "shifter": "hw.shifter:Pow2Shifter",      # registered stream stage around it
    "decoder": "hw.decoder:SparseDecoder",
    "basis_array": "hw.basis_array:BasisArray",
    "mac": "hw.mac:mac_lanes_for_fpga",    # products in `sd_mul` (registered DSPs)
    "dense": "hw.dense:DenseRowReader",
    # whole accelerators (memories, controller, AXI host interface); they instantiate the
    # `sd_ram` Verilog module, whose text is the component's `verilog_sources`
    "top": "hw.top:SDAccelerator",
    "dense_top": "hw.dense_top:DenseAccelerator",
}


def factory(name: str) -> Callable[[SDConfig], object]:
    """The factory registered as ``name``.

    Raises
    ------
    ValueError
        If ``name`` is not registered (the message lists the registered names).
    """
    try:
        target = DESIGNS[name]
    except KeyError:
        raise ValueError(f"unknown design {name!r}; registered: {sorted(DESIGNS)}") from None
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def build(name: str, config: SDConfig):
    """Elaborate-ready component ``name`` for ``config``."""
    if not isinstance(config, SDConfig):
        raise TypeError(f"config must be an SDConfig, got {type(config).__name__}")
    return factory(name)(config)


def top_name(name: str) -> str:
    """Verilog module name of design ``name``."""
    return f"sd_{name}"

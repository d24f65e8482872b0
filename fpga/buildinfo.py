"""What one generated build folder holds, for the vendor scripts and the core file.

`BuildFiles` lists the files of a ``smartdeal verilog`` folder by role, with paths
relative to the folder, so every generator (Vivado Tcl, Quartus Tcl, FuseSoC core)
references exactly the files that are there, and a test can check that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BuildFiles"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class BuildFiles:
    """Files and interface facts of one build folder.

    Parameters
    ----------
    root : Path
        The build folder; every other path is relative to it (POSIX separators).
    name : str
        Build name (``sd_default``): project and core names derive from it.
    top : str
        Top module of the accelerator.
    verilog : tuple of str
        Verilog sources of the accelerator (top first is not required).
    family_verilog : dict
        FPGA family -> its own list of Verilog sources, where a hand-written module has
        a text for that family (``"ecp5"``: ``rtl/sd_mul_ecp5.v`` in place of
        ``rtl/sd_mul.v``, `hw.dsp`).  Families not named use ``verilog``.
    init_files : tuple of str
        Files the Verilog reads with ``$readmemh`` (must sit where the tools run, see
        ``init_dir``).
    images : dict
        Memory images by format (``"coe"``, ``"mem"``, ``"mif"``, ...): tuples of paths.
    clock, reset : str
        Clock and (synchronous, active-high) reset ports.
    clock_mhz : float
        Clock constraint of the vendor flows.
    ports : tuple of (name, direction, width)
        Top-level ports (Quartus makes all but the clock virtual pins).
    description : str
        One line for the core file and the script headers.
    version : str
        Core version.
    """

    root: Path
    name: str
    top: str
    verilog: tuple[str, ...]
    init_files: tuple[str, ...] = ()
    images: dict = field(default_factory=dict)
    clock: str = "clk"
    reset: str = "rst"
    clock_mhz: float = 100.0
    ports: tuple = ()
    description: str = ""
    version: str = "0.1.0"
    init_dir: str = "rtl"
    family_verilog: dict = field(default_factory=dict)

    def __post_init__(self):
        for what, value in (("name", self.name), ("top", self.top)):
            if not _NAME.match(value):
                raise ValueError(f"BuildFiles.{what} must be a plain identifier, got {value!r}")
        if not self.verilog:
            raise ValueError("BuildFiles.verilog is empty: a build needs its Verilog")
        if not self.clock_mhz > 0:
            raise ValueError(f"BuildFiles.clock_mhz must be > 0, got {self.clock_mhz!r}")

    def verilog_for(self, family: str) -> tuple[str, ...]:
        """Verilog sources for an FPGA ``family`` (`family_verilog`, else `verilog`)."""
        return tuple(self.family_verilog.get(family, self.verilog))

    def all_files(self) -> list[str]:
        files = [*self.verilog, *(f for fs in self.family_verilog.values() for f in fs),
                 *self.init_files]
        for paths in self.images.values():
            files += list(paths)
        return list(dict.fromkeys(files))

    def missing(self) -> list[str]:
        """Listed files that are not in the folder."""
        return [f for f in self.all_files() if not (Path(self.root) / f).is_file()]

    @property
    def clock_period_ns(self) -> float:
        return 1000.0 / self.clock_mhz

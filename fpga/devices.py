"""FPGA devices the open-source flow targets, with their resource counts.

Each `Device` names one part, the nextpnr arguments that select it and what it holds, so
a design that cannot fit is refused before place-and-route with a message that names the
resource.  Resource counts are those nextpnr reports for the part (``--report``
``utilization.*.available``); ``bram_bits`` is the capacity of the block RAMs as data
bits (ECP5 DP16KD: 18 Kibit, iCE40 EBR: 4 Kibit, iCE40 UP SPRAM: 256 Kibit).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Device", "DEVICES", "device"]


@dataclass(frozen=True)
class Device:
    """One FPGA part of the open-source flow.

    Parameters
    ----------
    name : str
        Flow name, e.g. ``"ecp5-25k"``.
    family : str
        ``"ecp5"`` or ``"ice40"``: selects ``synth_<family>`` and ``nextpnr-<family>``.
    part : str
        Vendor part name (for reports).
    pnr_args : tuple of str
        Arguments that select the part in nextpnr.
    capacity : dict
        Resources by flow category: ``lut``, ``ff``, ``bram``, ``dsp`` (and ``spram``),
        plus ``bram_bits``.
    default_mhz : float
        Timing target handed to nextpnr when the caller gives none.
    """

    name: str
    family: str
    part: str
    pnr_args: tuple[str, ...]
    capacity: dict = field(default_factory=dict)
    default_mhz: float = 100.0

    @property
    def synth_command(self) -> str:
        return f"synth_{self.family}"

    @property
    def nextpnr(self) -> str:
        return f"nextpnr-{self.family}"


DEVICES: dict[str, Device] = {
    "ecp5-25k": Device(
        "ecp5-25k", "ecp5", "LFE5U-25F-6BG381C", ("--25k", "--package", "CABGA381"),
        {"lut": 24288, "ff": 24288, "bram": 56, "dsp": 28, "bram_bits": 56 * 18432},
        default_mhz=150.0),
    "ecp5-85k": Device(
        "ecp5-85k", "ecp5", "LFE5U-85F-6BG381C", ("--85k", "--package", "CABGA381"),
        {"lut": 83640, "ff": 83640, "bram": 208, "dsp": 156, "bram_bits": 208 * 18432},
        default_mhz=150.0),
    "ice40-up5k": Device(
        "ice40-up5k", "ice40", "iCE40UP5K-SG48", ("--up5k", "--package", "sg48"),
        {"lut": 5280, "ff": 5280, "bram": 30, "dsp": 8, "spram": 4,
         "bram_bits": 30 * 4096 + 4 * 262144},
        default_mhz=24.0),
    "ice40-hx8k": Device(
        "ice40-hx8k", "ice40", "iCE40HX8K-CT256", ("--hx8k", "--package", "ct256"),
        {"lut": 7680, "ff": 7680, "bram": 32, "dsp": 0, "bram_bits": 32 * 4096},
        default_mhz=48.0),
}


def device(name: "str | Device") -> Device:
    """Return the named device, or raise a ValueError listing the known names."""
    if isinstance(name, Device):
        return name
    try:
        return DEVICES[name]
    except KeyError:
        raise ValueError(f"unknown FPGA device {name!r}; known devices: "
                         f"{sorted(DEVICES)}") from None

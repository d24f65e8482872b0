"""Every number the issues set, as `TargetSpec`s (one place; results.json lists them all).

The paper's headline figures used for comparison rows live here too, with where they
come from, so docs/results.md never invents a number.
"""

from __future__ import annotations

from .core import NOT_RUN, TargetSpec

__all__ = ["TARGETS", "TARGETS_BY_KEY", "PAPER"]

_B = "smartdeal bench"

TARGETS: tuple[TargetSpec, ...] = (
    # Issue 3: decomposition speed (batched vs the per-block loop of the same algorithm).
    TargetSpec("decompose.speedup_conv", "batched vs per-block loop, 512x512x3x3 conv",
               ">=", 20.0, "x", 3, "decompose", f"{_B} --only decompose"),
    TargetSpec("decompose.speedup_fc", "batched vs per-block loop, 4096x4096 FC",
               ">=", 20.0, "x", 3, "decompose", f"{_B} --only decompose"),
    TargetSpec("decompose.us_per_weight_conv", "batched decomposition, 512x512x3x3 conv",
               "<=", 0.15, "us/weight", 3, "decompose", f"{_B} --only decompose"),
    TargetSpec("decompose.us_per_weight_fc", "batched decomposition, 4096x4096 FC",
               "<=", 0.15, "us/weight", 3, "decompose", f"{_B} --only decompose"),
    TargetSpec("decompose.resnet18_seconds", "all ResNet-18-shaped layers (11 M weights)",
               "<", 60.0, "s", 3, "decompose", f"{_B} --only decompose"),
    TargetSpec("decompose.resnet18_peak_gb", "peak memory, ResNet-18-shaped set",
               "<", 3.0, "GB", 3, "decompose", f"{_B} --only decompose"),
    # Issue 3: accuracy at the storage budget, and the report at 2.5 bits/weight.
    TargetSpec("accuracy.drop_points", "dense fp32 minus SD fine-tuned test accuracy, "
               "worst seed (digits CNN)", "<=", 1.0, "points", 3, "accuracy", f"{_B} --only accuracy"),
    TargetSpec("accuracy.bits_per_weight", "SD storage of that model, everything counted",
               "<=", 3.5, "bits/weight", 3, "accuracy", f"{_B} --only accuracy"),
    # Issue 6: RTL on the digits network.
    TargetSpec("rtl.cycles_over_ideal", "worst layer, batch 1 and 4: cycles / (ideal + "
               "pipeline fill) - 1 (SD accelerator)",
               "<=", 0.10, "fraction", 6, "rtl", f"{_B} --only rtl"),
    TargetSpec("rtl.sim_cycles_per_s", "Verilator simulated cycles per second (autonomous)",
               ">=", 500e3, "cycles/s", 6, "rtl", f"{_B} --only rtl"),
    TargetSpec("rtl.weight_memory_ratio", "SD weight memory bits / dense baseline's",
               "<=", 1 / 3, "ratio", 6, "rtl", f"{_B} --only rtl"),
    # Issue 7: FPGA (reused from the latest `make fpga-report`, never run by the bench).
    TargetSpec("fpga.fmax_ecp5_mhz", "Fmax after place-and-route, default preset, ECP5-25k",
               ">=", 100.0, "MHz", 7, "fpga", "make fpga-report", missing_status=NOT_RUN),
    TargetSpec("fpga.rebuild_lut_fraction", "LUTs of decoder + basis array / MAC lanes' LUTs",
               "<=", 0.30, "fraction", 7, "fpga", "make fpga-report", missing_status=NOT_RUN),
    TargetSpec("fpga.rebuild_dsp", "DSP blocks in the rebuild path (ECP5)",
               "<=", 0, "DSP", 7, "fpga", "make fpga-report", missing_status=NOT_RUN),
    # Issue 8: energy, DRAM-streaming scenario, against the paper's headline.
    TargetSpec("energy.ratio_dram", "energy efficiency SD vs dense int8, weights from DRAM "
               "(digits network, RTL counters)", ">=", 2.44, "x", 8, "energy",
               f"{_B} --only energy", kind="goal"),
)

TARGETS_BY_KEY = {t.key: t for t in TARGETS}
if len(TARGETS_BY_KEY) != len(TARGETS):
    raise RuntimeError("duplicate target keys in bench/targets.py")

#: Figures reported by the SmartDeal paper (Chen et al., arXiv 2101.01163), quoted in
#: /work/shared/DESIGN.md §1; None where the paper reports no comparable figure.
PAPER = {
    "energy_efficiency": ("2.44x energy efficiency for inference, on real hardware "
                          "(SmartDeal paper, inference headline)"),
    "energy_efficiency_x": 2.44,
    "ce_bits": 4,          # SmartExchange hardware: 4-bit Ce, 8-bit B, 8-bit activations
    "basis_bits": 8,
    "act_bits": 8,
    "accuracy": "negligible accuracy loss (ResNet-18/34, MobileNetV2 on CIFAR, ImageNet)",
    "training_storage_x": 10.56,
    # The public reference decomposition, measured on this machine kind (DESIGN.md §1).
    "reference_us_per_weight": 2.6,
}

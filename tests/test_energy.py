"""Energy model: per-width rules and hand-checked totals on small counts."""

import dataclasses
import math

import pytest

from golden.energy import (HOROWITZ_45NM, RTL_COUNTERS, AccelCounts, EnergyTable,
                           counts_from_rtl, dense_widths, energy, energy_ratio,
                           network_counts, rebuild_ops_per_row, sd_widths)
from hw.config import SDConfig

T = HOROWITZ_45NM


def test_table_reproduces_published_points():
    assert T.add_pj(8) == pytest.approx(0.03)
    assert T.add_pj(32) == pytest.approx(0.1)
    assert T.mult_pj(8, 8) == pytest.approx(0.2)
    # Product-of-widths rule stays within 5 % of the table's 32-bit multiply.
    assert T.mult_pj(32, 32) == pytest.approx(T.mult32_pj, rel=0.05)
    assert T.sram_pj(32) == pytest.approx(5.0)
    assert T.dram_pj(32) == pytest.approx(640.0)


def test_width_rules_are_monotonic_and_shift_is_add_class():
    adds = [T.add_pj(n) for n in range(1, 65)]
    assert all(a < b for a, b in zip(adds, adds[1:]))
    assert T.add_pj(16) == pytest.approx(0.03 + 8 * 0.07 / 24)
    assert T.shift_pj(15) == T.add_pj(15)
    assert T.mult_pj(17, 8) == pytest.approx(0.2 * 17 / 8)


def test_hand_checked_energy_dram_and_onchip():
    # 10 words of 64 bits, 4 basis words of 72 bits, 3 quant words of 54 bits,
    # 100 act reads of 24 bits,
    # 8 output writes of 8 bits, 30 shifts to 15 bits, 20 adds of 17 bits,
    # 300 MACs of 17x8 bits into 32, 8 requants with 16-bit multipliers.
    c = AccelCounts(weight_words=10, weight_word_bits=64, basis_words=4, basis_word_bits=72,
                    quant_reads=3, quant_word_bits=54, act_reads=100, act_word_bits=24, out_writes=8, out_word_bits=8,
                    shifts=30, shift_bits=15, adds=20, add_bits=17, macs=300,
                    mac_weight_bits=17, act_bits=8, acc_bits=32, requants=8, mult_bits=16)
    bits = 10 * 64 + 4 * 72 + 3 * 54
    dram = energy(c, "dram")
    assert dram.weight_memory_pj == pytest.approx(bits * 20.0)
    assert dram.activation_pj == pytest.approx(100 * 24 * 10 / 64)
    assert dram.output_pj == pytest.approx(8 * 8 * 10 / 64)
    add15 = 0.03 + 7 * 0.07 / 24
    add17 = 0.03 + 9 * 0.07 / 24
    assert dram.rebuild_pj == pytest.approx(30 * add15 + 20 * add17)
    assert dram.mac_pj == pytest.approx(300 * (0.2 * 17 * 8 / 64 + 0.1))
    assert dram.requant_pj == pytest.approx(8 * (0.2 * 32 * 16 / 64 + 0.1))
    onchip = energy(c, "onchip")
    assert onchip.weight_memory_pj == pytest.approx(bits * 10 / 64)
    assert onchip.total_pj - onchip.weight_memory_pj == pytest.approx(
        dram.total_pj - dram.weight_memory_pj)
    assert dram.as_dict()["total_pj"] == pytest.approx(dram.total_pj)


def test_ratio_is_dense_over_sd():
    dense = AccelCounts(weight_words=2, weight_word_bits=32, act_reads=0, act_word_bits=24,
                        macs=0, mac_weight_bits=8, act_bits=8, acc_bits=32)
    sd = dataclasses.replace(dense, weight_words=1)
    assert energy_ratio(dense, sd, "dram") == pytest.approx(2.0)
    assert energy_ratio(sd, dense, "onchip") == pytest.approx(0.5)


def test_network_sum_and_width_mismatch():
    a = AccelCounts(weight_words=1, weight_word_bits=64, act_reads=2, act_word_bits=24,
                    macs=3, mac_weight_bits=8, act_bits=8, acc_bits=32, name="a")
    b = dataclasses.replace(a, weight_words=5, name="b")
    total = network_counts([a, b])
    assert (total.weight_words, total.act_reads, total.macs) == (6, 4, 6)
    assert energy(total).total_pj == pytest.approx(energy(a).total_pj + energy(b).total_pj)
    with pytest.raises(ValueError, match="weight_word_bits differs"):
        network_counts([a, dataclasses.replace(b, weight_word_bits=32)])
    with pytest.raises(ValueError, match="at least one layer"):
        network_counts([])


def test_rtl_counters_map_to_events_with_config_widths():
    cfg = SDConfig(lanes=8)              # 8 lanes, S = 3, one term
    rtl = {"weight_reads": 10, "basis_reads": 4, "quant_reads": 2, "act_reads": 30,
           "act_writes": 5, "rows": 7, "mac_ops": 100, "results": 3, "stalls": 9}
    sd = counts_from_rtl(rtl, cfg, "sd", name="fc")
    assert (sd.weight_words, sd.weight_word_bits) == (10, cfg.ce_word_width)
    assert (sd.basis_words, sd.basis_word_bits) == (4, cfg.basis_word_bits)
    assert (sd.quant_reads, sd.quant_word_bits) == (2, cfg.quant_word_bits)
    assert (sd.act_reads, sd.act_word_bits) == (30, 8 * 8)
    assert sd.out_writes == 5
    assert sd.macs == 100 * 8 * 3 and sd.mac_weight_bits == cfg.rebuilt_weight_bits
    assert sd.requants == 3 * 8
    # per rebuilt row: 24 weights x 3 shifts; 24 x (2 tree adds + 1 carry incrementer)
    assert rebuild_ops_per_row(cfg) == (72, 72)
    assert (sd.shifts, sd.adds) == (7 * 72, 7 * 72)
    dense = counts_from_rtl(dict(rtl, basis_reads=0), cfg, "dense", name="fc")
    assert dense.weight_word_bits == 8 * 3 * 8 and dense.mac_weight_bits == 8
    assert (dense.shifts, dense.adds, dense.basis_words) == (0, 0, 0)
    assert dense.weight_bits_read == 10 * 192 + 2 * cfg.quant_word_bits
    with pytest.raises(ValueError, match="basis reads"):
        counts_from_rtl(rtl, cfg, "dense")
    with pytest.raises(ValueError, match=r"\['rows'\] are missing"):
        counts_from_rtl({k: 1 for k in RTL_COUNTERS if k != "rows"}, cfg, "sd")
    with pytest.raises(ValueError, match="kind must be"):
        counts_from_rtl(rtl, cfg, "tpu")
    assert sd_widths(cfg)["shift_bits"] == cfg.shifted_bits
    assert dense_widths(cfg)["weight_word_bits"] == 192


@pytest.mark.parametrize("bad, exc", [({"macs": -1}, ValueError), ({"macs": 1.5}, TypeError),
                                      ({"act_bits": 0}, ValueError)])
def test_bad_counts_are_rejected(bad, exc):
    base = dict(weight_words=1, weight_word_bits=64, act_reads=2, act_word_bits=24, macs=3,
                mac_weight_bits=8, act_bits=8, acc_bits=32)
    with pytest.raises(exc):
        AccelCounts(**{**base, **bad})


def test_bad_table_and_scenario():
    with pytest.raises(ValueError, match="dram64_pj"):
        EnergyTable(dram64_pj=math.nan)
    c = AccelCounts(weight_words=1, weight_word_bits=64, act_reads=2, act_word_bits=24,
                    macs=3, mac_weight_bits=8, act_bits=8, acc_bits=32)
    with pytest.raises(ValueError, match="unknown energy scenario 'hbm'"):
        energy(c, "hbm")

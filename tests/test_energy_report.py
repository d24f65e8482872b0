"""The energy section on synthetic RTL counters: per-layer and network ratios as the
energy model gives them by hand, the headline target, and the sum-of-layers check."""

import sys
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:  # `bench/` is a top-level folder
    sys.path.insert(0, str(_REPO))

from bench import energy_report  # noqa: E402
from bench.context import Context  # noqa: E402
from golden.energy import counts_from_rtl, energy  # noqa: E402
from hw.config import SDConfig  # noqa: E402


def _counters(weight, basis, rows, macs):
    return {"weight_reads": weight, "basis_reads": basis, "quant_reads": 2, "act_reads": 10,
            "act_writes": 2, "rows": rows, "mac_ops": macs, "results": 2, "stalls": 0}


def _runs(layer_counters: dict, batches=(1,)):
    runs = {}
    for b in batches:
        for name, c in layer_counters.items():
            runs[f"{name}_b{b}"] = {"counters": c}
        net = {k: sum(c[k] for c in layer_counters.values())
               for k in next(iter(layer_counters.values()))}
        runs[f"net_b{b}"] = {"counters": net}
    return runs


def test_energy_section_prices_rtl_counters(tmp_path):
    cfg = SDConfig()
    sd = {"conv": _counters(4, 2, 10, 100), "fc": _counters(2, 1, 3, 20)}
    dense = {"conv": _counters(9, 0, 20, 200), "fc": _counters(4, 0, 6, 40)}
    ctx = Context(img_dir=tmp_path, progress=False)
    ctx.shared["rtl_runs"] = {"config": cfg.to_dict(), "layers": ["conv", "fc"],
                              "batches": [1],
                              "kinds": {"sd": {"runs": _runs(sd)},
                                        "dense": {"runs": _runs(dense)}}}
    out = energy_report.run(ctx)
    b1 = out.values["batches"][1]
    for name in ("conv", "fc"):
        want = (energy(counts_from_rtl(dense[name], cfg, "dense")).total_pj
                / energy(counts_from_rtl(sd[name], cfg, "sd")).total_pj)
        assert b1["layers"][name]["ratio_dram"] == pytest.approx(want)
    net_sd = sum(energy(counts_from_rtl(c, cfg, "sd")).total_pj for c in sd.values())
    net_dense = sum(energy(counts_from_rtl(c, cfg, "dense")).total_pj for c in dense.values())
    assert out.measured["energy.ratio_dram"] == pytest.approx(net_dense / net_sd)
    assert out.values["network"]["ratio_onchip"] == pytest.approx(
        b1["network"]["ratio_onchip"])
    assert b1["sd_sum_of_layers_vs_network"]["weight_reads"] == (6, 6)
    assert all(Path(p).is_file() for p in out.plots)
    assert out.tables[0]["rows"][-1][0] == "network"


def test_rtl_section_on_synthetic_runs(tmp_path, monkeypatch):
    from bench import rtl
    from hw.program import ACTIVATION_FILL, first_layer_fill
    cfg = SDConfig()
    fill0 = ACTIVATION_FILL + first_layer_fill(cfg)

    def run(cycles, ideal):
        return {"cycles": [sum(cycles) + 20], "layer_cycles": cycles, "ideal": ideal,
                "counters": _counters(1, 1, 1, 1), "compared": 10, "batch": 1, "items": 1}
    ideal = [100, 50]
    sd_run = run([100 + fill0 + 5, 50 + ACTIVATION_FILL + 10], ideal)   # 5%, 16.4%
    dense_run = run([100 + fill0, 50 + ACTIVATION_FILL], ideal)
    ctx = Context(img_dir=tmp_path, progress=False)
    ctx.shared["rtl_runs"] = {
        "config": cfg.to_dict(), "source": "test", "images": 1, "layers": ["a", "b"],
        "batches": [1, 4], "kinds": {
            "sd": {"runs": {"net_b1": sd_run, "net_b4": sd_run}, "wall_s": 1.0,
                   "compared": 20, "weight_bits": {"ce": 60, "quant": 10, "total": 70}},
            "dense": {"runs": {"net_b1": dense_run, "net_b4": dense_run}, "wall_s": 1.0,
                      "compared": 20, "weight_bits": {"dense": 200, "quant": 10,
                                                      "total": 210}}},
        # the time-multiplexed rebuild: layer b rebuild-bound at batch 1
        "rebuild_variant": 4,
        "rebuild_runs": {"net_b1": run([100 + fill0 + 5, 200], ideal),
                         "net_b4": {**sd_run, "batch": 4}}}
    monkeypatch.setattr(rtl, "sim_speed", lambda ctx: None)
    out = rtl.run(ctx)
    variant = out.values["rebuild_variant"]
    assert variant["rebuild_cycles"] == 4
    assert variant["batches"][1]["vs_full_rate"] == pytest.approx(
        (100 + fill0 + 5 + 200 + 20) / sum(sd_run["cycles"]))
    assert variant["batches"][4]["vs_full_rate"] == pytest.approx(1.0)
    assert any("rebuild_cycles=4" in n and "batch 1" in n for n in out.notes)
    assert out.measured["rtl.cycles_over_ideal"] == pytest.approx(10 / (50 + ACTIVATION_FILL))
    assert out.measured["rtl.weight_memory_ratio"] == pytest.approx(70 / 210)
    assert out.values["weight_memory_ratio_no_quant"] == pytest.approx(60 / 200)
    assert "rtl.sim_cycles_per_s" in out.unavailable

"""`smartdeal verilog` build folder: vendor scripts, FuseSoC cores, manifest, README.

One build is generated (a small configuration that holds the digits network, weights from
a seeded SD conversion of the architecture, so the test does not depend on training).
The Vivado/Quartus scripts cannot run here: the tests check that every file they
reference exists in the folder and that they were generated for this configuration.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

from fpga.vendor import referenced_files
from hw.config import PRESETS

#: tiny, with room for the digits network (2 lanes -> many groups)
CONFIG = PRESETS["tiny"].replace(ce_depth=4096, quant_depth=128)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from golden.layers import SDConv2d, SDLinear
    from golden.models import DigitsCNN, save_checkpoint

    torch.manual_seed(0)
    model = DigitsCNN()
    for name in ("conv1", "conv2", "conv3"):
        setattr(model, name, SDConv2d.from_dense(getattr(model, name), CONFIG))
    model.fc = SDLinear.from_dense(model.fc, CONFIG)
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "net.pt", model, CONFIG)


@pytest.fixture(scope="module")
def build(tmp_path_factory, checkpoint):
    from scripts.verilog import write_build
    return write_build(CONFIG, tmp_path_factory.mktemp("build") / "out", label="t",
                       checkpoint=checkpoint, clock_mhz=125.0, progress=False)


def test_vendor_scripts_reference_only_files_of_the_folder(build):
    root = Path(build.root)
    for tool, ext in (("vivado", "xdc"), ("quartus", "sdc")):
        for script, b in (("build.tcl", build.sd), ("build_dense.tcl", build.dense)):
            text = (root / tool / script).read_text()
            refs = referenced_files(text, tool)
            missing = [r for r in refs if not (root / r).is_file()]
            assert not missing, f"{tool}/{script} references missing files {missing}"
            # the Verilog, the $readmemh images and the constraint are all referenced
            assert set(b.verilog) <= set(refs)
            assert set(b.init_files) <= set(refs)
            assert f"{tool}/{b.top}.{ext}" in refs
            assert f"top module {b.top}." in text and CONFIG.summary() in text
    viv = (root / "vivado" / "build.tcl").read_text()
    assert {"mem/ce.coe", "mem/basis.coe", "mem/ce.mem"} <= set(referenced_files(viv, "vivado"))
    assert "report_utilization" in viv and "report_timing_summary" in viv
    assert "launch_runs impl_1" in viv and "set_property top sd_accel" in viv
    qts = (root / "quartus" / "build.tcl").read_text()
    assert {"mem/ce.mif", "mem/quant.mif"} <= set(referenced_files(qts, "quartus"))
    assert "TOP_LEVEL_ENTITY sd_accel" in qts and "execute_flow -compile" in qts
    # every port but the clock becomes a virtual pin
    virtual = set(re.findall(r"VIRTUAL_PIN ON -to \{?(\w+)", qts))
    assert virtual == {n for n, _, _ in build.sd.ports} - {"clk"}
    # 125 MHz constraint on the clock port
    assert "create_clock -period 8.000 -name clk [get_ports clk]" in \
        (root / "vivado" / "sd_accel.xdc").read_text()
    assert "-period 8.000" in (root / "quartus" / "sd_accel.sdc").read_text()


def test_fusesoc_cores_parse_and_list_existing_files(build):
    root = Path(build.root)
    for b in (build.sd, build.dense):
        text = (root / f"{b.name}.core").read_text()
        first, body = text.split("\n", 1)
        assert first == "CAPI=2:"
        core = yaml.safe_load(body)
        assert core["name"] == f"smartdeal:ip:{b.name}:0.1.0"
        for target in ("default", "lint", "synth_ecp5", "synth_vivado"):
            assert core["targets"][target]["toplevel"] == b.top
            for fs in core["targets"][target]["filesets"]:
                assert fs in core["filesets"], f"target {target} uses unknown fileset {fs}"
        for fs in core["filesets"].values():
            for entry in fs["files"]:
                path = next(iter(entry)) if isinstance(entry, dict) else entry
                assert (root / path).is_file(), f"{b.name}.core lists missing {path}"
        mem = core["filesets"]["mem_init"]["files"]
        assert [next(iter(e.values()))["copyto"] for e in mem] == \
            [Path(f).name for f in b.init_files]


def test_manifest_readme_and_images_match_the_configuration(build):
    root = Path(build.root)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["config"] == CONFIG.to_dict()
    assert manifest["tops"]["sd"]["module"] == "sd_accel"
    assert manifest["tops"]["dense"]["module"] == "sd_dense_accel"
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == digest, rel
    # the Verilog reads exactly the images the build lists, and they exist in every format
    for b, stems in ((build.sd, ("ce", "basis", "quant")),
                     (build.dense, ("dense_weights", "dense_quant"))):
        text = (root / b.verilog[0]).read_text()
        named = set(re.findall(r'INIT_FILE\s*\(\s*"([^"]+)"', text))
        assert named == {Path(f).name for f in b.init_files}
        for stem in stems:
            for suffix in (".hex", ".memb", ".coe", ".mem", ".mif", ".bin", ".npz"):
                assert (root / b.init_dir / f"{stem}{suffix}").is_file(), stem + suffix
    ports = {p["name"]: p["width"] for p in manifest["tops"]["sd"]["ports"]}
    assert ports["s_axil_awaddr"] == 16 and ports["s_axis_tdata"] == 32 and ports["clk"] == 1
    readme = (root / "README.md").read_text()
    for needle in ("`sd_accel`", "`sd_dense_accel`", "`rst`", "`CTRL`", "$readmemh",
                   CONFIG.summary(), "updatemem"):
        assert needle in readme, needle
    st = manifest["network"]["storage"]
    assert st["sd_bits"] < st["dense_bits"] and st["ratio"] == pytest.approx(
        st["sd_bits"] / st["dense_bits"])


def test_network_that_does_not_fit_is_refused(tmp_path, checkpoint, capsys):
    from scripts import cli
    rc = cli.main(["verilog", "--config", "tiny", "--out", str(tmp_path / "v"),
                   "--checkpoint", str(checkpoint)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "ce_depth=512" in err and "ce memory" in err

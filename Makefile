# SmartDeal accelerator toolchain.  Every target creates the virtual environment first.
# A fresh clone needs nothing else:  make demo  /  make test

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
JOBS   ?= auto
OUT    ?= build
PRESET ?= default

.PHONY: all venv test sim verilog demo bench bench-quick fpga-report clean help

all: test

help:
	@echo "make demo         run the main job on the bundled digits network"
	@echo "make test         every test (Python + RTL regression)"
	@echo "make sim          RTL regression only (cocotb + Verilator)"
	@echo "make verilog      Verilog + memory images for PRESET=$(PRESET) into $(OUT)/verilog"
	@echo "make bench        benchmarks -> bench/results.json, docs/results.md"
	@echo "make bench-quick  reduced benchmark run"
	@echo "make fpga-report  open-source synthesis / place-and-route reports"
	@echo "make clean        remove build outputs (keeps .venv)"

# torch is installed first and pinned: its CPU wheel is on these machines, while an
# unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed, found " + sys.version' 
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n $(JOBS)

sim: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -m sim

verilog: $(STAMP)
	$(VENV)/bin/smartdeal verilog --config $(PRESET) --out $(OUT)/verilog/$(PRESET)

demo: $(STAMP)
	$(VENV)/bin/smartdeal demo --out $(OUT)/demo

bench: $(STAMP)
	$(VENV)/bin/smartdeal bench

bench-quick: $(STAMP)
	$(VENV)/bin/smartdeal bench --quick

fpga-report: $(STAMP)
	$(VENV)/bin/smartdeal fpga-report

clean:
	rm -rf $(OUT) sim_build .pytest_cache .hypothesis
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

# Two commands on a fresh machine:
#   make demo   -- the main job on the embedded default data (creates .venv when missing)
#   make test   -- lint (ruff, import layers) and the test suite (what CI runs through .ci/run)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch goes in first, so that nothing later pulls CUDA wheels.
# Elsewhere, point PIP_EXTRA_INDEX_URL at PyTorch's CPU wheel index, or set TORCH_SPEC.
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= outputs/demo

.PHONY: demo test test-all lint bench fidelity venv clean browser

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[sim,dev,cluster,stream]"
	touch $@

demo: venv
	$(PY) -m speckle_embed demo hydra.run.dir=$(DEMO_DIR)
	@echo "figure: $(DEMO_DIR)/demo.png   numbers: $(DEMO_DIR)/results.json"

# The monitor page's browser test needs Chromium + chromedriver (Debian packages); installed here
# when missing and when we may (root), so that CI on a fresh machine runs it instead of skipping it.
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	  else echo "note: chromium/chromedriver missing and not root: the monitor page's browser test will be skipped"; fi; \
	fi

# ruff (pyflakes rules) and the import-layer contracts of pyproject.toml first: both take ~1 s
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: lint browser
	$(PY) -m pytest -q

test-all: lint
	$(PY) -m pytest -q -m "slow or not slow"

bench: venv
	$(PY) benchmarks/bench_simulate.py
	$(PY) benchmarks/bench_index.py

fidelity: venv
	$(PY) scripts/check_fidelity.py --out reports/fidelity.json

clean:
	rm -rf outputs multirun .pytest_cache

# Each target installs what it needs first: a fresh clone needs nothing but python3 and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Where torch comes from: pip's own choice by default (on Linux, PyPI's wheel bundles CUDA);
# `make clean run TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes PyTorch's CPU build
# (the index matters only when .venv is created).
TORCH_INDEX ?=

.PHONY: install test fuzz lint format bench bench-core run clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned, so that lrprobe's range never makes pip pick a newer build.
	$(PY) -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e '.[worker,service,hf,dev]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest

# The hostile-input fuzzer with a long random budget (`make test` runs 25 fixed examples per
# target); a failure prints the smallest input that breaks the service.
fuzz: install
	LRPROBE_FUZZ_EXAMPLES=1000 $(PY) -m pytest tests/reliability/test_fuzz_inputs.py -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) -m mypy

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) -m bench.quality

bench-core: install
	$(PY) -m bench.core

run: install
	$(VENV)/bin/lrprobe serve

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

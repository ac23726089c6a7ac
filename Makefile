# Two entry points: `make demo` (the whole experiment, offline, on the bundled
# tiny model and data) and `make test`. Both build .venv first.
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

test: venv
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check src tests bench

.PHONY: venv demo test lint

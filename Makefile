PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-unit lint format clean

$(BIN)/bookrec: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[worker,dev]'
	touch $(BIN)/bookrec

setup: $(BIN)/bookrec  ## create .venv and install bookrec with its test tools

demo: setup  ## synthesise data, train, run the service end to end
	$(BIN)/bookrec demo

test: setup  ## the whole test suite (unit + integration against the real Redis)
	$(BIN)/python -m pytest -q

test-unit: setup
	$(BIN)/python -m pytest -q -m "not integration"

lint: setup  ## ruff: lint rules and the format, as CI checks them
	$(BIN)/ruff check bookrec tests
	$(BIN)/ruff format --check bookrec tests

format: setup  ## ruff: fix what can be fixed and reformat
	$(BIN)/ruff check --fix bookrec tests
	$(BIN)/ruff format bookrec tests

clean:
	rm -rf var build *.egg-info

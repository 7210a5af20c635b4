# Two commands for a fresh machine: `make run` (the whole stack on real images) and `make test` (the suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv run test lint clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt shared/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps --editable shared
	touch $@

run: venv
	$(BIN)/nearcaipi up

test: venv
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/python -m ruff check shared services tests

clean:
	rm -rf $(VENV) var

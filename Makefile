# Every target creates .venv when missing and installs the project into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test check soak stress bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/tradebot up --demo

test: check
	$(BIN)/pytest -m "not soak"

# lint and type checks over the code that runs (bot/, processes/); make test runs them first
check: $(STAMP)
	$(BIN)/ruff check bot processes
	$(BIN)/mypy

soak: $(STAMP)
	$(BIN)/pytest -m soak

# the suite three times in a row while a second copy of it runs beside it (about 10 minutes)
stress:
	tools/stress.sh 3

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) var .pytest_cache

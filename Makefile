# usage-agent: the developer's entry points.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck unit demo bench clean crash-states

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check agent tests bench
	$(BIN)/ruff format --check agent tests bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict agent

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck unit

# Release check: the power-cut crash states with four times the sample of `make test`.
crash-states: $(STAMP)
	CRASH_STATES_PER_POINT=16 $(BIN)/pytest -q -s tests/spool/test_power_cut.py

demo: $(STAMP)
	$(BIN)/python -m agent.demo

# The HTTP benchmarks drive wrk (Debian: apt-get install wrk).
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/codec.py
	$(BIN)/python bench/spool.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/drain.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

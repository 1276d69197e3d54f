# usage-agent: the developer's entry points.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TOOLS := $(VENV)/.tools

.PHONY: test lint typecheck unit demo bench clean crash-states lock

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

# systemd's tools and promtool, for the tests of the units and of the alert rules: installed
# with apt-get where this runs as root on Debian or Ubuntu; elsewhere those tests skip and say why.
$(TOOLS): | $(STAMP)
	@if ! command -v systemd-analyze >/dev/null || ! command -v promtool >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends systemd prometheus >/dev/null) \
	    || echo "could not install systemd and prometheus: their tests will skip"; \
	  else echo "systemd-analyze or promtool missing: their tests will skip"; fi; fi
	touch $(TOOLS)

unit: $(STAMP) $(TOOLS)
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
	$(BIN)/python bench/network.py
	$(BIN)/python bench/outage.py
	$(BIN)/python bench/rollup.py
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/idle.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# deploy/requirements.lock: the wheel's dependencies, pinned with hashes (for the Dockerfile).
lock: $(STAMP)
	rm -rf build/lock && mkdir -p build/lock
	$(BIN)/pip install --quiet pip-tools
	$(BIN)/pip wheel --quiet --no-deps . -w build/lock
	echo "paigo-usage-agent @ file://$$(ls $(CURDIR)/build/lock/*.whl)" > build/lock/req.in
	$(BIN)/pip-compile --quiet --generate-hashes --strip-extras --no-header --no-emit-index-url \
	  --no-emit-find-links --unsafe-package paigo-usage-agent -o build/lock/req.txt build/lock/req.in
	{ sed -n '1,3p' deploy/requirements.lock; sed '/^# WARNING/,$$d' build/lock/req.txt | sed -e :a -e '/^\n*$$/{$$d;N;ba' -e '}'; } > build/lock/new && mv build/lock/new deploy/requirements.lock

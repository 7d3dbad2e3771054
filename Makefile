# Two commands on a fresh machine: `make serve` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SERVE_ARGS ?=

.PHONY: serve test test-busy lint bench bench-micro bench-memory bench-impair clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/python -m udpchat serve $(SERVE_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

# The whole suite three runs in a row while two busy loops (bounded to 15 minutes) compete for
# the cores: the tests wait for state, never for time, and must hold on a busy machine.
test-busy: lint
	@busy=""; for core in 1 2; do timeout 900 sh -c 'while :; do :; done' & busy="$$busy $$!"; done; \
	status=0; for run in 1 2 3; do echo "run $$run of 3, two busy loops"; \
	$(BIN)/python -m pytest -q || status=1; done; kill $$busy 2>/dev/null; exit $$status

# Designs side by side in one run, trials interleaved and repeated (medians and spreads), then
# the per-stage micro-benchmark and handler latency. The C generator is built on first use.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.micro
	$(BIN)/python -m benchmarks.latency

bench-micro: $(STAMP)
	$(BIN)/python -m benchmarks.micro

# Peak RSS under the worst traffic for memory, against the bound SECURITY.md states.
bench-memory: $(STAMP)
	$(BIN)/python -m benchmarks.memory

# udpchat impair beside the server alone: throughput with loss and duplication, delay precision,
# peak RSS against the bound SECURITY.md states (trials interleaved, medians and spreads).
bench-impair: $(STAMP)
	$(BIN)/python -m benchmarks.impair $(BENCH_IMPAIR_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache benchmarks/blast

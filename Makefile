# Shortcuts for the commands the README and bench/README.md describe.
PYTHON ?= .venv/bin/python

.PHONY: setup test bench bench-all bench-quick

setup:  ## the virtual environment, with the test extras
	bash scripts/setup.sh

test:  ## the whole suite, as CI runs it
	$(PYTHON) -m pytest

bench:  ## the daily-loop benchmark: a 2,000-file repo, medians, ratios, PASS/FAIL
	$(PYTHON) bench/bench_loop.py --check

bench-all: bench  ## and the runtime, prepare, MCP, hooks, cache-remote and published-port benchmarks
	$(PYTHON) bench/bench_runtime.py --check
	$(PYTHON) bench/bench_prepare.py --check
	$(PYTHON) bench/bench_mcp.py --check
	$(PYTHON) bench/bench_hooks.py --check
	$(PYTHON) bench/bench_cache.py --check
	$(PYTHON) bench/bench_ports.py --check

bench-quick:  ## every benchmark small and fast, as the CI smoke tests run them
	$(PYTHON) bench/bench_loop.py --quick
	$(PYTHON) bench/bench_runtime.py --quick
	$(PYTHON) bench/bench_mcp.py --quick
	$(PYTHON) bench/bench_hooks.py --quick
	$(PYTHON) bench/bench_cache.py --quick
	$(PYTHON) bench/bench_ports.py --quick

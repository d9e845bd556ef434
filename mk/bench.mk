# Benchmarks and the fault suite (helper F's area): bench/*, tests/faults/, tests/bench/.
# `make bench` and `make test-faults` live in the main Makefile; these are the extra verbs.
BENCH_SECTIONS ?= platform,freshness

.PHONY: bench-quick bench-only test-bench

bench-quick: install ## benchmark smoke run: every section, tiny sizes (figures indicative only; a few minutes)
	$(PY) -m bench.run --quick

bench-only: install ## selected benchmark sections at full size: make bench-only BENCH_SECTIONS=platform,freshness
	$(PY) -m bench.run --only $(BENCH_SECTIONS)

test-bench: install ## the benchmark smoke tests (the default-suite one + the slow all-sections one)
	$(VENV)/bin/pytest tests/bench -q $(PYTEST_ARGS)

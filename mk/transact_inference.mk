# TransAct serving inference (helper C1's area): the inference benchmark on its own.
# `make bench` (bench.run) includes the same figures; this runs just them. THREADS = torch threads.
# OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning (must be set before torch loads);
# on cores shared with other work, 2 threads without it were measured 2-6x slower than with it.
THREADS ?= 2

.PHONY: bench-transact test-transact-model

bench-transact: ## TransAct encoder + 1 user x 100/500/1000 candidate scoring vs the official forward (Markdown, runs/bench/transact_inference.json)
	mkdir -p runs/bench
	OMP_WAIT_POLICY=PASSIVE $(PY) -m bench.transact_inference --threads $(THREADS) --json runs/bench/transact_inference.json

test-transact-model: ## TransAct model + fast-inference parity tests (fast, no broker)
	$(VENV)/bin/pytest tests/transact/test_model.py tests/transact/test_inference.py -q

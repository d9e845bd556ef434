# TransAct serving inference (helper C1's area): the inference benchmark on its own.
# `make bench` (bench.run) includes the same figures; this runs just them. THREADS = torch threads.
THREADS ?= 2

.PHONY: bench-transact test-transact-model

bench-transact: ## TransAct encoder + 1 user x 100/500/1000 candidate scoring vs the official forward (Markdown, runs/bench/transact_inference.json)
	mkdir -p runs/bench
	$(PY) -m bench.transact_inference --threads $(THREADS) --json runs/bench/transact_inference.json

test-transact-model: ## TransAct model + fast-inference parity tests (fast, no broker)
	$(VENV)/bin/pytest tests/transact/test_model.py tests/transact/test_inference.py -q

# Hybrid features in the worker (helper H's area): streams/models.py, streams/realtime.py, streams/daily.py,
# streams/hybrid.py and their tests.

.PHONY: test-hybrid

test-hybrid: ## hybrid features: model loading, realtime store/encoder, daily records + the e2e run on real Kafka (~2 min)
	$(VENV)/bin/pytest tests/streams/test_hybrid.py tests/streams/test_hybrid_e2e.py -q

# Feature API targets (helper B2's area): streams/api.py, streams/features.py and their tests.

.PHONY: test-api

test-api: ## feature API: pure tests + HTTP tests against real workers on a real Kafka broker (~1 min)
	$(VENV)/bin/pytest tests/streams/test_features.py tests/streams/test_api_validation.py \
	  tests/streams/test_api_scoring.py tests/streams/test_api.py -q

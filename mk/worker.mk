# streaming core (helper B1): the Faust worker
.PHONY: worker test-worker bench-platform

worker: install ## run one stream worker on ACTIONSTREAM_KAFKA_BOOTSTRAP_SERVERS (port 6066, state .actionstream/worker-6066)
	$(VENV)/bin/actionstream worker

test-worker: install ## worker tests: units, metrics, and the real-Kafka stream/recovery/rebalance tests
	$(VENV)/bin/pytest tests/streams/test_metrics.py tests/streams/test_worker_units.py tests/streams/test_worker_stream.py tests/streams/test_worker_recovery.py $(PYTEST_ARGS)

bench-platform: install ## one worker end to end vs the decode-only Faust ceiling (100k events, own broker)
	$(PY) -m bench.platform_throughput --events 100000 --users 10000 --baseline

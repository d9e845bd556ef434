# Foundation targets (helper A's area): producer, simulator, topics and their tests.
# KAFKA_BOOTSTRAP defaults to the broker of `make up` (127.0.0.1:9092); SIM_* size the synthetic world.
KAFKA_BOOTSTRAP ?= 127.0.0.1:9092
SIM_USERS ?= 10000
SIM_ITEMS ?= 20000
SIM_DAYS ?= 14
SIM_EVENTS ?= 500000
SIM_SEED ?= 0
SIM_DATA_DIR ?= .actionstream/data

.PHONY: topics simulate sim-data test-foundation

topics: ## create the platform topics on $(KAFKA_BOOTSTRAP) (shared partition count, compacted embeddings)
	$(VENV)/bin/actionstream topics create --bootstrap $(KAFKA_BOOTSTRAP)

simulate: ## publish ~1000 synthetic events/s for 60 s to $(KAFKA_BOOTSTRAP)
	$(VENV)/bin/actionstream simulate --bootstrap $(KAFKA_BOOTSTRAP) --rate 1000 --duration 60 --users $(SIM_USERS) --items $(SIM_ITEMS) --seed $(SIM_SEED)

sim-data: ## write $(SIM_EVENTS) synthetic events over $(SIM_DAYS) days + item vectors under $(SIM_DATA_DIR)/
	mkdir -p $(SIM_DATA_DIR)
	$(VENV)/bin/actionstream simulate --out $(SIM_DATA_DIR)/synthetic.jsonl --items-out $(SIM_DATA_DIR)/items.jsonl \
	  --days $(SIM_DAYS) --events $(SIM_EVENTS) --users $(SIM_USERS) --items $(SIM_ITEMS) --seed $(SIM_SEED)

test-foundation: ## events, sequence, settings, archive, simulator, producer, topics, broker, CLI tests
	$(VENV)/bin/pytest tests/streams/test_events.py tests/streams/test_sequence.py tests/streams/test_settings.py \
	  tests/streams/test_archive.py tests/streams/test_simulate.py tests/streams/test_producer.py \
	  tests/streams/test_topics.py tests/streams/test_broker.py tests/streams/test_cli.py -q

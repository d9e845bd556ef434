# actionstream: `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
KAFKA_LIB := deploy/kafka/lib
PYTEST_ARGS ?=
# idle OpenMP threads sleep instead of spinning on the 2 shared cores (see transact/inference.py)
export OMP_WAIT_POLICY ?= PASSIVE

-include mk/*.mk

.PHONY: help install kafka-jars up down demo test test-slow test-faults test-ops lint typecheck bench clean

help: ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	$(PIP) install -q -e ".[dev]"
	touch $@

$(KAFKA_LIB)/.resolved: deploy/kafka/pom.xml
	mvn -q -B -f deploy/kafka/pom.xml dependency:copy-dependencies -DoutputDirectory=lib -DincludeScope=runtime
	touch $@

kafka-jars: $(KAFKA_LIB)/.resolved ## resolve the Apache Kafka 3.9 jars from Maven Central into deploy/kafka/lib

install: $(VENV)/.installed kafka-jars ## create .venv, install the package + dev tools, resolve Kafka jars

up: install ## run the local platform (Kafka broker, topics, worker, Prometheus) until Ctrl-C
	$(VENV)/bin/actionstream up

test: install ## the default test suite (unit + integration against real Kafka)
	$(VENV)/bin/pytest -m "not slow and not faults" $(PYTEST_ARGS)

test-slow: install ## long-running suites (full training runs, big experiments)
	$(VENV)/bin/pytest -m slow $(PYTEST_ARGS)

test-faults: install ## the fault suite: kill -9, lost dirs, rebalances, broker outage, duplicates
	$(VENV)/bin/pytest -m faults $(PYTEST_ARGS)

lint: install ## ruff + mypy
	$(VENV)/bin/ruff check streams transact embeddings tests bench
	$(VENV)/bin/mypy streams transact embeddings

bench: install ## benchmarks: prints a Markdown report, saves JSON under runs/bench/
	$(PY) -m bench.run

clean: ## remove local state, caches and build outputs (keeps .venv and the Kafka jars)
	rm -rf .actionstream runs .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

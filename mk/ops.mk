# Operations targets (helper E's area): Prometheus tooling, local stack helpers, ops tests.
# `make up` (main Makefile) runs `actionstream up`; state lives under $(STACK_DIR) (default .actionstream/;
# `STACK_DIR=/tmp/x make up` / `make demo` / `make down` all use it: exported as ACTIONSTREAM_STACK_DIR).
# The first `make up` trains small models into $(STACK_DIR)/models/ (~1 min), later ones reuse them.
STACK_DIR ?= $(or $(ACTIONSTREAM_STACK_DIR),.actionstream)
STACK_DIR := $(STACK_DIR)
export ACTIONSTREAM_STACK_DIR := $(STACK_DIR)
PROM_RULES := deploy/prometheus/rules/actionstream.rules.yml

.PHONY: ops-deps demo down test-ops check-prometheus up-retrain

ops-deps: ## install the Prometheus server + promtool from Debian when missing (needs root)
	@command -v prometheus >/dev/null && command -v promtool >/dev/null \
	  || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus)
	@prometheus --version 2>&1 | head -1

check-prometheus: ## promtool: check the scrape config and rules, run the alert unit tests
	promtool check config deploy/prometheus/prometheus.yml
	promtool check rules $(PROM_RULES)
	cd deploy/prometheus && promtool test rules tests/*.yml

demo: install ## against a running `make up`: simulated traffic, daily job, print a user's features and scores
	$(VENV)/bin/actionstream demo --state-dir $(STACK_DIR)


up-retrain: install ## like `make up`, but train the stack's models in $(STACK_DIR)/models/ again first
	$(VENV)/bin/actionstream up --retrain-models

down: ## stop a stack started by `make up` in another terminal (SIGTERM to its pid file)
	@if [ -f $(STACK_DIR)/stack.pid ]; then \
	  pid=$$(cat $(STACK_DIR)/stack.pid); echo "stopping actionstream up (pid $$pid)"; \
	  kill -TERM $$pid 2>/dev/null || true; \
	  for i in $$(seq 120); do kill -0 $$pid 2>/dev/null || break; sleep 0.5; done; \
	  if kill -0 $$pid 2>/dev/null; then echo "still running after 60 s: kill -TERM $$pid"; exit 1; fi; \
	  echo "stopped"; \
	else echo "no $(STACK_DIR)/stack.pid: nothing to stop"; fi

test-ops: install ## ops tests: promtool rules, real Prometheus scraping a worker, dashboard/k8s checks
	$(VENV)/bin/pytest tests/deploy $(PYTEST_ARGS)

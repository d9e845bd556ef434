# TransAct targets (helper C2's area): data sets, training, evaluation, ablations.
# Outputs go under $(TRANSACT_DIR) (data) and runs/ (models, tables, plots); none of it is committed.
# TRANSACT_* size the runs. ABLATE_ARGS: the whole train split (~200k examples), 2 epochs of batch 512, scored
# on the whole eval split (~50k examples, ~2,900 requests): with 24k examples TransAct did not learn the
# candidate x sequence interaction (below random HIT@3), with 1 epoch it reached click HIT@3 0.47, with 2
# epochs 0.61 (random 0.41; transact/train.py). Variants run in 2 processes of 1 thread (--jobs 2); measured:
# all 9 in 53 min on this 2-core box (~1 min per baseline, 4-12 min per TransAct variant per process); pick a
# subset with ABLATE_ARGS="... --variants none,average,transact,window".
TRANSACT_DIR ?= .actionstream/transact
TRANSACT_SYN_USERS ?= 1500
TRANSACT_SYN_ITEMS ?= 5000
TRANSACT_SYN_EVENTS ?= 300000
TRANSACT_SYN_DAYS ?= 4
TRANSACT_SEED ?= 0
TRANSACT_EPOCHS ?= 3
ABLATE_ARGS ?= --config small --epochs 2 --batch-size 512 --max-train-examples 200000 --jobs 2 --threads 1
RECBOLE_SPEC := recbole==1.2.1

.PHONY: data-synthetic data-movielens train-transact eval-transact ablate-synthetic ablate-movielens test-transact

$(TRANSACT_DIR)/synthetic/events.jsonl:
	mkdir -p $(TRANSACT_DIR)/synthetic
	$(VENV)/bin/actionstream simulate --out $@ --items-out $(TRANSACT_DIR)/synthetic/items.jsonl --dim 16 \
	  --users $(TRANSACT_SYN_USERS) --items $(TRANSACT_SYN_ITEMS) --events $(TRANSACT_SYN_EVENTS) \
	  --days $(TRANSACT_SYN_DAYS) --seed $(TRANSACT_SEED)

data-synthetic: $(TRANSACT_DIR)/synthetic/events.jsonl ## synthetic events + 16-d item vectors for TransAct under $(TRANSACT_DIR)/synthetic

$(TRANSACT_DIR)/movielens/events.jsonl:
	$(PY) -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('recbole') is None)" \
	  || $(PIP) install -q --no-deps $(RECBOLE_SPEC)
	$(VENV)/bin/actionstream data movielens --out $(TRANSACT_DIR)/movielens

data-movielens: $(TRANSACT_DIR)/movielens/events.jsonl ## MovieLens-100k (pip install --no-deps recbole==1.2.1) as events + genre vectors

train-transact: data-synthetic ## train TransAct (default config) on the synthetic data -> runs/transact (model.pt, loss.png)
	$(VENV)/bin/actionstream train transact --events $(TRANSACT_DIR)/synthetic/events.jsonl \
	  --items $(TRANSACT_DIR)/synthetic/items.jsonl --out runs/transact --epochs $(TRANSACT_EPOCHS) --seed $(TRANSACT_SEED)

eval-transact: ## HIT@3 / AUC of runs/transact/model.pt on the synthetic eval split
	$(VENV)/bin/actionstream eval transact --checkpoint runs/transact/model.pt \
	  --events $(TRANSACT_DIR)/synthetic/events.jsonl --out runs/transact/eval.json

ablate-synthetic: data-synthetic ## the paper's ablations on the synthetic data -> runs/ablate-synthetic (table, PNG, JSON)
	$(VENV)/bin/actionstream ablate transact --events $(TRANSACT_DIR)/synthetic/events.jsonl \
	  --items $(TRANSACT_DIR)/synthetic/items.jsonl --out runs/ablate-synthetic --seed $(TRANSACT_SEED) $(ABLATE_ARGS)

ablate-movielens: data-movielens ## the paper's ablations on MovieLens-100k (a request = a user's ratings within 24 h)
	$(VENV)/bin/actionstream ablate transact --events $(TRANSACT_DIR)/movielens/events.jsonl \
	  --items $(TRANSACT_DIR)/movielens/items.jsonl --out runs/ablate-movielens --request-ms 86400000 \
	  --seed $(TRANSACT_SEED) $(ABLATE_ARGS)

test-transact: ## TransAct data/parity/train-smoke/eval tests and the item store tests
	$(VENV)/bin/pytest tests/transact/test_data.py tests/transact/test_parity.py tests/transact/test_evaluate.py \
	  tests/transact/test_train_smoke.py tests/streams/test_items.py -q

# PinnerFormer daily embeddings (helper D's area): training, evaluation, the objective comparison, daily job.
# Data under $(PF_DIR), outputs under runs/ (none of it committed). PF_* size the runs; the comparison
# defaults (PF_COMPARE_ENV) fit ~10 min on 2 CPU cores: width 64, M = 64, batch 32, one thread.
PF_DIR ?= .actionstream/embeddings
PF_SYN_USERS ?= 4000
PF_SYN_ITEMS ?= 5000
PF_SYN_EVENTS ?= 1000000
PF_SYN_END_MS ?= 1767225600000
PF_SEED ?= 1
PF_STEPS ?= 600
PF_SEEDS ?= 0
PF_COMPARE_ENV ?= ACTIONSTREAM_PF_THREADS=1 ACTIONSTREAM_PF_WIDTH=64 ACTIONSTREAM_PF_MAX_LEN=64 ACTIONSTREAM_PF_BATCH_SIZE=32
PF_VARIANTS ?= dense_all_action_28d,dense_all_action_14d,next_action
PF_DATE ?= 2025-12-31

.PHONY: data-pinnerformer train-pinnerformer eval-pinnerformer compare-pinnerformer-synthetic \
	compare-pinnerformer-movielens daily-pinnerformer-dry test-embeddings

$(PF_DIR)/synthetic/events.jsonl:
	mkdir -p $(PF_DIR)/synthetic
	$(VENV)/bin/actionstream simulate --out $@ --items-out $(PF_DIR)/synthetic/items.jsonl --users $(PF_SYN_USERS) \
	  --items $(PF_SYN_ITEMS) --events $(PF_SYN_EVENTS) --days 29 --end-ms $(PF_SYN_END_MS) --seed $(PF_SEED) --no-progress

data-pinnerformer: $(PF_DIR)/synthetic/events.jsonl ## 29 days of synthetic events + 32-d item vectors for PinnerFormer

train-pinnerformer: data-pinnerformer ## train PinnerFormer (dense all-action, default size) -> runs/pinnerformer
	$(VENV)/bin/actionstream train pinnerformer --events $(PF_DIR)/synthetic/events.jsonl \
	  --items $(PF_DIR)/synthetic/items.jsonl --out runs/pinnerformer --steps $(PF_STEPS) --eval-every 100

eval-pinnerformer: ## Recall@10 / P90 coverage@10 of runs/pinnerformer/model.pt on its held-out users
	$(VENV)/bin/actionstream eval pinnerformer --checkpoint runs/pinnerformer/model.pt \
	  --events $(PF_DIR)/synthetic/events.jsonl --items $(PF_DIR)/synthetic/items.jsonl --out runs/pinnerformer

compare-pinnerformer-synthetic: data-pinnerformer ## dense all-action (28/14 d) vs next-action on synthetic data -> runs/pf-compare-synthetic
	$(PF_COMPARE_ENV) $(PY) -m embeddings.compare --events $(PF_DIR)/synthetic/events.jsonl \
	  --items $(PF_DIR)/synthetic/items.jsonl --out runs/pf-compare-synthetic --steps $(PF_STEPS) \
	  --variants $(PF_VARIANTS) --seeds $(PF_SEEDS) --title "PinnerFormer objectives, synthetic"

compare-pinnerformer-movielens: data-movielens ## the same comparison on MovieLens-100k (per-user cut) -> runs/pf-compare-movielens
	$(PF_COMPARE_ENV) ACTIONSTREAM_PF_EVAL_CUT=per_user $(PY) -m embeddings.compare \
	  --events $(TRANSACT_DIR)/movielens/events.jsonl --items $(TRANSACT_DIR)/movielens/items.jsonl \
	  --out runs/pf-compare-movielens --steps $(PF_STEPS) --variants $(PF_VARIANTS) --seeds $(PF_SEEDS) \
	  --title "PinnerFormer objectives, MovieLens-100k"

daily-pinnerformer-dry: ## run the daily job for PF_DATE on the synthetic data without publishing -> runs/snapshots
	$(VENV)/bin/actionstream daily --archive $(PF_DIR)/synthetic/events.jsonl --date $(PF_DATE) \
	  --checkpoint runs/pinnerformer/model.pt --items $(PF_DIR)/synthetic/items.jsonl --snapshots runs/snapshots --no-publish

test-embeddings: ## PinnerFormer model/loss/train-smoke/daily-job tests (incl. the real-Kafka publish test)
	$(VENV)/bin/pytest tests/embeddings -q

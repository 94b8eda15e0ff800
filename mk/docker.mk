# Container targets, included by the Makefile (`include mk/docker.mk`); also usable alone:
#   make -f mk/docker.mk image image-test lint-docker
#
#   make image        build the training image with docker compose (CUDA base and torch by default)
#   make image-test   build it, then train 2 steps of a tiny random LFM2 on the CPU inside the container
#   make lint-docker  hadolint on the Dockerfile, compose schema check, docker compose config
#   make lock         recompile requirements.lock / requirements-dev.lock (needs uv; network)
#
# Build knobs (environment or make variables): BASE_IMAGE, TORCH_SPEC, TORCH_INDEX_URL, TORCH_FIND_LINKS,
# LLAMA_CMAKE_ARGS, LLAMA_WHEELS, IMAGE_NAME,
# IMAGE_TAG, BUILD_CA_BUNDLE (CA bundle for a TLS-intercepting proxy, a BuildKit secret; defaults to
# $PIP_CERT when pip on this machine needs one). See docs/docker.md.

DOCKER ?= docker
COMPOSE ?= $(DOCKER) compose
PYTHON_VENV ?= .venv
UV ?= uv

IMAGE_NAME ?= saudial
IMAGE_TAG ?= latest
BUILD_CA_BUNDLE ?= $(PIP_CERT)
ifndef VERSION
VERSION := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml 2>/dev/null | head -n1)
endif
ifndef REVISION
REVISION := $(shell rev=$$(git rev-parse --verify -q HEAD 2>/dev/null) || rev=uncommitted; \
	git diff --quiet HEAD -- 2>/dev/null || rev="$$rev-dirty"; echo "$$rev")
endif

# Files in ./outputs belong to the invoking user. As root (CI, sudo) the container still runs
# unprivileged, as 1000:1000.
ifndef SAUDIAL_UID
SAUDIAL_UID := $(shell u=$$(id -u); [ "$$u" = 0 ] && echo 1000 || echo "$$u")
endif
ifndef SAUDIAL_GID
SAUDIAL_GID := $(shell [ "$$(id -u)" = 0 ] && echo 1000 || id -g)
endif

export IMAGE_NAME IMAGE_TAG BUILD_CA_BUNDLE VERSION REVISION SAUDIAL_UID SAUDIAL_GID
# Passed to the build only when set and not empty (compose drops unset build args, and the Dockerfile's
# defaults apply; a plain `export` would pass an undefined variable as an empty string).
BUILD_ARG_VARS := BASE_IMAGE TORCH_SPEC TORCH_INDEX_URL TORCH_FIND_LINKS LLAMA_CMAKE_ARGS LLAMA_WHEELS
$(foreach v,$(BUILD_ARG_VARS),$(if $(strip $($(v))),$(eval export $(v)),$(eval unexport $(v))))

HADOLINT ?= $(or $(wildcard $(PYTHON_VENV)/bin/hadolint),hadolint)
CHECK_JSONSCHEMA ?= $(or $(wildcard $(PYTHON_VENV)/bin/check-jsonschema),check-jsonschema)

# torch is installed on its own (see docs/docker.md), so it and the CUDA wheels it pulls in (nvidia-*,
# cuda-*, triton) are resolved -- the pins stay compatible with torch -- but not written to the locks (triton is
# in the dev lock: requirements-dev.in pins it for the CPU tests of the Triton kernels).
LOCK_FLAGS := --universal --python-version 3.11 --generate-hashes -c requirements-torch.txt

.PHONY: image image-test lint-docker lock

image: ## Build the training image (docker compose build; see docs/docker.md for build knobs)
	@echo "image: building $(IMAGE_NAME):$(IMAGE_TAG) (base: $${BASE_IMAGE:-Dockerfile default}, torch: $${TORCH_SPEC:-torch==2.13.0}, revision: $(REVISION))"
	$(COMPOSE) build train

image-test: image ## Build the image and train a tiny model for 2 steps on the CPU inside it
	bash scripts/image-test.sh

# compose.cpu.yaml uses compose's !reset tag, which a plain YAML schema check cannot read: docker compose
# config checks it.
lint-docker: ## hadolint, compose schema check, docker compose config
	$(HADOLINT) Dockerfile
	$(CHECK_JSONSCHEMA) --builtin-schema vendor.compose-spec compose.yaml
	$(COMPOSE) -f compose.yaml config -q
	$(COMPOSE) -f compose.yaml -f compose.cpu.yaml config -q

lock: ## Recompile requirements.lock and requirements-dev.lock from the .in files (uv, network)
	@set -eu; tmp=$$(mktemp); trap 'rm -f "$$tmp"' EXIT; \
	$(UV) pip compile -q $(LOCK_FLAGS) --no-emit-package torch -o "$$tmp" requirements-dev.in; \
	excl="--no-emit-package torch"; \
	for p in $$(grep -oE '^(nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+|triton)==' "$$tmp" | tr -d '='); do \
		excl="$$excl --no-emit-package $$p"; done; \
	echo "lock: leaving out $$excl"; \
	$(UV) pip compile $(LOCK_FLAGS) $$excl -o requirements.lock requirements.in; \
	$(UV) pip compile $(LOCK_FLAGS) $${excl/ --no-emit-package triton/} -c requirements.lock -o requirements-dev.lock \
		requirements-dev.in  # triton kept: the kernels' tests run in its interpreter (requirements-dev.in)

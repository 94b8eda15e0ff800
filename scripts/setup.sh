#!/usr/bin/env bash
# Create or update the project's virtual environment from the lock files (called by `make setup`).
#
#   scripts/setup.sh            runtime: torch, then requirements.lock (hash-checked), then saudial itself
#   DEV=1 scripts/setup.sh      + requirements-dev.lock (pytest, ruff, mypy, hadolint, check-jsonschema)
#
# Environment: VENV (default .venv), PYTHON (default python3, >= 3.11), TORCH_INDEX_URL (optional
# torch index, e.g. https://download.pytorch.org/whl/cpu for a CPU-only laptop; by default pip takes
# torch==2.13.0 from PyPI -- or from PIP_FIND_LINKS, where this project's CI keeps the CPU build).
#
# Why torch is installed on its own: the same torch version is a different file (and hash) for the
# CUDA build in the image and the CPU build locally/in CI, so it cannot sit in the hashed lock. It is
# pinned by version in requirements-torch.txt and installed first; everything else comes from
# requirements.lock with --require-hashes, with torch already present.
#
# saudial itself is installed editable (`pip install --no-deps --no-build-isolation -e .`): the `saudial`
# command lands in $VENV/bin and runs this checkout's code, edits included. --no-deps: every dependency
# came from the lock above; --no-build-isolation: the build backend (setuptools) is the locked one too,
# so this step adds nothing unpinned and needs no network.
#
# llama-cpp-python (the GGUF export's llama.cpp) is published as source only: pip checks its sdist against
# the lock's sha256 and compiles it (CMake and a C++ compiler; ~5 min on 2 cores), with CMAKE_ARGS (default
# below: portable x86-64-v3 / armv8 code, ggml's own threads instead of OpenMP, no multimodal library; set
# CMAKE_ARGS="-DGGML_NATIVE=ON" and PIP_NO_CACHE_DIR=1 for code tuned to this machine's CPU). pip keeps the
# wheel it built in its cache, keyed by the sdist (not by CMAKE_ARGS), so the next venv (or CI run) on this
# machine installs it without compiling. Its build backend (scikit-build-core) comes from PyPI through pip's
# build isolation.
#
# Idempotent: a stamp in the venv records what was installed (one hash for the runtime, one for the dev
# tools); when nothing changed it exits at once. A venv with the dev tools also satisfies a plain
# `make setup`, so `make demo` after `make test` (or the other way round) reinstalls nothing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
DEV=${DEV:-0}
STAMP="$VENV/.saudial-setup.stamp"

say() { printf 'setup: %s\n' "$*" >&2; }
export CMAKE_ARGS=${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAVA_BUILD=OFF}

runtime_inputs=(requirements-torch.txt requirements.lock pyproject.toml)
inputs=("${runtime_inputs[@]}")
[ "$DEV" = 1 ] && inputs+=(requirements-dev.lock)
for f in "${inputs[@]}"; do
    [ -f "$f" ] || { say "missing $f (run from a complete checkout)"; exit 1; }
done

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { say "$PYTHON is $("$PYTHON" -V 2>&1); Python >= 3.11 is needed (set PYTHON=python3.11)"; exit 1; }
    say "creating $VENV with $("$PYTHON" -V 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
py="$VENV/bin/python"

# The stamp holds two lines: the runtime's hash, and the dev tools' hash (or "-" when they are not
# installed, or were installed for an older runtime).
runtime=$( { cat "${runtime_inputs[@]}"; echo "TORCH_INDEX_URL=${TORCH_INDEX_URL:-} CMAKE_ARGS=$CMAKE_ARGS"; "$py" -VV; } | sha256sum | cut -d' ' -f1)
dev=$( { echo "$runtime"; cat requirements-dev.lock 2>/dev/null; } | sha256sum | cut -d' ' -f1)
have_runtime=$(sed -n 1p "$STAMP" 2>/dev/null || true)
have_dev=$(sed -n 2p "$STAMP" 2>/dev/null || true)
need_runtime=$([ "$have_runtime" = "$runtime" ] && echo 0 || echo 1)
need_dev=$([ "$DEV" = 1 ] && [ "$have_dev" != "$dev" ] && echo 1 || echo 0)
if [ "$need_runtime" = 0 ] && [ "$need_dev" = 0 ]; then
    say "$VENV is up to date$([ "$have_dev" = "$dev" ] && echo ', dev tools included') (delete $STAMP to force a reinstall)"
    exit 0
fi
rm -f "$STAMP"

if [ "$need_runtime" = 1 ]; then
    torch_req=$(grep -E '^torch[=<>!~ ]' requirements-torch.txt)
    say "installing $torch_req${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL}"
    "$py" -m pip install --disable-pip-version-check ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$torch_req"

    say "installing requirements.lock (hash-checked; llama-cpp-python is compiled unless pip's cache has it)"
    "$py" -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
fi
if [ "$DEV" = 1 ]; then
    say "installing requirements-dev.lock (hash-checked)"
    "$py" -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.lock
fi
if [ "$need_runtime" = 1 ]; then
    say "installing saudial itself (editable, no dependencies, the locked setuptools): the saudial command"
    "$py" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation --editable .
fi
"$py" -m pip check
"$py" -c 'from saudial.cli.logs import install_filters; install_filters()  # the known-harmless warnings
import torch, transformers, trl, peft, saudial
print(f"setup: torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, peft {peft.__version__}, saudial {saudial.__version__}")'
[ -x "$VENV/bin/saudial" ] || { say "$VENV/bin/saudial is missing after the install"; exit 1; }

# Dev tools stay valid while the runtime is unchanged; a runtime reinstall without DEV=1 leaves them stale.
if [ "$DEV" = 1 ]; then
    kept_dev=$dev
elif [ "$need_runtime" = 0 ]; then
    kept_dev=$have_dev
else
    kept_dev=-
fi
printf '%s\n%s\n' "$runtime" "$kept_dev" > "$STAMP"
say "done: $VENV (the saudial command: $VENV/bin/saudial, or \`source $VENV/bin/activate\` then saudial)"

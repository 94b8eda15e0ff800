#!/usr/bin/env bash
# Create or update the project's virtual environment from the lock files (called by `make setup`).
#
#   scripts/setup.sh            runtime: torch, then requirements.lock (hash-checked)
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
# Idempotent: a stamp in the venv records the hash of the inputs; when nothing changed it exits at once.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
DEV=${DEV:-0}
STAMP="$VENV/.saudial-setup.stamp"

say() { printf 'setup: %s\n' "$*" >&2; }

inputs=(requirements-torch.txt requirements.lock)
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

want=$( { cat "${inputs[@]}"; echo "DEV=$DEV TORCH_INDEX_URL=${TORCH_INDEX_URL:-}"; "$py" -VV; } | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    say "$VENV is up to date (delete $STAMP to force a reinstall)"
    exit 0
fi
rm -f "$STAMP"

torch_req=$(grep -E '^torch[=<>!~ ]' requirements-torch.txt)
say "installing $torch_req${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL}"
"$py" -m pip install --disable-pip-version-check ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$torch_req"

say "installing requirements.lock (hash-checked)"
"$py" -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
if [ "$DEV" = 1 ]; then
    say "installing requirements-dev.lock (hash-checked)"
    "$py" -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.lock
fi
"$py" -m pip check
"$py" -c 'import torch, transformers, trl, peft; print(f"setup: torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, peft {peft.__version__}")'

echo "$want" > "$STAMP"
say "done: $VENV"

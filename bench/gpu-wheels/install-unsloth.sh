#!/usr/bin/env bash
# Offline install of the Unsloth peer stack into its own folder, kept apart from the project stack.
#   bash .unsloth-wheels/install.sh                 # -> /tmp/unsloth_site
#   UNSLOTH_SITE=/elsewhere GPUWHEELS=/path/to/.gpuwheels bash .unsloth-wheels/install.sh
#   ONLINE=1 bash bench/gpu-wheels/install-unsloth.sh    # a GPU machine with network: from PyPI (make bench-peers)
# Then run with:  PYTHONPATH=/tmp/unsloth_site UNSLOTH_DISABLE_STATISTICS=1 HF_HUB_OFFLINE=1 python3 ...
# bitsandbytes, peft, accelerate, dill, multiprocess (and any support library the machine lacks) come from
# .gpuwheels, so both folders must travel.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
A="${GPUWHEELS:-$HERE/../.gpuwheels}"
TARGET="${UNSLOTH_SITE:-/tmp/unsloth_site}"
PY="${PYTHON:-python3}"

# Support libraries: taken into the target only when the base python's own copy (what is importable without
# PYTHONPATH) is missing or outside the range transformers 5.17 / datasets 4.8.5 / hub 1.33 ask for. On the
# GPU image (read 2026-11-25) none is needed; only tokenizers 0.23.3 is carried (in .gpuwheels). If pip stops with
# "No matching distribution", drop that wheel into .unsloth-wheels (pip download --no-deps, see .gpuwheels/install.sh).
EXTRA="$("$PY" - <<'EOF'
import importlib.metadata as md
from packaging.specifiers import SpecifierSet
from packaging.version import Version
need = {"tokenizers": ">=0.23.1,<0.24", "safetensors": ">=0.8.0", "regex": ">=2025.10.22",
        "hf-xet": ">=1.6.0,<2", "click": ">=8.4.2,<9", "filelock": ">=3.10", "typing-extensions": ">=4.16.0"}
out = []
for name, spec in need.items():
    try:
        ok = Version(md.version(name)) in SpecifierSet(spec)
    except md.PackageNotFoundError:
        ok = False
    if not ok:
        out.append(f"{name}{spec}")
print(" ".join(out))
EOF
)"
[ -n "$EXTRA" ] && echo "unsloth stack: also taking into $TARGET: $EXTRA"

mkdir -p "$TARGET"
if [ "${ONLINE:-0}" = 1 ]; then SOURCE=(); else SOURCE=(--no-index --find-links "$HERE" --find-links "$A"); fi
# shellcheck disable=SC2086
"$PY" -m pip install -q --no-deps --no-cache-dir --disable-pip-version-check --upgrade \
  --target "$TARGET" "${SOURCE[@]}" \
  unsloth==2026.10.9 unsloth-zoo==2026.10.9 trl==1.15.0 datasets==4.8.5 transformers==5.17.0 \
  huggingface-hub==1.33.0 fsspec==2026.2.0 cut-cross-entropy==25.1.1 \
  peft==0.21.2 accelerate==1.15.0 bitsandbytes==0.50.2 dill==0.4.1 multiprocess==0.70.19 $EXTRA

# Import check (needs the GPU: unsloth refuses to import without an accelerator).
cd /tmp
PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}" UNSLOTH_DISABLE_STATISTICS=1 HF_HUB_OFFLINE=1 "$PY" - <<'EOF'
import unsloth  # must come before transformers/trl/peft
import unsloth_zoo, transformers, trl, datasets, peft, huggingface_hub, bitsandbytes
for m in (unsloth, unsloth_zoo, transformers, trl, datasets, peft, huggingface_hub, bitsandbytes):
    print(f"{m.__name__:16s} {getattr(m, '__version__', '?'):12s} {m.__file__}")
from unsloth import FastLanguageModel  # noqa: F401
print("unsloth import OK")
EOF

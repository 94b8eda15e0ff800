#!/usr/bin/env bash
# Offline install of the saudial project stack on the GPU machine (Python 3.12, torch 2.11+cu130 preinstalled).
#   bash .gpuwheels/install.sh            # installs into the python3 that holds torch
#   PYTHON=/path/to/python bash .gpuwheels/install.sh
# Pinned (==) packages are always installed at that version. Range packages ("support") are left alone when the
# machine already has a version inside the range, and only otherwise taken from this folder. The range wheels
# (hf-xet, regex, safetensors, click, filelock, fsspec, anyio, idna, h11, typing-extensions) are NOT carried:
# the GPU image (read 2026-11-25: click 8.5.0, hf-xet 1.6.0, regex 2026.9.3, safetensors 0.8.0, fsspec 2026.7.0,
# filelock 3.32.5, anyio 4.15.1, idna 3.19, h11 0.16.0, typing_extensions 4.16.0) satisfies them. If a newer
# image does not, pip stops with "No matching distribution": drop the missing wheel in here (pip download
# --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 --platform any NAME).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-python3}"

"$PY" -m pip install -q --no-index --no-deps --no-cache-dir --disable-pip-version-check \
  --find-links "$HERE" \
  transformers==5.23.0 trl==1.16.0 peft==0.21.2 bitsandbytes==0.50.2 datasets==5.2.0 accelerate==1.15.0 \
  huggingface-hub==2.4.0 openpyxl==3.1.5 et-xmlfile==2.0.0 multiprocess==0.70.19 dill==0.4.1 \
  pydantic-settings==2.16.3 python-dotenv==1.2.4 pydantic==2.14.4 pydantic-core==2.50.5 \
  typing-inspection==0.4.5 annotated-types==0.8.0 httpx2==2.16.2 httpcore2==2.16.2 \
  "truststore>=0.10" "h11>=0.16" "anyio>=4.10" "idna>=3.18" "typing-extensions>=4.16.0" \
  tokenizers==0.23.3 "safetensors>=0.8.0" "regex>=2025.10.22" "hf-xet>=1.6.0,<2" \
  "click>=8.4.2,<9" "filelock>=3.10" "fsspec>=2023.5.0,<=2026.9.0"

"$PY" - <<'EOF'
import importlib, importlib.metadata as md
mods = ["trl", "bitsandbytes", "datasets", "transformers", "peft", "accelerate", "huggingface_hub",
        "openpyxl", "pydantic", "pydantic_settings", "dotenv", "tokenizers", "safetensors"]
for m in mods:
    importlib.import_module(m)
print("imports OK:", " ".join(mods))
for d in ["trl", "bitsandbytes", "datasets", "transformers", "peft", "accelerate", "huggingface-hub", "openpyxl",
          "pydantic", "pydantic-settings", "python-dotenv", "tokenizers", "safetensors", "torch", "pyarrow", "pandas",
          "fsspec", "hf-xet", "httpx2", "multiprocess", "dill", "regex", "click"]:
    try:
        print(f"{d:18s} {md.version(d)}")
    except md.PackageNotFoundError:
        print(f"{d:18s} MISSING")
EOF
"$PY" -m pip check --disable-pip-version-check || true   # informative only

"""`saudial export`'s own help and flags (cli/parser.py builds the command with them and its settings)."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """Merge the adapter into its base model (its own weights, float32), write it as GGUF in each
        --quant type with an Ollama Modelfile and a README; llama.cpp loads every file and is compared with
        transformers."""
USAGE = "saudial export --adapter DIR [--output DIR] [--quant q4_k_m,q8_0,f16,bf16] [--lora-only]"


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, metavar="DIR", help="the GGUF folder (default: DIR/gguf)")
    parser.add_argument(
        "--quant",
        metavar="TYPES",
        help="llama.cpp's types, e.g. q4_k_m,q8_0,f16 (default: q4_k_m,q8_0; not with --lora-only)",
    )
    parser.add_argument(
        "--lora-only", action="store_true", help="the adapter alone as a GGUF LoRA in F32 (llama.cpp --lora)"
    )

"""GGUF export of a random-weight model of LFM2-1.2B's real shape, checked by llama.cpp (CPU; not run by CI).

    python bench/export_bench.py --out /tmp/lfm2-export [--types f32,f16,bf16,q8_0,q4_k_m]

LFM2-1.2B's configuration (field notes: vocabulary 65,536, hidden 2048, 16 layers with attention at 2, 5, 8,
10, 12 and 14, 32 heads / 8 KV heads, block_ff_dim 12288 auto-adjusted to an MLP of 8192, conv L_cache 3, tied
embeddings, bf16 weights) with random weights, saved in bf16, and saudial's LoRA (r 8 on every linear layer,
B drawn from N(0, 0.02)) on it. The export path is `saudial export`'s: the base widened to float32, the
adapter merged with PEFT, saudial's converter, llama.cpp's quantize, then each file against transformers on
the 24 translate prompts (export/checks.py). The tokenizer is the tiny model's byte-level BPE (the real one
cannot be downloaded here), padded to the 65,536 ids with unused tokens as llama.cpp's converter pads.
Prints one table row per type: size, seconds to write, logits max difference, top-1 and greedy agreement.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def build(out: Path) -> tuple[Path, Path]:
    from peft import get_peft_model
    from transformers import Lfm2Config, Lfm2ForCausalLM

    from saudial.config.settings import Settings
    from saudial.devtools import tiny
    from saudial.model import family
    from saudial.model.lora import lora_config

    base_dir, adapter_dir = out / "base", out / "adapter"
    if (adapter_dir / "adapter_model.safetensors").exists():
        return base_dir, adapter_dir
    tiny.build(out / "tokenizer-source", rows=400)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer-source")
    config = Lfm2Config(**family.LFM2_1_2B.config_kwargs() | {"eos_token_id": tokenizer.eos_token_id})
    torch.manual_seed(0)
    model: Any = Lfm2ForCausalLM(config)
    model = model.to(torch.bfloat16)
    print(f"parameters: {sum(p.numel() for p in model.parameters()):,}", flush=True)
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    settings = Settings(model_name_or_path=str(base_dir), quantization="none")
    peft_model = get_peft_model(model.float(), lora_config(settings))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    peft_model.save_pretrained(str(adapter_dir))
    tokenizer.save_pretrained(adapter_dir)
    return base_dir, adapter_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--types", default="f32,f16,bf16,q8_0,q4_k_m")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    base_dir, adapter_dir = build(args.out)
    print(f"built in {time.perf_counter() - started:.0f} s", flush=True)

    from saudial.config.settings import Settings
    from saudial.export import checks, convert, llama
    from saudial.inference.merged import load_base, merge_into

    settings = Settings(model_name_or_path=str(base_dir), quantization="none")
    t = time.perf_counter()
    base, tokenizer = load_base(settings, adapter_dir, "float32")
    model = merge_into(base, adapter_dir)
    merge_seconds = time.perf_counter() - t
    tokenizer.save_pretrained(args.out / "tok")
    source = args.out / "model-F32.gguf"
    t = time.perf_counter()
    convert.write_model(source, model, tokenizer, args.out / "tok", "lfm2-1.2b-shaped")
    convert_seconds = time.perf_counter() - t
    print(f"merged in {merge_seconds:.0f} s, float32 GGUF written in {convert_seconds:.0f} s", flush=True)
    texts = checks.translate_prompts()
    t = time.perf_counter()
    ref = checks.reference(model, tokenizer, texts)
    print(f"transformers reference: {time.perf_counter() - t:.0f} s", flush=True)
    del model, base
    rows = []
    for kind in llama.parse_types(args.types, "--types"):
        path = source if kind == "f32" else args.out / f"model-{kind.upper()}.gguf"
        t = time.perf_counter()
        if kind != "f32":
            llama.quantize(source, path, kind)
        seconds = convert_seconds + time.perf_counter() - t  # the float32 file, then llama.cpp's quantize
        result = checks.check_file(kind, path, ref, texts)
        row = {
            "type": kind,
            "MiB": round(path.stat().st_size / 2**20, 1),
            "seconds_to_write": round(seconds, 1),
            **result.record(),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| type | size | s to write | logits max abs / rel diff | top-1 agreement | greedy identical | check s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['type']} | {r['MiB']} MiB | {r['seconds_to_write']} | {r['last_max_abs_diff']:.3g} / "
            f"{r['last_max_rel_diff']:.2e} | {r['top1_agreement']:.1%} | {r['greedy_identical']}/{r['greedy_prompts']} "
            f"({r['greedy_agreement']:.0%} of tokens) | {r['seconds']} |"
        )
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

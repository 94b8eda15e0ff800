"""Tiny-model pieces shared by the in-process model tests (not a test module): saudial's 4-bit LoRA model
and its LoRA layers (test_fused_lora, test_dense_generation, test_gpu), and the translation and chat rows
as token ids with a padded reference batch (test_padding_free, test_gpu).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from saudial.config.settings import Settings
from saudial.data import workbook as data
from saudial.data.conversations import row_conversation
from saudial.data.messages import tokenize
from saudial.data.prompts import build_prompt
from saudial.model.loading import quantization_config
from saudial.model.lora import lora_config
from tests.chat_files import conversations


def peft_4bit(model_dir: Path, device: str, **lora: Any) -> Any:
    """The tiny LFM2 in NF4 (bf16 compute) with saudial's LoRA on it, LoRA weights in bf16 and B non-zero."""
    from peft import get_peft_model

    # saudial's own quantization and LoRA configs (model/loading.py needs CUDA for the rest of load_model).
    settings = Settings(**({"lora_dropout": 0.0} | lora))
    quant = quantization_config(settings, torch.bfloat16)
    base = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=quant, dtype=torch.bfloat16, device_map=device
    )
    model = get_peft_model(base, lora_config(settings))
    generator = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        if param.requires_grad:  # bf16 like TRL's cast; B non-zero so that every gradient is
            param.data = param.data.to(torch.bfloat16)
            if "lora_B" in name:
                param.data = (torch.randn(param.shape, generator=generator) * 0.05).to(param)
    return model.train()


def lora_4bit_layers(model: Any) -> list[Any]:
    from peft.tuners.lora.bnb import Linear4bit

    return [m for m in model.modules() if isinstance(m, Linear4bit)]


def row_examples(workbook: Path, tokenizer: Any, n: int = 6) -> list[list[int]]:
    """The first `n` workbook rows as training sees them: prompt + translation + EOS, as token ids."""
    rows = data.load(workbook).rows.head(n)
    texts = [build_prompt(r.dialect, r.english, r.context or None) + r.translation for r in rows.itertuples()]
    return [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]


def chat_examples(tokenizer: Any, n: int = 6) -> list[list[int]]:
    """Chat rows as training sees them: conversations (tests/chat_files.py) through the chat template."""
    found = [row_conversation(line, f"line {i}")[0] for i, line in enumerate(conversations(n), 1)]
    return [tokenize(tokenizer, c)["input_ids"] for c in found]


def padded_batch(examples: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: a right-padded batch and its attention mask."""
    ids = torch.full((len(examples), max(map(len, examples))), pad_id)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(examples):
        ids[i, : len(e)], mask[i, : len(e)] = torch.tensor(e), 1
    return ids, mask


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token loss per position, then averaged within each example by the caller."""
    return torch.nn.functional.cross_entropy(logits[:-1].float(), labels[1:], reduction="none")

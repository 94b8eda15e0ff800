"""Base model + adapter folded into one model in memory: what `saudial merge` saves and `saudial export` converts.

The base model is loaded unquantized (merging into 4-bit weights would round the LoRA update away) from
its own weights, and the adapter is folded in with PEFT's `merge_and_unload`. `dtype` is what the base is
loaded as and the merge computed in: bf16 for `merge` (the published weights' own precision), float32 for
`export` (the base's bf16 weights widened exactly, so the small LoRA update is not rounded to bf16's 8-bit
mantissa before llama.cpp makes each type from it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from saudial.config.huggingface import check_adapter_weights
from saudial.config.settings import Settings
from saudial.model.loading import load_model, load_tokenizer


def load_merged(settings: Settings, adapter_dir: Path, dtype: str) -> tuple[Any, PreTrainedTokenizerBase]:
    """The merged model (on the CPU, in `dtype`, KV cache on) and the adapter's tokenizer."""
    base, tokenizer = load_base(settings, adapter_dir, dtype)
    return merge_into(base, adapter_dir), tokenizer


def load_base(settings: Settings, adapter_dir: Path, dtype: str) -> tuple[Any, PreTrainedTokenizerBase]:
    """The base model unquantized on the CPU in `dtype`, and the adapter's tokenizer."""
    merge_settings = settings.model_copy(update={"quantization": "none", "torch_dtype": dtype})
    tokenizer = load_tokenizer(merge_settings, source=str(adapter_dir))
    base = load_model(merge_settings, device_map="cpu")
    check_adapter_weights(adapter_dir)
    base.config.use_cache = True  # training switched the KV cache off; inference wants it
    return base.eval(), tokenizer


def merge_into(base: Any, adapter_dir: Path) -> Any:
    """The adapter folded into `base` (changed in place) with PEFT's merge_and_unload."""
    model: Any = PeftModel.from_pretrained(base, str(adapter_dir), use_safetensors=True).merge_and_unload()
    return model.eval()

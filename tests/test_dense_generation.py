"""Generation from the 4-bit model with its base weights dequantized once gives the same tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from saudial.inference.dense import dequantize_base_weights

pytestmark = pytest.mark.slow  # each loads the tiny model in 4-bit and generates: 8-25 s on 2 busy cores


def _tokens_and_logits(model: torch.nn.Module, model_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens and the prompts' logits, for two fixed prompts of different lengths (padded)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    inputs = tokenizer(["### Instruction:\nTranslate", "Najdi"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        tokens = model.generate(**inputs, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        return tokens, model(**inputs).logits


def test_dequantized_generation_equals_4bit(tiny_model: Path) -> None:
    # bitsandbytes 0.50 runs NF4 on the CPU too, so the real 4-bit layers are exercised here.
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_model, quantization_config=quant, device_map={"": "cpu"})
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "w1", "w2", "in_proj"]))
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # a trained-looking adapter: LoRA's B starts at zero
            torch.nn.init.normal_(param, std=0.5)
    model.eval()
    before, logits_before = _tokens_and_logits(model, tiny_model)
    replaced = dequantize_base_weights(model)
    assert replaced > 0
    import bitsandbytes as bnb

    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    after, logits_after = _tokens_and_logits(model, tiny_model)
    assert torch.equal(before, after)
    # The CPU's 4-bit kernel rounds its inputs to bf16 before the matmul, the dense copy keeps them in
    # float32: logits agree to that rounding (on a GPU both compute in bf16).
    torch.testing.assert_close(logits_after, logits_before, rtol=2e-2, atol=2e-2)


def test_merged_adapter_generates_like_the_unmerged_one(tiny_model: Path) -> None:
    """Inside `merged_adapter` each LoRA layer on a dense base runs one matmul with W + s B A: the same logits
    and greedy tokens as PEFT's unmerged layers (float32 here), and each layer's own weight back after."""
    from peft.tuners.lora import LoraLayer

    from saudial.inference.dense import merged_adapter

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "w1", "w2", "in_proj"]))
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    model.eval()
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    weights = [layer.get_base_layer().weight.detach().clone() for layer in layers]
    unmerged_tokens, unmerged_logits = _tokens_and_logits(model, tiny_model)
    with model.disable_adapter():
        base_logits = _tokens_and_logits(model, tiny_model)[1]
    with merged_adapter(model) as count:
        assert count == len(layers) > 0
        assert all(layer.merged for layer in layers)
        merged_tokens, merged_logits = _tokens_and_logits(model, tiny_model)
    assert not (unmerged_logits - base_logits).abs().max() < 1e-3  # the adapter changes the output
    torch.testing.assert_close(merged_logits, unmerged_logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(merged_tokens, unmerged_tokens)
    assert not any(layer.merged for layer in layers)
    assert all(torch.equal(layer.get_base_layer().weight, w) for layer, w in zip(layers, weights, strict=True))


def test_merged_adapter_on_the_dequantized_4bit_model(tiny_model: Path) -> None:
    """The path evaluation takes: a bf16 4-bit model with the fused LoRA step installed, its base dequantized
    once, then the adapter folded in. Greedy tokens as PEFT's unmerged layers write them, logits within bf16
    rounding (W + s B A is rounded once more), and the fused step's cache (scales, the dequantized copy) let go
    with the 4-bit weights."""
    from saudial.inference.dense import merged_adapter
    from saudial.model import fused_lora
    from tests.models import lora_4bit_layers, peft_4bit

    model = peft_4bit(tiny_model, "cpu")  # saudial's 4-bit and LoRA configs, bf16, lora_B non-zero
    assert fused_lora.fuse(model) > 0
    ids = torch.randint(3, model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(1))
    fused_lora.keep_dequantized(model)  # as training with dequantize_once leaves it
    model(input_ids=ids)  # the fused step runs on what it keeps
    layers = lora_4bit_layers(model)
    assert all(layer._saudial_frozen.dense is not None for layer in layers)
    dequantize_base_weights(model.eval())
    assert not any(hasattr(layer, "_saudial_frozen") for layer in layers)
    unmerged_tokens, unmerged_logits = _tokens_and_logits(model, tiny_model)
    with merged_adapter(model) as count:
        assert count == len(layers)
        merged_tokens, merged_logits = _tokens_and_logits(model, tiny_model)
    assert torch.equal(merged_tokens, unmerged_tokens)
    torch.testing.assert_close(merged_logits.float(), unmerged_logits.float(), rtol=3e-2, atol=3e-2)

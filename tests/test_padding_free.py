"""Padding-free batches must give every example the loss it gets alone in a padded batch (translation
rows and chat rows alike)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.models.lfm2 import modeling_lfm2

from saudial.model import patches as speed
from saudial.model import short_conv
from saudial.training.trainer import padding_free_collator
from tests.models import chat_examples, padded_batch, per_example_loss, row_examples


@pytest.fixture
def restore_conv():
    original = modeling_lfm2.causal_conv1d_fn
    yield
    modeling_lfm2.causal_conv1d_fn = original


def test_boundary_aware_conv_matches_per_sequence_conv() -> None:
    torch.manual_seed(0)
    channels, lengths = 8, [5, 1, 7, 3]
    weight, bias = torch.randn(channels, 3), torch.randn(channels)
    parts = [torch.randn(1, channels, n) for n in lengths]
    seq_idx = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    flat = short_conv.boundary_aware_causal_conv1d(torch.cat(parts, dim=-1), weight, bias, seq_idx=seq_idx)
    alone = torch.cat([short_conv.boundary_aware_causal_conv1d(p, weight, bias) for p in parts], dim=-1)
    torch.testing.assert_close(flat, alone, rtol=1e-5, atol=1e-5)
    # Without seq_idx the first token of each sequence would see the previous sequence's tail.
    leaky = short_conv.boundary_aware_causal_conv1d(torch.cat(parts, dim=-1), weight, bias)
    assert not torch.allclose(leaky, alone, atol=1e-3)


@pytest.mark.parametrize("rows", ["translation", "chat"])
def test_padding_free_losses_equal_padded(tiny_model: Path, workbook: Path, restore_conv, rows: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    examples = row_examples(workbook, tokenizer) if rows == "translation" else chat_examples(tokenizer)

    ids, mask = padded_batch(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        padded_logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    reference = [per_example_loss(padded_logits[i, : len(e)], torch.tensor(e)).mean() for i, e in enumerate(examples)]

    short_conv.install_boundary_aware_conv()
    collator = padding_free_collator(tokenizer.pad_token_id, pad_to_multiple_of=64)
    batch = collator([{"input_ids": e} for e in examples])
    assert batch["input_ids"].shape[0] == 1 and batch["input_ids"].shape[1] % 64 == 0
    with torch.no_grad():
        flat_logits = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            seq_idx=batch["seq_idx"],
            use_cache=False,  # as in training: with a cache, transformers builds no block-diagonal mask
        ).logits[0]
    start = 0
    for i, e in enumerate(examples):
        loss = per_example_loss(flat_logits[start : start + len(e)], torch.tensor(e)).mean()
        torch.testing.assert_close(loss, reference[i], rtol=1e-4, atol=1e-4)
        start += len(e)


@pytest.mark.gpu
@pytest.mark.compiles
def test_compiled_layers_train_like_eager(tiny_model: Path, workbook: Path, restore_conv) -> None:
    """torch.compile of the decoder layers (SAUDIAL_TORCH_COMPILE) changes speed, not the numbers.

    LoRA on every linear, a padding-free batch with the boundary-aware conv: the loss and the LoRA
    gradients of the compiled layers equal the eager ones (fp32, inductor's Triton kernels). On the GPU
    only: compiling the layers with inductor's C++ backend instead takes ~85 s of a 2-core CPU.
    """
    from peft import LoraConfig, get_peft_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    examples = row_examples(workbook, tokenizer)
    short_conv.install_boundary_aware_conv()
    batch = padding_free_collator(tokenizer.pad_token_id, pad_to_multiple_of=64)([{"input_ids": e} for e in examples])
    inputs = {k: batch[k].cuda() for k in ("input_ids", "position_ids", "seq_idx")}
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == tokenizer.pad_token_id, -100)
    targets = ["q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3"]

    def loss_and_grads(compiled: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).cuda()
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets))
        for name, param in model.named_parameters():
            if "lora_B" in name:  # nonzero B, so that every LoRA weight gets a gradient
                torch.nn.init.normal_(param, std=0.02)
        if compiled:
            assert speed.compile_decoder_layers(model) == base.config.num_hidden_layers
        loss = model(**inputs, labels=labels, use_cache=False).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    torch._dynamo.reset()
    eager_loss, eager_grads = loss_and_grads(compiled=False)
    compiled_loss, compiled_grads = loss_and_grads(compiled=True)
    torch._dynamo.reset()
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-4, atol=1e-4)
    assert eager_grads.keys() == compiled_grads.keys() and len(eager_grads) > 0
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.slow
def test_varlen_attention_falls_back_to_sdpa_for_padded_batches(tiny_model: Path, workbook: Path, restore_conv) -> None:
    """Switched to saudial's varlen attention, a padded batch (evaluation, generation) is scored as by SDPA.

    The flash varlen kernel itself needs CUDA: tests/test_gpu.py checks padding-free losses through it.
    """
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    examples = row_examples(workbook, tokenizer)
    ids, mask = padded_batch(examples, tokenizer.pad_token_id)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    switched = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    speed.use_varlen_attention(switched)
    assert switched.config._attn_implementation == speed.VARLEN
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, use_cache=False).logits
        got = switched(input_ids=ids, attention_mask=mask, use_cache=False).logits
    torch.testing.assert_close(got, expected)
    # A padding-free row in fp32 cannot go through the kernel; it must fail, not attend across examples.
    short_conv.install_boundary_aware_conv()
    batch = padding_free_collator(tokenizer.pad_token_id, 64)([{"input_ids": e} for e in examples])
    with pytest.raises(RuntimeError, match="varlen attention needs"):
        switched(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False)


def test_boundary_aware_conv_gradients() -> None:
    """The conv's own backward (short_conv._MaskedCausalConv) against float64 finite differences, for the
    input and the weight, across sequence boundaries (one sequence of a single token among them)."""
    torch.manual_seed(1)
    lengths = [4, 1, 6, 3]
    seq_idx = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    x = torch.randn(1, 5, sum(lengths), dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    keep = short_conv._keep_masks(seq_idx, 3, torch.float64)
    assert torch.autograd.gradcheck(short_conv._MaskedCausalConv.apply, (x, weight, keep))
    frozen = weight.detach()  # QLoRA: the conv weight does not train, and the input is not kept for it
    assert torch.autograd.gradcheck(lambda t: short_conv._MaskedCausalConv.apply(t, frozen, keep), (x,))


def test_boundary_aware_conv_under_inference_mode() -> None:
    """seq_idx made under torch.inference_mode has no version counter: the masks are built, not cached."""
    lengths = [3, 2]
    weight = torch.randn(4, 3)
    x = torch.randn(1, 4, sum(lengths))
    with torch.inference_mode():
        seq_idx = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
        flat = short_conv.boundary_aware_causal_conv1d(x, weight, seq_idx=seq_idx)
        again = short_conv.boundary_aware_causal_conv1d(x, weight, seq_idx=seq_idx)
    alone = torch.cat([short_conv.boundary_aware_causal_conv1d(p, weight) for p in x.split(lengths, -1)], dim=-1)
    torch.testing.assert_close(flat, alone)
    assert torch.equal(flat, again)

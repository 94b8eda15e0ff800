"""Padding-free batches must give every example the loss it gets alone in a padded batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.models.lfm2 import modeling_lfm2

from saudial import data, speed
from saudial.prompts import build_prompt


def _examples(workbook: Path, tokenizer, n: int = 6) -> list[list[int]]:
    rows = data.load(workbook).rows.head(n)
    texts = [build_prompt(r.dialect, r.english, r.context or None) + r.translation for r in rows.itertuples()]
    return [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]


def _padded_batch(examples: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: a right-padded batch and its attention mask."""
    ids = torch.full((len(examples), max(map(len, examples))), pad_id)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(examples):
        ids[i, : len(e)], mask[i, : len(e)] = torch.tensor(e), 1
    return ids, mask


def _per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # Next-token loss per position, then averaged within each example by the caller.
    return torch.nn.functional.cross_entropy(logits[:-1].float(), labels[1:], reduction="none")


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
    flat = speed.boundary_aware_causal_conv1d(torch.cat(parts, dim=-1), weight, bias, seq_idx=seq_idx)
    alone = torch.cat([speed.boundary_aware_causal_conv1d(p, weight, bias) for p in parts], dim=-1)
    torch.testing.assert_close(flat, alone, rtol=1e-5, atol=1e-5)
    # Without seq_idx the first token of each sequence would see the previous sequence's tail.
    leaky = speed.boundary_aware_causal_conv1d(torch.cat(parts, dim=-1), weight, bias)
    assert not torch.allclose(leaky, alone, atol=1e-3)


def test_padding_free_losses_equal_padded(tiny_model: Path, workbook: Path, restore_conv) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    examples = _examples(workbook, tokenizer)

    ids, mask = _padded_batch(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        padded_logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    reference = [_per_example_loss(padded_logits[i, : len(e)], torch.tensor(e)).mean() for i, e in enumerate(examples)]

    speed.install_boundary_aware_conv()
    collator = speed.padding_free_collator(tokenizer.pad_token_id, pad_to_multiple_of=64)
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
        loss = _per_example_loss(flat_logits[start : start + len(e)], torch.tensor(e)).mean()
        torch.testing.assert_close(loss, reference[i], rtol=1e-4, atol=1e-4)
        start += len(e)

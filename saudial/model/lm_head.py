"""The training loss head of padding-free rows without reading the GPU on the host: TRL's chunked log-prob
kernel, on the completion positions the collator found on the CPU.

Upstream (TRL 1.16, `add_fused_lm_head`): the fused LM head picks the positions to score on the GPU, with a
boolean index (`hidden_states[mask]`, `labels[mask]`), and scatters the results back with `masked_scatter`.
A boolean index must know its count on the host, forward and backward (the scatter's backward is a
`masked_select`, the index's an `index_put`): four or five host-device syncs per step, each leaving the GPU
idle while the host catches up (bench/profile_step.py --syncs). Here the collator sends the positions with the
batch (training/sync_free.CountingCollator computes them from the labels on the CPU); the hidden states are
gathered with `index_select` (backward `index_add_`), and the per-token results stay compact: no sync. The
kernel, its tiles and its arithmetic are TRL's own (`trl.kernels.ChunkedLogProbFunction`); it sees the same
rows in the same order as upstream's boolean index gives it. tests/test_sync_free.py checks the per-token
values against TRL's head.

`install` wraps the causal LM's forward, over TRL's: a call without the positions is TRL's (or the model's)
forward unchanged, so evaluation and generation do not change. Models whose head TRL scales, caps or splits
(logit scaling, soft-capping, a bias, vision-language configs) are left to TRL.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import ModelOutput
from trl.kernels import ChunkedLogProbFunction

POSITIONS = "saudial_label_positions"  # [n] int64: the row's positions p whose next token (p + 1) has a label
TARGETS = "saudial_label_targets"  # [n] int64: those labels
CHUNK = 32768  # vocabulary tile of the kernel, as TRL's fused head uses it (_CHUNKED_LOGPROB_CHUNK_SIZE)
OUTPUTS = ("log_probs", "entropy", "is_top1")  # what SFTTrainer asks TRL's head for (loss, entropy, accuracy)
# Config attributes by which TRL's head rescales or caps the logits: a model with any of them keeps TRL's head.
SCALED_BY = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


@dataclass
class CompactHeadOutput(ModelOutput):
    """Per scored position (the POSITIONS given, in their order): log-probability of the label, entropy, and
    whether the label is the most likely token."""

    log_probs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    is_top1: torch.Tensor | None = None


def label_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and labels to score in a padding-free row `labels` [1, T] (on the CPU): position p predicts
    token p + 1, as TRL's head shifts them."""
    shifted = labels[0, 1:]
    positions = (shifted != -100).nonzero().flatten()
    return positions, shifted[positions]


def supported(model: Any) -> bool:
    """Whether the compact head computes what TRL's head computes for `model` (a transformers causal LM)."""
    config = model.config
    head = model.get_output_embeddings()
    return (
        config.get_text_config() is config
        and all(getattr(config, name, None) is None for name in SCALED_BY)
        and head is not None
        and getattr(head, "bias", None) is None
        and type(head.weight) is torch.nn.Parameter  # not a sharded (DTensor) weight
    )


def install(model: Any) -> bool:
    """Give `model` (the causal LM under PEFT, TRL's fused head already on it) the compact head; whether it did."""
    if not supported(model):
        return False
    inner = model.forward

    @functools.wraps(inner)  # generate validates its kwargs against the signature
    def forward(*args: Any, **kwargs: Any) -> Any:
        positions, targets = kwargs.pop(POSITIONS, None), kwargs.pop(TARGETS, None)
        if positions is None:
            return inner(*args, **kwargs)
        kwargs.pop("labels", None)  # not needed: TARGETS hold the labels of the scored positions
        kwargs["use_cache"] = False
        hidden = model.base_model(*args, **kwargs).last_hidden_state  # [1, T, H]
        weight = model.get_output_embeddings().weight
        # The states that predict the labelled tokens, on the head's device (a model split over devices may end
        # its backbone on another one, as TRL's head allows for).
        rows = hidden[0].index_select(0, positions.to(hidden.device)).to(weight.device)
        targets = targets.to(weight.device)
        log_probs, entropy, _, _, is_top1 = ChunkedLogProbFunction.apply(
            rows, weight, None, targets, 1.0, CHUNK, None, 1.0, OUTPUTS
        )
        return CompactHeadOutput(log_probs=log_probs, entropy=entropy, is_top1=is_top1)

    model.forward = forward
    return True

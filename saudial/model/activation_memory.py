"""Gradient checkpointing fitted to each step: as few decoder layers recomputed as the step's tokens need to
fit the GPU.

A padding-free step holds its micro-batch's tokens in one row, so its activations grow with the rows' lengths:
LFM2-1.2B's default micro-batch of 64 rows is ~9,000 tokens on ~125-token rows (12-13 GiB of activations) and
up to 64 x max_length on long ones. Checkpointing every layer recomputes the whole forward in the backward pass
and, the step being bound by the host's launches, doubles its time (docs/benchmarks.md); checkpointing none keeps
every layer's activations. Where `gradient_checkpointing` is left unset on a GPU, `fitted` looks at the largest
step the data can make (its micro-batch's longest rows): if that fits unchecked, nothing is checkpointed, as
before. Otherwise the run gets a `Fit`: before each micro-batch the trainer gives it the step's token count (a
shape, known on the host), and it checkpoints the fewest layers that keep the step's estimated peak under the
budget, the layers that keep the most first. A peak that came out above the highest estimate so far raises the
later estimates (`observe`).

The estimate, in bytes: what the allocator holds when the first step starts (the model, the adapter and its
optimizer's states) + per token, what each layer not checkpointed keeps for its backward (`layer_bytes`), each
checkpointed layer's input, and the backward's working set (the largest layer recomputed, and a layer's
gradients). Measured on an H100 with LFM2-1.2B's shape (bench/activation_memory.py on the defaults' rows and on
long rows, 8,448-19,456 tokens a step; bench/results-2026-12-07-h100-activations.json): the peak above the step's
start was 1.38 MB a token with no layer checkpointed, 0.73 MB with 8 conv layers kept, 0.18 MB with all 16
checkpointed, whatever share of the tokens the loss head scored. The estimate comes out between 0.8% under (no
layer checkpointed) and 10% over each step's peak, and HEADROOM keeps it 10% under the budget.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.modeling_layers import GradientCheckpointingLayer

log = logging.getLogger(__name__)

GIB = 2**30
# The estimate stays under this share of the budget: the allocator's own rounding and fragmentation (expandable
# segments: 15.97 GiB reserved for 15.65 allocated at the defaults, docs/benchmarks.md), cuBLAS's workspaces.
HEADROOM = 0.9
# Held once training runs beyond the adapter's gradients and AdamW states (measured: 0.14 GiB more at the second
# step than before the first for 5.6M trainable parameters, which take 0.05): cuBLAS's workspaces, the batch.
RUNNING_EXTRA = 128 * 2**20
# The backward's working set per token beyond the layer it recomputes, in elements: the feed-forward's width and
# four times the hidden one (a layer's gradients as the backward reaches it; measured with no layer checkpointed,
# LFM2-1.2B: 1.38 MB a token against the 1.35 MB the layers keep).
WORK_HIDDEN = 4
# Where saudial's kernels are not on the layer (kernels off): upstream's modules keep more per token (the SwiGLU's
# and the norms' intermediates). A factor over the fused count, not measured; `observe` corrects it after a step.
UNFUSED_FACTOR = 2.5


def layer_widths(layer: Any) -> tuple[int, int, int, bool]:
    """(hidden, feed-forward, key/value, attention?) widths of an LFM2 decoder layer."""
    hidden = layer.operator_norm.weight.numel()
    ffn = getattr(layer.feed_forward.w1, "out_features", 4 * hidden)
    attention = bool(getattr(layer, "is_attention_layer", False))
    kv = getattr(layer.self_attn.k_proj, "out_features", hidden) if attention else 0
    return hidden, ffn, kv, attention


def layer_bytes(layer: Any, element: int) -> int:
    """Bytes per token that `layer` keeps for its backward when it is not checkpointed: its input and the normed
    input, the operator's (a conv layer: the projected B, C, x; an attention layer: q, k, v before and after their
    norms and the rotary embedding, the attention's output), the residual sum and its norm, and the feed-forward's
    w1 and w3 outputs and their product. Measured on LFM2-1.2B's shape: 72 KB a conv layer, ~105 KB an attention
    layer; this counts 73.7 and 102.4. A layer without saudial's kernels (model/fast_lfm2.py) keeps more."""
    hidden, ffn, kv, attention = layer_widths(layer)
    fused = getattr(layer, "_saudial_cpu", None) is not None
    count = (12 * hidden + 4 * kv if attention else 6 * hidden) + 3 * ffn
    return int(count * element * (1 if fused else UNFUSED_FACTOR))


def worst_step(lengths: Sequence[int], batch: int, max_length: int, multiple: int | None) -> int:
    """The most tokens one padding-free micro-batch of `batch` rows can hold: its longest rows, padded."""
    tokens = sum(sorted((min(n, max_length) for n in lengths), reverse=True)[:batch])
    return -(-tokens // multiple) * multiple if multiple else tokens


def decoder_layers(model: torch.nn.Module) -> list[Any]:
    """The model's checkpointable decoder layers, in order (transformers' GradientCheckpointingLayer)."""
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def budget_bytes() -> int:
    """What this process's allocator may hold on the current GPU: its free memory and what it holds already, under
    PyTorch's own cap (`per_process_memory_fraction` in PYTORCH_CUDA_ALLOC_CONF, for a GPU shared with others)."""
    free, total = torch.cuda.mem_get_info()
    capped = int(total * torch.cuda.get_per_process_memory_fraction())
    return min(capped, free + torch.cuda.memory_reserved())


@dataclass
class Fit:
    """Which decoder layers each training step checkpoints (see the module's docstring)."""

    layers: Sequence[Any]  # the decoder layers; each reads its `gradient_checkpointing` flag in every forward
    keeps: Sequence[int]  # per layer: bytes per token kept when not checkpointed (layer_bytes)
    inputs: Sequence[int]  # per layer: bytes per token kept when checkpointed (its input)
    work: int  # bytes per token of the backward's working set beyond what the layers keep
    fixed: int  # bytes held when the first step starts, the optimizer's states included (set then: `start`)
    budget: int  # bytes the estimate stays under (HEADROOM of what the allocator may hold)
    keep_weights: bool = False  # whether the frozen weights stay dequantized (in `fixed`)
    extra: int = RUNNING_EXTRA  # bytes held once training runs beyond what is held when it starts (`start`)
    usable: int = 0  # what the allocator may hold (budget_bytes), for the summary
    scale: float = 1.0  # raised where a step's peak came out above the highest estimate
    counts: list[int] = field(default_factory=list)  # layers checkpointed, per micro-batch
    tokens: list[int] = field(default_factory=list)  # tokens, per micro-batch
    highest: int = 0  # the highest estimate of a step run so far
    order: list[int] = field(init=False)  # the layers in the order they are checkpointed
    per_token: list[int] = field(init=False)  # bytes per token with 0, 1, ... layers checkpointed
    unchecked: int = 0  # the largest step's estimate with no layer checkpointed and the weights kept (`fitted`)

    def __post_init__(self) -> None:
        # The layers in the order they are checkpointed, those that keep the most first; then, for each count c of
        # layers checkpointed, the bytes per token: the first c layers' inputs, the others' activations, the
        # backward's working set with the largest of the first c recomputed. Computed once: `count` runs before
        # every micro-batch, on a step bound by the host.
        self.order = sorted(range(len(self.layers)), key=lambda i: (-self.keeps[i], i))
        self.per_token = []
        for c in range(len(self.layers) + 1):
            first, rest = self.order[:c], self.order[c:]
            kept = sum(self.inputs[i] for i in first) + sum(self.keeps[i] for i in rest)
            self.per_token.append(kept + self.work + max((self.keeps[i] for i in first), default=0))

    def need(self, tokens: int, checkpointed: int) -> int:
        """The estimated peak of a step of `tokens` tokens with `checkpointed` layers recomputed."""
        return self.fixed + int(tokens * self.per_token[checkpointed] * self.scale)

    def count(self, tokens: int) -> int:
        """The fewest layers to checkpoint for a step of `tokens` to fit; all of them where none fits."""
        return next((c for c in range(len(self.layers) + 1) if self.need(tokens, c) <= self.budget), len(self.layers))

    def apply(self, tokens: int) -> int:
        """Set each layer's flag for the next micro-batch of `tokens`; how many are checkpointed."""
        if not self.counts:
            self.start()
        self.observe()
        checkpointed = self.count(tokens)
        self.checkpoint(checkpointed)
        self.counts.append(checkpointed)
        self.tokens.append(tokens)
        self.highest = max(self.highest, self.need(tokens, checkpointed))
        return checkpointed

    def checkpoint(self, count: int) -> None:
        """Flag the first `count` layers of `order` to be checkpointed, and only those."""
        chosen = set(self.order[:count])
        for i, layer in enumerate(self.layers):
            layer.gradient_checkpointing = i in chosen

    def start(self) -> None:
        """At the first step: what the allocator holds now, and what the optimizer will hold."""
        if torch.cuda.is_available():
            self.fixed = torch.cuda.memory_allocated() + self.extra

    def observe(self) -> None:
        """Raise the per-token estimates where the peak so far came out above the highest estimate so far: what the
        allocator reserved, which is what PyTorch's cap and the GPU bound."""
        if not self.counts or not torch.cuda.is_available():
            return
        peak = torch.cuda.max_memory_reserved()
        if peak > self.highest > self.fixed:
            self.scale *= (peak - self.fixed) / (self.highest - self.fixed) * 1.05
            log.debug("activation memory: peak %.2f GiB above the estimate %.2f GiB", peak / GIB, self.highest / GIB)
            self.highest = peak

    def summary(self) -> dict[str, Any]:
        """For the run's metrics: the budget and the layers checkpointed per micro-batch."""
        counts = self.counts or [0]
        return {
            "budget_gib": round(self.usable / GIB, 2),
            "layers": len(self.layers),
            "checkpointed_min": min(counts),
            "checkpointed_max": max(counts),
            "checkpointed_mean": round(sum(counts) / len(counts), 2),
            "tokens_max": max(self.tokens or [0]),
            "frozen_weights_kept": self.keep_weights,
            "estimate_scale": round(self.scale, 3),
        }


def plan(layers: Sequence[Any], element: int, held: int, budget: int) -> Fit:
    """A Fit for `layers` in a compute dtype of `element` bytes; `held`: bytes the allocator will hold when training
    starts; `budget`: what it may hold."""
    keeps = [layer_bytes(layer, element) for layer in layers]
    inputs = [layer_widths(layer)[0] * element for layer in layers]
    work = max((WORK_HIDDEN * layer_widths(layer)[0] + layer_widths(layer)[1]) * element for layer in layers)
    return Fit(layers, keeps, inputs, work, held, int(budget * HEADROOM), usable=budget)


def fitted(
    model: torch.nn.Module, worst: int, element: int, trainable: int, kept: int, budget: int | None = None
) -> Fit | None:
    """A Fit for `model` (loaded on the GPU) where its largest step (`worst` tokens) would not fit unchecked; None
    where it would. `trainable`: bytes of the adapter's parameters, gradients and optimizer states to come; `kept`:
    bytes of the frozen weights dequantized (`dequantize_once`), kept where even the largest step fits with them
    once every layer is checkpointed."""
    layers = decoder_layers(model)
    if not layers:
        return None
    extra = trainable + RUNNING_EXTRA
    held = torch.cuda.memory_allocated() + extra
    fit = plan(layers, element, held + kept, budget if budget is not None else budget_bytes())
    fit.extra = extra
    fit.unchecked = fit.need(worst, 0)
    if fit.unchecked <= fit.budget:
        return None
    fit.keep_weights = fit.need(worst, len(layers)) <= fit.budget
    if not fit.keep_weights:
        fit.fixed = held
    return fit

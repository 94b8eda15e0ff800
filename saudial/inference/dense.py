"""Faster generation from a 4-bit model: its base weights dequantized once, to the dtype it computes in, and
the adapter folded into them while it generates.

Upstream: bitsandbytes dequantizes every 4-bit weight again on every forward pass. In training that is
what QLoRA is for (memory); in generation every decode step pays it for all 92 adapted linears of
LFM2-1.2B: measured on an H200 (docs/benchmarks.md), a decode step at batch 99 took 56 ms in 4-bit and
17.8 ms with the weights dequantized once, with the same greedy tokens on all 99 requests (it is the same
dequantize kernel, run once). The dense copy costs ~2.1 GB of bf16 weights instead of ~0.6 GB.

Upstream: PEFT runs an unmerged LoRA layer as the base matmul, lora_A, lora_B, a scale, an add and a copy:
six operations instead of one on every decode step of every adapted linear, which left generation with the
adapter at ~40% of the base model's rate (docs/benchmarks.md). `merged_adapter` folds each layer's update into
a copy of its dense weight, W + s B A (PEFT's `get_delta_weight`), for as long as the adapter generates, and
puts the weights back unchanged afterwards. PEFT's own `merge` cannot do it here: on a 4-bit LoRA layer it
quantizes the merged weight again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

log = logging.getLogger(__name__)


def dequantize_base_weights(model: torch.nn.Module) -> int:
    """Replace every bitsandbytes `Linear4bit` in `model` by an `nn.Linear` holding the weight it dequantizes
    to; LoRA layers keep wrapping it (their adapter stays separate). Returns how many were replaced."""
    try:
        import bitsandbytes as bnb
    except ImportError:  # no bitsandbytes, no 4-bit layers
        return 0
    from saudial.model import fused_lora

    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, bnb.nn.Linear4bit):
                setattr(parent, name, _dense_copy(child))
                fused_lora.forget(parent)  # what the fused LoRA step kept for the replaced layer
                count += 1
    if count:
        log.info("generation: %d 4-bit layers dequantized once (faster decoding, same tokens)", count)
    return count


@torch.no_grad()
def _dense_copy(layer: Any) -> torch.nn.Linear:
    """The nn.Linear that computes what `layer` computes. Its weight is read through the layer's own forward
    on the identity matrix (exact: one weight times 1.0 per output), not with bitsandbytes' dequantize
    function, because the CPU kernels repack the 4-bit data on first use into a layout that function does
    not read."""
    weight = next(p for p in layer.parameters())
    dtype = getattr(layer, "compute_dtype", None) or torch.bfloat16
    device = weight.device
    in_features, out_features = int(layer.in_features), int(layer.out_features)
    zero = layer(torch.zeros(1, in_features, dtype=dtype, device=device))[0]  # the bias, if any
    dense = torch.nn.Linear(in_features, out_features, bias=layer.bias is not None, device=device, dtype=dtype)
    for start in range(0, in_features, 4096):  # columns in chunks: the identity stays small
        stop = min(start + 4096, in_features)
        probe = torch.zeros(stop - start, in_features, dtype=dtype, device=device)
        probe[:, start:stop] = torch.eye(stop - start, dtype=dtype, device=device)
        dense.weight[:, start:stop] = (layer(probe) - zero).T.to(dtype)
    if layer.bias is not None:
        dense.bias.copy_(zero.to(dtype))
    return dense.requires_grad_(False)


@contextmanager
def merged_adapter(model: torch.nn.Module) -> Iterator[int]:
    """Inside, every LoRA layer on a dense linear computes with W + s B A in one matmul (PEFT's merged state);
    on exit, an exception included, each gets its own weight back, bit for bit. Yields how many layers were
    merged. The merged weights are new tensors beside the originals (~2.1 GB more for LFM2-1.2B in bf16
    while inside). Do not switch the adapter off inside (`disable_adapter`): PEFT would unmerge a 4-bit LoRA
    layer by quantizing again; evaluation runs the base model before this, not within it."""
    from peft.tuners.lora import LoraLayer

    swapped: list[tuple[Any, Any]] = []
    try:
        with torch.no_grad():
            for module in model.modules():
                layer: Any = module
                if not isinstance(module, LoraLayer) or layer.merged or layer.disable_adapters:
                    continue
                adapters = [a for a in layer.active_adapters if a in layer.lora_A]
                base = layer.get_base_layer()
                if len(adapters) != 1 or adapters[0] in layer.lora_variant or type(base) is not torch.nn.Linear:
                    continue  # several adapters, DoRA, a 4-bit base: left as they are
                weight = base.weight
                delta = layer.get_delta_weight(adapters[0])
                merged = (weight.float() + delta.float()).to(weight.dtype)
                base.weight = torch.nn.Parameter(merged, requires_grad=False)
                layer.merged_adapters = [adapters[0]]  # PEFT's forward now runs the base layer alone
                swapped.append((layer, weight))
        if swapped:
            log.info("generation with the adapter: %d LoRA layers merged into their weights", len(swapped))
        yield len(swapped)
    finally:
        for layer, weight in swapped:
            layer.get_base_layer().weight = weight
            layer.merged_adapters = []

"""One autograd step per adapted 4-bit linear: the frozen NF4 matmul and the LoRA update in one Function.

PEFT runs a LoRA layer on a bitsandbytes 4-bit linear as separate steps: the base matmul (bitsandbytes'
MatMul4Bit), a defensive copy of its output, lora_A, lora_B, a multiply by the scaling and an add, each a
node of the autograd graph with its own Python and kernels, forward and backward. With the default batch
on an H200 the step is bound by that host work (docs/benchmarks.md: ~4,000 kernels and ~15,000 operator
calls per step, 92 adapted linears). Here the same math is one `torch.autograd.Function`:

    forward   y = s (x A^T) B^T + x W^T        W dequantized from NF4 by bitsandbytes' own kernel
    backward  dx = (s dy B) A + dy W,   dA = (s dy B)^T x,   dB = s dy^T (x A^T)

The LoRA term is computed first and the frozen matmul accumulates into it (`addmm_`, beta 1): the big GEMM
reads the output in its epilogue while it is bound by arithmetic, where the other order made the rank-r
GEMM read and write the whole output again while bound by memory (no output-sized multiply, add or copy
either way). The weights, their names and the saved adapter are PEFT's own: only the layer's forward is
swapped, per module, and any call this does not cover (several active adapters, merged or disabled
adapters, dropout, DoRA, a bias, mixed dtypes) goes to PEFT's forward unchanged. tests/test_fused_lora.py
checks that the loss and every LoRA gradient match PEFT's path on a real 4-bit model.

The frozen weight's per-block scales are dequantized once, on the layer's first fused call. Upstream: with QLoRA's
double quantization bitsandbytes stores those scales in 8 bits and dequantizes them again (one kernel and
an add) before every 4-bit dequantize, forward and backward: 368 extra kernels and their Python per step
for LFM2-1.2B's 92 layers. The fp32 scales cost ~4 bytes per 64 weights (~65 MB); the values are the ones
bitsandbytes computes on each call (tests/test_fused_lora.py checks them bit for bit).

`keep_dequantized` goes further where memory allows (`dequantize_once`, on by itself where nothing is
checkpointed, or where checkpointing fitted to each step leaves room: model/activation_memory.py): each frozen
weight is dequantized once for the whole run and kept in the compute dtype, so no step dequantizes (184 kernels
and their Python per step on LFM2-1.2B, forward and backward). The values are the same (bitsandbytes' kernel, run
once); the copy costs 2 bytes per weight (~2.1 GB on LFM2-1.2B) on top of the 4-bit weights, which stay what the
model holds.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Sequence
from typing import Any

import bitsandbytes as bnb
import torch
from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit


def block_scales(quant_state: Any) -> torch.Tensor:
    """The weight's per-block scales in fp32, computed as bitsandbytes' `dequantize_4bit` does on every call."""
    if not quant_state.nested:
        return quant_state.absmax.float()
    absmax = bnb.functional.dequantize_blockwise(quant_state.absmax, quant_state.state2)
    absmax += quant_state.offset
    return absmax.float()


def _dequantize(weight: torch.Tensor, quant_state: Any, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The frozen weight, (out, in) in `dtype`: bitsandbytes' own 4-bit dequantize kernel with the cached scales."""
    return torch.ops.bitsandbytes.dequantize_4bit.default(
        weight, scales, quant_state.blocksize, quant_state.quant_type, quant_state.shape, dtype
    )


class Frozen:
    """One adapted layer's frozen 4-bit weight as the fused step reads it: dequantized on each use (QLoRA's
    memory), or once and kept (`keep_dequantized`)."""

    __slots__ = ("absmax", "dense", "quant_state", "scales", "stack", "weight")

    def __init__(self, weight: Any) -> None:  # bitsandbytes' Params4bit
        self.weight, self.quant_state = weight, weight.quant_state
        # bitsandbytes moves a weight to another device by giving its quant state new tensors: the cache is
        # for this quant state's absmax tensor.
        self.absmax = self.quant_state.absmax
        self.scales = block_scales(self.quant_state)
        self.dense: torch.Tensor | None = None
        # The kept weights of the layers stacked with this one (`keep_dequantized`), `dense` a block of its rows.
        self.stack: torch.Tensor | None = None

    def get(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight, (out, in) in `dtype`."""
        if self.dense is not None and self.dense.dtype == dtype:
            return self.dense
        return _dequantize(self.weight, self.quant_state, self.scales, dtype)


class _QLoRALinear(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, frozen: Frozen, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float
    ) -> torch.Tensor:
        x2d = x.reshape(-1, x.shape[-1])
        h = x2d @ lora_a.t()  # (tokens, r)
        # addmm with beta 0 ignores its input (documented: not even a NaN in it propagates), so the scaling is
        # applied inside the GEMM with no separate multiply; an uninitialized 0-dim input costs no kernel.
        zero = x2d.new_empty(())
        out = torch.addmm(zero, h, lora_b.t(), beta=0, alpha=scaling)  # (tokens, out): s h B^T
        out.addmm_(x2d, frozen.get(x.dtype).t())  # + x W^T, the frozen base, accumulated by the big GEMM
        ctx.save_for_backward(x2d, h, lora_a, lora_b)
        ctx.frozen, ctx.scaling, ctx.x_shape = frozen, scaling, x.shape  # W dequantized again backward
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2d, h, lora_a, lora_b = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).to(x2d.dtype)
        zero = g.new_empty(())
        gb = torch.addmm(zero, g, lora_b, beta=0, alpha=ctx.scaling)  # (tokens, r): s dy B
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (gb @ lora_a).addmm_(g, ctx.frozen.get(g.dtype)).view(ctx.x_shape)  # (s dy B) A + dy W
        if ctx.needs_input_grad[2]:
            grad_a = gb.t() @ x2d
        if ctx.needs_input_grad[3]:
            grad_b = torch.addmm(zero, g.t(), h, beta=0, alpha=ctx.scaling)
        return grad_x, None, grad_a, grad_b, None


def _frozen(layer: LoraLinear4bit) -> Frozen:
    """The layer's Frozen, made on first use and again when bitsandbytes gave its weight a new quant state."""
    weight: Any = layer.base_layer.weight
    frozen: Frozen | None = layer.__dict__.get("_saudial_frozen")
    if frozen is None or frozen.weight is not weight or frozen.absmax is not weight.quant_state.absmax:
        frozen = Frozen(weight)
        layer.__dict__["_saudial_frozen"] = frozen  # a plain attribute: not in the state dict, not saved
    return frozen


def _lora_of(layer: LoraLinear4bit, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """The layer's (lora_A, lora_B, scaling) where the fused step covers this call and the layer's state; None where
    PEFT's own forward must run."""
    adapter = layer.active_adapters[0] if len(layer.active_adapters) == 1 else None
    base = layer.base_layer
    weight = base.weight
    if (
        adapter is None
        or layer.disable_adapters
        or layer.merged
        or adapter not in layer.lora_A
        or adapter in layer.lora_variant
        or not isinstance(layer.lora_dropout[adapter], torch.nn.Identity)
        or base.bias is not None
        or getattr(weight, "quant_state", None) is None
        or getattr(weight.quant_state, "packing_format_for_cpu", False)  # bitsandbytes' CPU inference layout
        or x.dtype != base.compute_dtype
        or layer.lora_A[adapter].weight.dtype != x.dtype
        or layer.lora_B[adapter].weight.dtype != x.dtype
    ):
        return None
    return layer.lora_A[adapter].weight, layer.lora_B[adapter].weight, layer.scaling[adapter]


def _fused_forward(self: LoraLinear4bit, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The Function where it covers this call and the layer's state; PEFT's own forward otherwise."""
    lora = None if args or kwargs else _lora_of(self, x)
    if lora is None:
        return type(self).forward(self, x, *args, **kwargs)
    return _QLoRALinear.apply(x, _frozen(self), *lora)


def fuse(model: torch.nn.Module) -> int:
    """Give every PEFT LoRA layer on a 4-bit linear in `model` the one-Function forward; returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, LoraLinear4bit):
            module.forward = types.MethodType(_fused_forward, module)  # type: ignore[method-assign]
            count += 1
    return count


@torch.no_grad()
def keep_dequantized(model: torch.nn.Module, stacks: Iterable[Sequence[torch.nn.Module]] = ()) -> tuple[int, int]:
    """Dequantize the frozen weight of every fused LoRA layer in `model` once, for the rest of the run, in the
    layer's compute dtype; returns (layers, bytes kept). The layers of each of `stacks` (layers that
    model/stacked_lora.py runs together) are kept as one tensor, each layer's weight a block of its rows, in order.
    Call after `fuse`."""
    count = size = 0
    done: set[int] = set()
    for members in stacks:
        layers = [m for m in members if isinstance(m, LoraLinear4bit) and _quantized(m)]
        if len(layers) < 2 or len(layers) != len(members):
            continue
        dtypes = {getattr(layer.base_layer, "compute_dtype", None) for layer in layers}
        dtype = dtypes.pop()
        if dtypes or not isinstance(dtype, torch.dtype):
            continue
        frozen = [_frozen(layer) for layer in layers]
        stack = torch.cat([_dequantize(f.weight, f.quant_state, f.scales, dtype) for f in frozen])
        row = 0
        for f in frozen:
            rows = f.quant_state.shape[0]
            f.dense, f.stack, row = stack[row : row + rows], stack, row + rows
        count, size = count + len(layers), size + stack.numel() * stack.element_size()
        done.update(id(layer) for layer in layers)
    for module in model.modules():
        if not isinstance(module, LoraLinear4bit) or id(module) in done or not _quantized(module):
            continue
        base: Any = module.base_layer
        frozen_one = _frozen(module)
        frozen_one.dense = _dequantize(frozen_one.weight, frozen_one.quant_state, frozen_one.scales, base.compute_dtype)
        count, size = count + 1, size + frozen_one.dense.numel() * frozen_one.dense.element_size()
    return count, size


def dequantized_size(model: torch.nn.Module) -> int:
    """Bytes that `keep_dequantized` would keep for `model`'s fused 4-bit LoRA layers."""
    size = 0
    for module in model.modules():
        if isinstance(module, LoraLinear4bit) and _quantized(module):
            base: Any = module.base_layer
            size += base.weight.quant_state.shape.numel() * base.compute_dtype.itemsize
    return size


def _quantized(layer: LoraLinear4bit) -> bool:
    return getattr(layer.base_layer.weight, "quant_state", None) is not None


def forget(layer: torch.nn.Module) -> None:
    """Drop what the fused step keeps on `layer` (the scales, a dequantized copy): its base layer is replaced."""
    layer.__dict__.pop("_saudial_frozen", None)

"""One autograd step per adapted 4-bit linear: the frozen NF4 matmul and the LoRA update in one Function.

PEFT runs a LoRA layer on a bitsandbytes 4-bit linear as separate steps: the base matmul (bitsandbytes'
MatMul4Bit), a defensive copy of its output, lora_A, lora_B, a multiply by the scaling and an add, each a
node of the autograd graph with its own Python and kernels, forward and backward. With the default batch
on an H200 the step is bound by that host work (docs/benchmarks.md: ~4,000 kernels and ~15,000 operator
calls per step, 92 adapted linears). Here the same math is one `torch.autograd.Function`:

    forward   y = x W^T + s (x A^T) B^T        W dequantized from NF4 by bitsandbytes' own kernel
    backward  dx = dy W + (s dy B) A,   dA = (s dy B)^T x,   dB = s dy^T (x A^T)

with the LoRA update added into the base output by one `addmm_` (no output-sized multiply, add or copy).
The weights, their names and the saved adapter are PEFT's own: only the layer's forward is swapped, per
module, and any call this does not cover (several active adapters, merged or disabled adapters, dropout,
DoRA, a bias, mixed dtypes) goes to PEFT's forward unchanged. tests/test_fused_lora.py checks that the
loss and every LoRA gradient match PEFT's path on a real 4-bit model.

The frozen weight's per-block scales are dequantized once, on the layer's first fused call. Upstream: with QLoRA's
double quantization bitsandbytes stores those scales in 8 bits and dequantizes them again (one kernel and
an add) before every 4-bit dequantize, forward and backward: 368 extra kernels and their Python per step
for LFM2-1.2B's 92 layers. The fp32 scales cost ~4 bytes per 64 weights (~65 MB); the values are the ones
bitsandbytes computes on each call (tests/test_fused_lora.py checks them bit for bit).
"""

from __future__ import annotations

import types
from typing import Any

import bitsandbytes as bnb
import torch
import torch.nn.functional as F
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


class _QLoRALinear(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        quant_state: Any,
        scales: torch.Tensor,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scaling: float,
    ) -> torch.Tensor:
        x2d = x.reshape(-1, x.shape[-1])
        out = F.linear(x2d, _dequantize(weight, quant_state, scales, x.dtype))  # (tokens, out): the frozen base
        h = x2d @ lora_a.t()  # (tokens, r)
        out.addmm_(h, lora_b.t(), alpha=scaling)  # + s h B^T, added in the GEMM
        ctx.save_for_backward(x2d, h, lora_a, lora_b)
        ctx.weight, ctx.quant_state, ctx.scales = weight, quant_state, scales  # dequantized again backward
        ctx.scaling, ctx.x_shape = scaling, x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2d, h, lora_a, lora_b = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).to(x2d.dtype)
        # addmm with beta 0 ignores its input (documented: not even a NaN in it propagates), so the scaling is
        # applied inside the GEMM with no separate multiply; an uninitialized 0-dim input costs no kernel.
        zero = g.new_empty(())
        gb = torch.addmm(zero, g, lora_b, beta=0, alpha=ctx.scaling)  # (tokens, r): s dy B
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            w = _dequantize(ctx.weight, ctx.quant_state, ctx.scales, g.dtype)  # (out, in)
            grad_x = (g @ w).addmm_(gb, lora_a).view(ctx.x_shape)
        if ctx.needs_input_grad[4]:
            grad_a = gb.t() @ x2d
        if ctx.needs_input_grad[5]:
            grad_b = torch.addmm(zero, g.t(), h, beta=0, alpha=ctx.scaling)
        return grad_x, None, None, None, grad_a, grad_b, None


def _fused_forward(self: LoraLinear4bit, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The Function where it covers this call and the layer's state; PEFT's own forward otherwise."""
    adapter = self.active_adapters[0] if len(self.active_adapters) == 1 else None
    base = self.base_layer
    weight = base.weight
    if (
        args
        or kwargs
        or adapter is None
        or self.disable_adapters
        or self.merged
        or adapter not in self.lora_A
        or adapter in self.lora_variant
        or not isinstance(self.lora_dropout[adapter], torch.nn.Identity)
        or base.bias is not None
        or getattr(weight, "quant_state", None) is None
        or getattr(weight.quant_state, "packing_format_for_cpu", False)  # bitsandbytes' CPU inference layout
        or x.dtype != base.compute_dtype
        or self.lora_A[adapter].weight.dtype != x.dtype
        or self.lora_B[adapter].weight.dtype != x.dtype
    ):
        return type(self).forward(self, x, *args, **kwargs)
    quant_state = weight.quant_state
    cached = getattr(self, "_saudial_scales", None)
    # Computed once per quantized weight; bitsandbytes moves a weight to another device by giving its quant
    # state new tensors, so the cache is for this quant state's absmax tensor.
    if cached is None or cached[0] is not quant_state.absmax:
        cached = (quant_state.absmax, block_scales(quant_state))
        self._saudial_scales = cached  # a plain attribute: not in the state dict, not saved
    lora_a, lora_b = self.lora_A[adapter].weight, self.lora_B[adapter].weight
    return _QLoRALinear.apply(x, weight, quant_state, cached[1], lora_a, lora_b, self.scaling[adapter])


def fuse(model: torch.nn.Module) -> int:
    """Give every PEFT LoRA layer on a 4-bit linear in `model` the one-Function forward; returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, LoraLinear4bit):
            module.forward = types.MethodType(_fused_forward, module)  # type: ignore[method-assign]
            count += 1
    return count

"""Adapted 4-bit linears that read one input as one autograd step: an attention's q, k and v, a feed-forward's w1 and
w3 (model/fast_lfm2.py calls `stacked` for them).

Apart, each is one fused step (model/fused_lora.py): three GEMMs forward and five backward, and autograd adds their
input gradients. Most of them are small: the rank-r LoRA products, whose weight gradients reduce over every token
of the batch (cuBLAS splits that reduction, with a memset and a reduce kernel of its own), and each costs the host a
launch. Here the LoRA A's of the layers are one matrix (their product with the input, and its weight gradient, one
GEMM each), the input gradient is summed in place, and where the layers' frozen weights are kept dequantized as one
tensor and the outputs go side by side (`keep_dequantized` with the stack; w1 and w3, whose outputs the SwiGLU
kernel reads side by side), their frozen matmul is one GEMM each way too. Per feed-forward: 11 GEMMs a step
instead of 16 and one add fewer; per attention: 18 instead of 24 and two adds fewer. The weights, their
gradients and the saved adapter are PEFT's own, and a call any layer's fused step would not cover returns None
(the caller runs the layers one by one). tests/test_fused_lora.py checks outputs and gradients against PEFT's
layers and a float64 reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

from saudial.model import fused_lora


class _StackedQLoRALinear(torch.autograd.Function):
    """Adapted 4-bit linears reading one input as one step: their outputs side by side on the last axis of one
    tensor, or (`split`) one tensor each.

    forward   h = x [A_1; ..; A_n]^T (one GEMM), y_i = s_i h_i B_i^T, then y += x [W_1; ..; W_n]^T (one GEMM where
              the weights are kept as one tensor and the outputs are one, else y_i += x W_i^T)
    backward  dh_i = s_i dy_i B_i, dx = dh [A_1; ..; A_n] + dy [W_1; ..; W_n] (likewise), dA = dh^T x (one GEMM
              each), dB_i = s_i dy_i^T h_i
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, plan: tuple[Any, ...], *loras: torch.Tensor) -> Any:
        frozen, scalings, stack, split = plan
        lora_a, lora_b = loras[0::2], loras[1::2]
        ranks, widths = [a.shape[0] for a in lora_a], [b.shape[0] for b in lora_b]
        x2d = x.reshape(-1, x.shape[-1])
        a_cat = torch.cat(lora_a)  # (R, in): a few kilobytes
        h = x2d @ a_cat.t()  # (tokens, R)
        if split:
            outs = [x2d.new_empty(x2d.shape[0], width) for width in widths]
        else:
            out = x2d.new_empty(x2d.shape[0], sum(widths))
            outs = list(out.split(widths, 1))
        zero = x2d.new_empty(())
        for h_i, b_i, out_i, s_i in zip(h.split(ranks, 1), lora_b, outs, scalings, strict=True):
            torch.addmm(zero, h_i, b_i.t(), beta=0, alpha=s_i, out=out_i)  # into its columns: no copy
        if stack is not None and not split:
            out.addmm_(x2d, stack.t())
        else:
            for f, out_i in zip(frozen, outs, strict=True):
                out_i.addmm_(x2d, f.get(x.dtype).t())
        ctx.save_for_backward(x2d, h, a_cat, *lora_b)
        ctx.plan, ctx.ranks, ctx.widths, ctx.x_shape = plan, ranks, widths, x.shape
        if split:
            return tuple(out_i.view(*x.shape[:-1], out_i.shape[-1]) for out_i in outs)
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2d, h, a_cat, *lora_b = ctx.saved_tensors
        frozen, scalings, stack, split = ctx.plan
        if split:  # autograd gives an output that reached no loss a gradient of zeros
            gs = [g_i.reshape(-1, g_i.shape[-1]).to(x2d.dtype) for g_i in grads]
        else:
            g = grads[0].reshape(-1, grads[0].shape[-1]).to(x2d.dtype)
            gs = list(g.split(ctx.widths, 1))
        hs = h.split(ctx.ranks, 1)
        zero = x2d.new_empty(())
        gh = x2d.new_empty(x2d.shape[0], sum(ctx.ranks))  # (tokens, R): s_i dy_i B_i side by side
        for g_i, b_i, gh_i, s_i in zip(gs, lora_b, gh.split(ctx.ranks, 1), scalings, strict=True):
            torch.addmm(zero, g_i, b_i, beta=0, alpha=s_i, out=gh_i)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = gh @ a_cat
            if stack is not None and not split:
                grad_x.addmm_(g, stack)
            else:
                for f, g_i in zip(frozen, gs, strict=True):
                    grad_x.addmm_(g_i, f.get(g_i.dtype))
            grad_x = grad_x.view(ctx.x_shape)
        grads_a = (gh.t() @ x2d).split(ctx.ranks, 0) if any(ctx.needs_input_grad[2::2]) else [None] * len(lora_b)
        out: list[torch.Tensor | None] = [grad_x, None]
        for i, (g_i, h_i, s_i) in enumerate(zip(gs, hs, scalings, strict=True)):
            out.append(grads_a[i] if ctx.needs_input_grad[2 + 2 * i] else None)
            out.append(torch.addmm(zero, g_i.t(), h_i, beta=0, alpha=s_i) if ctx.needs_input_grad[3 + 2 * i] else None)
        return tuple(out)


def stacked(layers: Sequence[torch.nn.Module], x: torch.Tensor, split: bool = False) -> Any:
    """`x` through `layers` (fused LoRA layers that read the same input) as one step: their outputs side by side on
    the last axis of one tensor, in order, or (`split`) a tuple of one tensor each; None where any of them is not a
    fused layer or the fused step does not cover its call."""
    loras = []
    for layer in layers:
        if getattr(getattr(layer, "forward", None), "__func__", None) is not fused_lora._fused_forward:
            return None
        assert isinstance(layer, LoraLinear4bit)
        lora = fused_lora._lora_of(layer, x)
        if lora is None:
            return None
        loras.append(lora)
    frozen = tuple(fused_lora._frozen(layer) for layer in layers)  # type: ignore[arg-type]
    stack = None if split else _kept_stack(frozen, x.dtype)
    plan = (frozen, tuple(s for _, _, s in loras), stack, split)
    return _StackedQLoRALinear.apply(x, plan, *(t for a, b, _ in loras for t in (a, b)))


def _kept_stack(frozen: tuple[fused_lora.Frozen, ...], dtype: torch.dtype) -> torch.Tensor | None:
    """The weights of `frozen` kept as one (out, in) tensor, their blocks of rows in this order; None if not."""
    stack = frozen[0].stack
    if stack is None or stack.dtype != dtype:
        return None
    start = stack.data_ptr()
    for f in frozen:
        if f.stack is not stack or f.dense is None or f.dense.data_ptr() != start:
            return None
        start += f.dense.numel() * f.dense.element_size()
    return stack if start == stack.data_ptr() + stack.numel() * stack.element_size() else None

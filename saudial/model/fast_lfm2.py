"""LFM2's decoder layers on the Triton kernels of model/kernels.py (`fused_kernels`, CUDA).

Upstream (transformers 5.23) runs LFM2's element-wise work as chains of PyTorch kernels: with the default
batch on an H100 they were ~29% of the GPU's busy time per step (docs/benchmarks.md). `install` gives each
module of the model a forward that computes the same function with one kernel per piece, each way:

- `Lfm2MLP`: `w2(silu(w1 x) * w3 x)`, the product in one kernel (kernels.SwiGLU); where w1 and w3 are fused
  4-bit LoRA layers with their frozen weights kept dequantized, both projections and the product in one
  Function (`_GateUp`: one matmul for both frozen weights, one for both lora_A);
- `Lfm2DecoderLayer`: the residual add after the operator and the feed-forward norm after it in one kernel
  (kernels.AddRMSNorm), and its backward adds the residual stream's gradient in the same pass;
- `Lfm2RMSNorm` elsewhere (the operator norm, the q/k norms, the last norm): kernels.RMSNorm;
- `Lfm2ShortConv`: `B * x`, the depthwise causal conv over the padding-free batch's sequences (`seq_idx`:
  the boundaries model/short_conv.py keeps), `C *` and the transposed copy in one kernel
  (kernels.GatedShortConv), between the module's own `in_proj` and `out_proj`.

The projections stay the modules' own (the fused 4-bit LoRA of model/fused_lora.py). Each forward takes the
kernel only where it covers the call: CUDA tensors, frozen norm and conv weights, no cache (generation), no
padding mask, no conv bias; anything else runs the upstream forward unchanged. tests/test_kernels.py checks the
model's loss and gradients with and without them.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import torch
import torch.nn.functional as F


def available() -> bool:
    """Whether the kernels can run here: a CUDA GPU and triton."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _covered(x: torch.Tensor, cpu: bool) -> bool:
    return x.is_cuda or cpu


def _norm_ok(norm: Any, x: torch.Tensor, cpu: bool) -> bool:
    weight = norm.weight
    return _covered(x, cpu) and not weight.requires_grad and weight.dtype == x.dtype and x.dtype != torch.float64


def _norm_forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    from saudial.model import kernels

    if not _norm_ok(self, hidden_states, self._saudial_cpu):
        return self._saudial_fallback(hidden_states)
    out: torch.Tensor = kernels.RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon)
    return out


class _GateUp(torch.autograd.Function):
    """silu(w1 x) * w3 x where w1 and w3 are fused 4-bit LoRA layers (model/fused_lora.py) with their frozen
    weights kept dequantized: the two read the same x, so their frozen weights are one stacked matrix W and
    their lora_A one (2r, in) matrix, and each matmul runs once for both:

        forward   p = [s (x A1^T) B1^T | s (x A3^T) B3^T] + x W^T,   out = silu(p_gate) * p_up
        backward  dp from SwiGLU's backward; dx = [s dp_gate B1 | s dp_up B3] [A1; A3] + dp W, and the LoRA
                  gradients as fused_lora's step computes them, for each half

    Against the two fused layers and kernels.SwiGLU: 5 kernels fewer a layer each step, one autograd node
    instead of three, and no add of x's two gradients.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        a1: torch.Tensor,
        a3: torch.Tensor,
        b1: torch.Tensor,
        b3: torch.Tensor,
        scaling: float,
    ) -> torch.Tensor:
        from saudial.model import kernels

        x2d = x.reshape(-1, x.shape[-1])
        rank, width = a1.shape[0], b1.shape[0]
        lora_a = torch.cat((a1, a3))  # (2r, in)
        h = x2d @ lora_a.t()  # (tokens, 2r)
        zero = x2d.new_empty(())  # addmm with beta 0 ignores its input (fused_lora says why it is used)
        p = x2d.new_empty(x2d.shape[0], 2 * width)
        torch.addmm(zero, h[:, :rank], b1.t(), beta=0, alpha=scaling, out=p[:, :width])
        torch.addmm(zero, h[:, rank:], b3.t(), beta=0, alpha=scaling, out=p[:, width:])
        p.addmm_(x2d, weight.t())  # + x W^T: the frozen base of both, accumulated by one GEMM
        ctx.save_for_backward(x2d, h, p, lora_a, b1, b3)
        ctx.weight, ctx.scaling, ctx.x_shape = weight, scaling, x.shape
        out = kernels.swiglu_packed(p)
        return out.view(*x.shape[:-1], width)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        from saudial.model import kernels

        x2d, h, p, lora_a, b1, b3 = ctx.saved_tensors
        rank, width, scaling = b1.shape[1], b1.shape[0], ctx.scaling
        dp = kernels.swiglu_packed_backward(p, grad.reshape(-1, width).to(p.dtype))  # (tokens, 2 width)
        zero = dp.new_empty(())
        gb = dp.new_empty(dp.shape[0], 2 * rank)  # (tokens, 2r): [s dp_gate B1 | s dp_up B3]
        torch.addmm(zero, dp[:, :width], b1, beta=0, alpha=scaling, out=gb[:, :rank])
        torch.addmm(zero, dp[:, width:], b3, beta=0, alpha=scaling, out=gb[:, rank:])
        grad_x = (gb @ lora_a).addmm_(dp, ctx.weight).view(ctx.x_shape)
        grad_a = gb.t() @ x2d  # (2r, in): both lora_A gradients
        grad_b1 = torch.addmm(zero, dp[:, :width].t(), h[:, :rank], beta=0, alpha=scaling)
        grad_b3 = torch.addmm(zero, dp[:, width:].t(), h[:, rank:], beta=0, alpha=scaling)
        return grad_x, None, grad_a[:rank], grad_a[rank:], grad_b1, grad_b3, None


def gate_up_groups(model: torch.nn.Module) -> list[tuple[Any, Any]]:
    """(w1, w3) of each LFM2 MLP in `model` with the kernel forward and both fused 4-bit LoRA layers: the pairs
    whose frozen weights fused_lora.keep_dequantized should stack, for `_GateUp`."""
    from saudial.model import fused_lora

    mlps: list[Any] = [m for m in model.modules() if vars(m).get("_saudial_cpu") is not None and hasattr(m, "w3")]
    return [(m.w1, m.w3) for m in mlps if fused_lora.fused(m.w1) and fused_lora.fused(m.w3)]


def gate_up_parts(mlp: Any, x: torch.Tensor) -> tuple[Any, ...] | None:
    """`_GateUp`'s arguments after x for `mlp`, or None where it does not cover the call: w1 and w3 fused 4-bit
    LoRA layers that cover it, their frozen weights kept dequantized in one stack (`gate_up_groups`), one rank
    and scaling."""
    from saudial.model import fused_lora

    if not _covered(x, mlp._saudial_cpu) or not (fused_lora.fused(mlp.w1) and fused_lora.fused(mlp.w3)):
        return None
    gate, up = fused_lora.parts(mlp.w1, x), fused_lora.parts(mlp.w3, x)
    if gate is None or up is None or gate[3] != up[3] or gate[1].shape != up[1].shape:
        return None
    weight = fused_lora.stacked([gate[0], up[0]])
    if weight is None or weight.dtype != x.dtype or weight.device != x.device:
        return None
    return weight, gate[1], up[1], gate[2], up[2], gate[3]


def _mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    from saudial.model import kernels

    found = gate_up_parts(self, x)
    if found is not None:
        return self.w2(_GateUp.apply(x, *found))
    gate, up = self.w1(x), self.w3(x)
    if not _covered(gate, self._saudial_cpu) or gate.dtype != up.dtype or gate.shape != up.shape:
        return self.w2(F.silu(gate) * up)
    return self.w2(kernels.SwiGLU.apply(gate, up))


def _layer_forward(
    self: Any,
    hidden_states: torch.Tensor,
    position_embeddings: Any = None,
    attention_mask: Any = None,
    position_ids: Any = None,
    past_key_values: Any = None,
    **kwargs: Any,
) -> torch.Tensor:
    from saudial.model import kernels

    residual = hidden_states
    if self.is_attention_layer:
        out, _ = self.self_attn(
            hidden_states=self.operator_norm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            **kwargs,
        )
    else:
        out = self.conv(
            hidden_states=self.operator_norm(hidden_states),
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            **kwargs,
        )
    norm = self.ffn_norm
    if not _norm_ok(norm, out, self._saudial_cpu) or out.dtype != residual.dtype or out.shape != residual.shape:
        hidden_states = out + residual
        return hidden_states + self.feed_forward(norm(hidden_states))
    hidden_states, normed = kernels.AddRMSNorm.apply(out, residual, norm.weight, norm.variance_epsilon)
    return hidden_states + self.feed_forward(normed)


def _checkpointed_layer_forward(self: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
    """`_layer_forward` under gradient checkpointing when the model has it on, as upstream's layers checkpoint.

    transformers 5.23 checkpoints in the class's `forward` (GradientCheckpointingLayer wraps it when the class is
    defined), so an instance's own `forward` would run unchecked: the activations of every layer would be kept
    (14.0 GiB instead of ~3 on LFM2-1.2B's defaults). This does what that wrapper does: no cache under
    checkpointing, the hidden states positional, the rest bound.
    """
    if self.gradient_checkpointing and self.training:
        kwargs["use_cache"] = False
        kwargs["past_key_values"] = None
        return self._gradient_checkpointing_func(functools.partial(_layer_forward, self, **kwargs), *args)
    return _layer_forward(self, *args, **kwargs)


# The flat sequence ids of the last seq_idx seen: every conv layer of a forward pass gets the same seq_idx tensor.
_SEQ: dict[str, Any] = {}


def sequence_ids(seq_idx: torch.Tensor | None, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """[batch * length] int32: equal for two tokens exactly when they belong to one sequence of one row."""
    key = None if seq_idx is None or seq_idx.is_inference() else (seq_idx._version, batch, length, device)
    if seq_idx is not None and key is not None and _SEQ.get("seq_idx") is seq_idx and _SEQ.get("key") == key:
        cached: torch.Tensor = _SEQ["ids"]
        return cached
    rows = torch.arange(batch, device=device, dtype=torch.int32)[:, None] * (length + 1)
    ids = rows if seq_idx is None else rows + seq_idx.to(device=device, dtype=torch.int32).reshape(batch, length)
    ids = ids.expand(batch, length).reshape(-1).contiguous()
    if key is not None:
        _SEQ.update(seq_idx=seq_idx, key=key, ids=ids)
    return ids


def _conv_forward(
    self: Any, hidden_states: torch.Tensor, past_key_values: Any = None, attention_mask: Any = None, **kwargs: Any
) -> torch.Tensor:
    from saudial.model import kernels

    weight = self.conv.weight
    if (
        past_key_values is not None
        or attention_mask is not None
        or self.conv.bias is not None
        or weight.requires_grad
        or not _covered(hidden_states, self._saudial_cpu)
        or hidden_states.dtype == torch.float64
    ):
        return type(self).forward(self, hidden_states, past_key_values, attention_mask, **kwargs)
    batch, length = hidden_states.shape[:2]
    bcx = self.in_proj(hidden_states)  # [batch, T, 3H]: B, C, x
    seq = sequence_ids(kwargs.get("seq_idx"), batch, length, bcx.device)
    y: torch.Tensor = kernels.GatedShortConv.apply(bcx, weight.squeeze(1), seq)
    return self.out_proj(y)


def install(model: torch.nn.Module, cpu: bool = False) -> dict[str, int]:
    """Give `model`'s LFM2 modules the kernel forwards; how many of each. `cpu`: on CPU tensors too (tests, under
    TRITON_INTERPRET=1)."""
    from transformers.models.lfm2 import modeling_lfm2 as lfm2

    counts = {"mlp": 0, "norm": 0, "layer": 0, "conv": 0}
    for module in model.modules():
        kind = type(module)
        if getattr(module, "_saudial_cpu", None) is not None:  # installed already
            continue
        if kind is lfm2.Lfm2MLP:
            module.forward = types.MethodType(_mlp_forward, module)
            counts["mlp"] += 1
        elif kind is lfm2.Lfm2RMSNorm:
            vars(module)["_saudial_fallback"] = module.forward  # the fused or upstream forward, bound
            module.forward = types.MethodType(_norm_forward, module)
            counts["norm"] += 1
        elif kind is lfm2.Lfm2DecoderLayer:
            module.forward = types.MethodType(_checkpointed_layer_forward, module)
            counts["layer"] += 1
        elif kind is lfm2.Lfm2ShortConv:
            module.forward = types.MethodType(_conv_forward, module)
            counts["conv"] += 1
        else:
            continue
        vars(module)["_saudial_cpu"] = cpu
    return counts

"""LFM2's decoder layers on the Triton kernels of model/kernels.py (`fused_kernels`, CUDA).

Upstream (transformers 5.23) runs LFM2's element-wise work as chains of PyTorch kernels: with the default
batch on an H100 they were ~29% of the GPU's busy time per step (docs/benchmarks.md). `install` gives each
module of the model a forward that computes the same function with one kernel per piece, each way:

- `Lfm2MLP`: `w2(silu(w1 x) * w3 x)`, the product in one kernel (kernels.SwiGLU). Where w1 and w3 are both fused
  4-bit LoRA layers, they run as one step (model/stacked_lora.py: one GEMM for both LoRA A's and one for
  both frozen weights, each way, instead of two of each and the add of their input gradients), and the kernel
  reads their outputs side by side (kernels.SwiGLURows);
- `Lfm2Attention`: upstream's forward, with q, k and v from one fused LoRA step where all three are fused LoRA
  layers (one GEMM for the three LoRA A's each way, the input gradient summed in place), and each of q and k
  normed and rotated (`apply_rotary_pos_emb`) in one kernel each way (model/qk_kernels.py) instead of ~12;
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
import logging
import threading
import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def available() -> bool:
    """Whether the kernels can run here: a CUDA GPU and triton."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def key_triton_early(wanted: bool = True) -> Callable[[], None]:
    """Start computing Triton's key of this installation on a thread; returns the wait for it (a no-op where not
    `wanted`, or without a GPU and triton).

    Upstream (triton 3.6, 3.7), the first kernel a process launches computes that key first, before it loads
    the compiled kernel from the cache or compiles it (`triton.runtime.cache.triton_key`, kept for the process):
    a sha256 of Triton's compiler sources and of its ~460 MB libtriton, ~0.4 s of the first training step on an
    H100 host. Started before the model loads, it is done by the first step; the file reads and hashlib release
    the GIL, and it imports nothing (tests/test_kernels.py), so the load goes on beside it. Wait before the first
    launch: a launch meanwhile would compute it again from the start."""
    if not (wanted and available()):
        return lambda: None
    from triton.runtime.cache import triton_key

    def key() -> None:
        try:
            triton_key()
        except Exception as e:  # the first launch computes it again and reports what is wrong
            log.debug("Triton's cache key: %s", type(e).__name__)

    thread = threading.Thread(target=key, name="triton-key", daemon=True)
    thread.start()
    return thread.join


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


def _mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    from saudial.model import kernels, stacked_lora

    gate_up = stacked_lora.stacked((self.w1, self.w3), x) if _covered(x, self._saudial_cpu) else None
    if gate_up is not None:
        return self.w2(kernels.SwiGLURows.apply(gate_up))
    gate, up = self.w1(x), self.w3(x)
    if not _covered(gate, self._saudial_cpu) or gate.dtype != up.dtype or gate.shape != up.shape:
        return self.w2(F.silu(gate) * up)
    return self.w2(kernels.SwiGLU.apply(gate, up))


def _attention_forward(
    self: Any,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: Any,
    past_key_values: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """Upstream's `Lfm2Attention.forward` with q, k and v from one stacked LoRA step (each projection its own
    where they are not fused LoRA layers), and each of q and k normed and rotated in one kernel
    (model/qk_kernels.py); upstream's forward with a cache (generation) or off the kernels' devices."""
    from transformers.models.lfm2 import modeling_lfm2 as lfm2

    from saudial.model import qk_kernels, stacked_lora

    if past_key_values is not None or not _covered(hidden_states, self._saudial_cpu):
        return type(self).forward(self, hidden_states, position_embeddings, attention_mask, past_key_values, **kwargs)
    qkv = stacked_lora.stacked((self.q_proj, self.k_proj, self.v_proj), hidden_states, split=True)
    if qkv is None:
        qkv = (self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states))
    hidden_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
    query, key, value = (t.view(hidden_shape) for t in qkv)
    cos, sin = position_embeddings
    q_norm, k_norm = self.q_layernorm, self.k_layernorm
    if all(qk_kernels.covers(t, n.weight, cos, sin) for t, n in ((query, q_norm), (key, k_norm))):
        query = qk_kernels.QKNormRope.apply(query, q_norm.weight, cos, sin, q_norm.variance_epsilon).transpose(1, 2)
        key = qk_kernels.QKNormRope.apply(key, k_norm.weight, cos, sin, k_norm.variance_epsilon).transpose(1, 2)
    else:
        query, key = q_norm(query).transpose(1, 2), k_norm(key).transpose(1, 2)
        query, key = lfm2.apply_rotary_pos_emb(query, key, cos, sin)
    attention = lfm2.ALL_ATTENTION_FUNCTIONS.get_interface(
        self.config._attn_implementation, lfm2.eager_attention_forward
    )
    out, weights = attention(
        self, query, key, value.transpose(1, 2), attention_mask, dropout=0.0, scaling=self.scaling, **kwargs
    )
    return self.out_proj(out.reshape(*hidden_states.shape[:-1], -1).contiguous()), weights


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


def stacks(model: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """The layers that the installed feed-forward forwards run as one step (w1 and w3 of each,
    model/stacked_lora.py), for fused_lora.keep_dequantized to keep each pair's weights as one tensor."""
    from transformers.models.lfm2 import modeling_lfm2 as lfm2

    installed = (m for m in model.modules() if vars(m).get("_saudial_cpu") is not None)
    return [(m.w1, m.w3) for m in installed if type(m) is lfm2.Lfm2MLP]


def install(model: torch.nn.Module, cpu: bool = False) -> dict[str, int]:
    """Give `model`'s LFM2 modules the kernel forwards; how many of each. `cpu`: on CPU tensors too (tests, under
    TRITON_INTERPRET=1)."""
    from transformers.models.lfm2 import modeling_lfm2 as lfm2

    counts = {"mlp": 0, "attention": 0, "norm": 0, "layer": 0, "conv": 0}
    for module in model.modules():
        kind = type(module)
        if getattr(module, "_saudial_cpu", None) is not None:  # installed already
            continue
        if kind is lfm2.Lfm2MLP:
            module.forward = types.MethodType(_mlp_forward, module)
            counts["mlp"] += 1
        elif kind is lfm2.Lfm2Attention:
            module.forward = types.MethodType(_attention_forward, module)
            counts["attention"] += 1
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

"""LFM2's short convolution on padding-free rows: each example's first tokens never see the previous one's.

Padding-free batches put all examples of a micro-batch in one flat row (training/trainer.py); LFM2's short conv
must not read the last tokens of the previous example. Upstream: transformers' torch fallback for
`causal_conv1d_fn` (used without the `causal_conv1d` CUDA package) ignores TRL's `seq_idx` and lets every
example's first tokens see the previous example's last ones (5.17 and 5.23; some builds refuse `seq_idx`
instead). `install_boundary_aware_conv` replaces that module-level function in `modeling_lfm2`
(process-wide; it equals the upstream one when `seq_idx` is absent). Attention layers keep samples apart
through `position_ids`. tests/test_padding_free.py checks per-example losses against padded batches and the
gradients against float64 finite differences; tests/test_upstream.py watches the upstream behaviour.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class _MaskedCausalConv(torch.autograd.Function):
    """y[t] = w[:, K-1] x[t] + sum over lags l of keep[l][t] w[:, K-1-l] x[t-l], keep[l][t] in {0, 1}.

    One multiply and one fused multiply-add per lag each way, instead of autograd's shifted copies, masks
    and products (~30 kernels per layer and step): only the masks are kept for the backward pass, and the
    input too when the conv weight trains (QLoRA freezes it)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        kernel = weight.shape[-1]
        out = x * weight[:, kernel - 1, None]
        for lag in range(1, min(kernel, x.shape[-1])):
            out[..., lag:].addcmul_(x[..., :-lag] * keep[lag - 1][..., lag:], weight[:, kernel - 1 - lag, None])
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight, keep)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, keep = ctx.saved_tensors
        kernel, length = weight.shape[-1], grad.shape[-1]
        grad_x = grad * weight[:, kernel - 1, None] if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        if grad_w is not None:
            grad_w[:, kernel - 1] = (grad * x).sum((0, 2))
        for lag in range(1, min(kernel, length)):
            kept = grad[..., lag:] * keep[lag - 1][..., lag:]
            if grad_x is not None:
                grad_x[..., :-lag].addcmul_(kept, weight[:, kernel - 1 - lag, None])
            if grad_w is not None:
                grad_w[:, kernel - 1 - lag] = (kept * x[..., :-lag]).sum((0, 2))
        return grad_x, grad_w, None


# The masks of the last seq_idx seen: every conv layer of a forward pass gets the same seq_idx tensor.
_KEEP: dict[str, Any] = {}


def _keep_masks(seq_idx: torch.Tensor, kernel: int, dtype: torch.dtype) -> torch.Tensor:
    """[K-1, batch, 1, time]: 1 where token t-lag belongs to token t's sequence, else 0."""
    # An inference-mode tensor has no version counter to tell an in-place change: not cached.
    key = None if seq_idx.is_inference() else (seq_idx._version, kernel, dtype)
    if key is not None and _KEEP.get("seq_idx") is seq_idx and _KEEP.get("key") == key:
        cached: torch.Tensor = _KEEP["keep"]
        return cached
    batch, length = seq_idx.shape
    keep = torch.zeros(max(kernel - 1, 1), batch, 1, length, dtype=dtype, device=seq_idx.device)
    for lag in range(1, min(kernel, length)):
        keep[lag - 1, :, 0, lag:] = seq_idx[:, lag:] == seq_idx[:, :-lag]
    if key is not None:
        _KEEP.update(seq_idx=seq_idx, key=key, keep=keep)
    return keep


def boundary_aware_causal_conv1d(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    seq_idx: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Depthwise causal conv, [batch, channels, time] with weight [channels, kernel].

    out[t] = sum_k weight[:, K-1-k] * x[t-k], counting x[t-k] only when token t-k belongs to the
    same sequence as token t (`seq_idx` equal). Without `seq_idx` it is the plain causal conv.
    """
    x = hidden_states.to(weight.dtype)
    seq_len, kernel = x.shape[-1], weight.shape[-1]
    if seq_idx is None:
        out = F.conv1d(x, weight.unsqueeze(1), bias, padding=kernel - 1, groups=x.shape[1])[..., :seq_len]
    else:
        out = _MaskedCausalConv.apply(x, weight, _keep_masks(seq_idx.to(x.device), kernel, x.dtype))
        if bias is not None:
            out = out + bias[:, None]
    if activation is not None:
        out = F.silu(out) if activation in ("silu", "swish") else getattr(F, activation)(out)
    return out.to(hidden_states.dtype)


# transformers' own causal_conv1d_fn, kept when the patch replaces it (tests/test_upstream.py checks it).
_UPSTREAM: dict[str, Any] = {}


def upstream_causal_conv1d() -> Any:
    """transformers' LFM2 `causal_conv1d_fn`, patched or not."""
    from transformers.models.lfm2 import modeling_lfm2

    return _UPSTREAM.get("causal_conv1d_fn", modeling_lfm2.causal_conv1d_fn)


def install_boundary_aware_conv() -> None:
    """Route LFM2's short conv through the boundary-aware version (idempotent)."""
    from transformers.models.lfm2 import modeling_lfm2

    if modeling_lfm2.causal_conv1d_fn is not boundary_aware_causal_conv1d:
        _UPSTREAM.setdefault("causal_conv1d_fn", modeling_lfm2.causal_conv1d_fn)
        modeling_lfm2.causal_conv1d_fn = boundary_aware_causal_conv1d

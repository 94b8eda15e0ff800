"""LFM2 attention's q/k norm and rotary embedding in one Triton kernel each way (model/fast_lfm2.py uses it).

Upstream (transformers 5.23) runs, for each of q and k, `Lfm2RMSNorm` over each head (saudial's RMSNorm kernel)
and then `apply_rotary_pos_emb`: `x * cos + rotate_half(x) * sin`, five PyTorch kernels (two products, a negation,
a `cat` and a sum) each way, and as many again backward: ~24 launches per attention layer and step on a step bound
by its launches. `QKNormRope` computes both in one pass: per head row of D values, the RMS statistics in fp32, the
normalized values rounded to the input's dtype and multiplied by the weight (rounded again, as upstream's norm
does), then the rotation in fp32 from those values, rounded once at the end (upstream rounds each of its
bf16 products and the sum). Only the input and the per-row statistics are kept for the backward.

Layout: x is (batch, tokens, heads, D) contiguous (q and k as the stacked LoRA step writes them), cos and sin
(batch, tokens, D) as LFM2's rotary embedding gives them; D = 2 * HALF with HALF a power of two (LFM2's D: 64).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

ROWS = 16  # head rows per program


@triton.jit
def _qk_fwd(
    x_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr, rstd_ptr, rows, heads, eps, HALF: tl.constexpr, ROWS: tl.constexpr
):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]
    c = tl.arange(0, HALF)[None, :]
    ok = r < rows
    at, tok = r * (2 * HALF) + c, (r // heads) * (2 * HALF) + c
    x1 = tl.load(x_ptr + at, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + at + HALF, mask=ok, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt((tl.sum(x1 * x1, 1) + tl.sum(x2 * x2, 1)) / (2 * HALF) + eps)
    dtype = out_ptr.dtype.element_ty
    w1 = tl.load(w_ptr + c).to(tl.float32)
    w2 = tl.load(w_ptr + HALF + c).to(tl.float32)
    # upstream's norm: the normalized values rounded to the dtype, then times the weight, rounded again
    y1 = (w1 * (x1 * rstd[:, None]).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    y2 = (w2 * (x2 * rstd[:, None]).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    c1 = tl.load(cos_ptr + tok, mask=ok, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + tok + HALF, mask=ok, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + tok, mask=ok, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + tok + HALF, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + at, (y1 * c1 - y2 * s1).to(dtype), mask=ok)  # rotate_half(y) = [-y2, y1]
    tl.store(out_ptr + at + HALF, (y2 * c2 + y1 * s2).to(dtype), mask=ok)
    tl.store(rstd_ptr + r, rstd[:, None], mask=ok)


@triton.jit
def _qk_bwd(
    x_ptr, w_ptr, cos_ptr, sin_ptr, rstd_ptr, g_ptr, dx_ptr, rows, heads, HALF: tl.constexpr, ROWS: tl.constexpr
):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]
    c = tl.arange(0, HALF)[None, :]
    ok = r < rows
    at, tok = r * (2 * HALF) + c, (r // heads) * (2 * HALF) + c
    g1 = tl.load(g_ptr + at, mask=ok, other=0.0).to(tl.float32)
    g2 = tl.load(g_ptr + at + HALF, mask=ok, other=0.0).to(tl.float32)
    c1 = tl.load(cos_ptr + tok, mask=ok, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + tok + HALF, mask=ok, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + tok, mask=ok, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + tok + HALF, mask=ok, other=0.0).to(tl.float32)
    # the rotation's transpose, then the weight: the gradient of the normalized values
    dn1 = (g1 * c1 + g2 * s2) * tl.load(w_ptr + c).to(tl.float32)
    dn2 = (g2 * c2 - g1 * s1) * tl.load(w_ptr + HALF + c).to(tl.float32)
    rstd = tl.load(rstd_ptr + r, mask=ok, other=0.0)
    n1 = tl.load(x_ptr + at, mask=ok, other=0.0).to(tl.float32) * rstd
    n2 = tl.load(x_ptr + at + HALF, mask=ok, other=0.0).to(tl.float32) * rstd
    mean = (tl.sum(dn1 * n1, 1) + tl.sum(dn2 * n2, 1))[:, None] / (2 * HALF)
    dtype = dx_ptr.dtype.element_ty
    tl.store(dx_ptr + at, (rstd * (dn1 - n1 * mean)).to(dtype), mask=ok)
    tl.store(dx_ptr + at + HALF, (rstd * (dn2 - n2 * mean)).to(dtype), mask=ok)


def covers(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Whether QKNormRope computes this call: x (batch, tokens, heads, D), a frozen weight of x's dtype, cos and
    sin (batch, tokens, D), D twice a power of two of at least 4."""
    half = x.shape[-1] // 2
    return (
        x.dim() == 4
        and x.shape[-1] == 2 * half
        and half >= 4  # the smallest block given to Triton: 4 values
        and half & (half - 1) == 0
        and x.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and weight.dtype == x.dtype
        and not weight.requires_grad
        and cos.shape == sin.shape == (*x.shape[:2], x.shape[-1])
    )


class QKNormRope(torch.autograd.Function):
    """apply_rotary_pos_emb's rotation of weight * rms_norm(x) over each head of x; the weight is frozen."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float
    ) -> torch.Tensor:
        x, cos, sin = x.contiguous(), cos.contiguous(), sin.contiguous()
        rows, heads, half = x.numel() // x.shape[-1], x.shape[-2], x.shape[-1] // 2
        out = torch.empty_like(x)
        rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
        grid = (triton.cdiv(rows, ROWS),)
        _qk_fwd[grid](x, weight, cos, sin, out, rstd, rows, heads, eps, HALF=half, ROWS=ROWS)
        ctx.save_for_backward(x, weight, cos, sin, rstd)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, cos, sin, rstd = ctx.saved_tensors
        rows, heads, half = x.numel() // x.shape[-1], x.shape[-2], x.shape[-1] // 2
        dx = torch.empty_like(x)
        grid = (triton.cdiv(rows, ROWS),)
        _qk_bwd[grid](x, weight, cos, sin, rstd, grad.contiguous(), dx, rows, heads, HALF=half, ROWS=ROWS)
        return dx, None, None, None, None

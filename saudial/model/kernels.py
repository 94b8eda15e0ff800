"""Triton kernels for LFM2's element-wise work: SwiGLU (of two tensors, or of one holding both side by side),
RMSNorm (with the residual add before it) and the masked short convolution, each one launch forward and one
backward.

Upstream, each of these is a chain of PyTorch element-wise kernels, each reading and writing the whole
activation: SwiGLU's `silu(a) * b` is 2 kernels forward and ~4 backward; the RMSNorm times its weight 2
forward and ~3 backward (plus the residual add before it); the short conv's `B * x`, the depthwise conv
of length 3 with the padding-free boundaries (model/short_conv.py), `C *` and the transposed copy about 8
forward and 10 backward. Here each is one pass over its inputs, arithmetic in fp32. They compute the same
functions (tests/test_kernels.py checks them and their gradients against float64 references, on the CPU
under TRITON_INTERPRET=1 and on CUDA); the frozen weights (norm weights, conv weights: QLoRA trains only
the adapter) get no gradient here, and any call these do not cover goes to the torch path (model/fast_lfm2.py).
Written for triton 3.6 and 3.7 (only their common language).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

BLOCK = 1024  # columns per program of the SwiGLU kernels


@triton.jit
def _swiglu_fwd(a_ptr, b_ptr, out_ptr, width, stride, b_offset, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < width
    a = tl.load(a_ptr + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + row * stride + b_offset + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * width + cols, (a * tl.sigmoid(a) * b).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd(a_ptr, b_ptr, g_ptr, da_ptr, db_ptr, width, stride, b_offset, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < width
    a = tl.load(a_ptr + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + row * stride + b_offset + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + row * width + cols, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(a)
    dtype = da_ptr.dtype.element_ty
    tl.store(da_ptr + row * stride + cols, (g * b * sig * (1.0 + a * (1.0 - sig))).to(dtype), mask=mask)
    tl.store(db_ptr + row * stride + b_offset + cols, (g * a * sig).to(dtype), mask=mask)


def _swiglu(a: torch.Tensor, b: torch.Tensor, width: int, b_offset: int) -> torch.Tensor:
    """out[row, c] = silu(a[row, c]) * b[row, b_offset + c] for rows of `width` outputs, a and b contiguous with
    rows as long as a's last axis (b_offset > 0: b is a, [a | b] side by side)."""
    stride = a.shape[-1]
    out = a.new_empty(*a.shape[:-1], width)
    _swiglu_fwd[(out.numel() // width, triton.cdiv(width, BLOCK))](a, b, out, width, stride, b_offset, BLOCK=BLOCK)
    return out


def _swiglu_grad(a: torch.Tensor, b: torch.Tensor, grad: torch.Tensor, b_offset: int) -> tuple[torch.Tensor, ...]:
    width, stride = grad.shape[-1], a.shape[-1]
    da = torch.empty_like(a)
    db = da if b_offset else torch.empty_like(b)  # side by side: one tensor holds both
    grid = (grad.numel() // width, triton.cdiv(width, BLOCK))
    _swiglu_bwd[grid](a, b, grad.contiguous(), da, db, width, stride, b_offset, BLOCK=BLOCK)
    return (da,) if b_offset else (da, db)


class SwiGLU(torch.autograd.Function):
    """silu(a) * b."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = a.contiguous(), b.contiguous()
        ctx.save_for_backward(a, b)
        return _swiglu(a, b, a.shape[-1], 0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a, b = ctx.saved_tensors
        return _swiglu_grad(a, b, grad, 0)


class SwiGLURows(torch.autograd.Function):
    """silu(a) * b for gu = [a | b] side by side on the last axis ([..., 2F] to [..., F]), as the stacked LoRA step
    gives LFM2's w1 and w3 outputs (model/stacked_lora.py); its gradient comes back the same way, one tensor."""

    @staticmethod
    def forward(ctx: Any, gu: torch.Tensor) -> torch.Tensor:
        gu = gu.contiguous()
        ctx.save_for_backward(gu)
        return _swiglu(gu, gu, gu.shape[-1] // 2, gu.shape[-1] // 2)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (gu,) = ctx.saved_tensors
        return _swiglu_grad(gu, gu, grad, gu.shape[-1] // 2)[0]


@triton.jit
def _rms_fwd(
    x_ptr, r_ptr, w_ptr, h_ptr, out_ptr, rstd_ptr, width, eps, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < width
    x = tl.load(x_ptr + row * width + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:  # h = x + r, rounded to the activations' dtype as torch's add rounds it
        x = (x.to(tl.float32) + tl.load(r_ptr + row * width + cols, mask=mask, other=0.0).to(tl.float32)).to(
            h_ptr.dtype.element_ty
        )
        tl.store(h_ptr + row * width + cols, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / width + eps)
    tl.store(rstd_ptr + row, rstd)
    normed = (xf * rstd).to(out_ptr.dtype.element_ty).to(tl.float32)  # upstream rounds before the weight
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * width + cols, (w * normed).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_bwd(h_ptr, w_ptr, rstd_ptr, g_ptr, gh_ptr, dx_ptr, width, HAS_GH: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < width
    x = tl.load(h_ptr + row * width + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + row * width + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.load(rstd_ptr + row)
    gw = g * w
    xhat = x * rstd
    dx = rstd * (gw - xhat * (tl.sum(gw * xhat, axis=0) / width))
    if HAS_GH:  # the gradient reaching h directly (the residual stream) joins here
        dx += tl.load(gh_ptr + row * width + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(dx_ptr + row * width + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _rms_launch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float) -> tuple[Any, ...]:
    width = x.shape[-1]
    x2 = x.reshape(-1, width)
    rows = x2.shape[0]
    h = torch.empty_like(x2) if residual is not None else x2
    out = torch.empty_like(x2)
    rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
    r2 = residual.reshape(-1, width) if residual is not None else x2
    block = triton.next_power_of_2(width)
    _rms_fwd[(rows,)](x2, r2, weight, h, out, rstd, width, eps, HAS_RESIDUAL=residual is not None, BLOCK=block)
    return h, out, rstd


class RMSNorm(torch.autograd.Function):
    """weight * rms_norm(x) (statistics in fp32, normalized values rounded to x's dtype); the weight is frozen."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x = x.contiguous()
        h, out, rstd = _rms_launch(x, None, weight, eps)
        ctx.save_for_backward(h, weight, rstd)
        return out.view(x.shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, weight, rstd = ctx.saved_tensors
        return _rms_grad(h, weight, rstd, grad, None).view(grad.shape), None, None


class AddRMSNorm(torch.autograd.Function):
    """(h, weight * rms_norm(h)) with h = x + residual: the residual add and the norm after it in one pass."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, residual = x.contiguous(), residual.contiguous()
        h, out, rstd = _rms_launch(x, residual, weight, eps)
        ctx.save_for_backward(h, weight, rstd)
        return h.view(x.shape), out.view(x.shape)

    @staticmethod
    def backward(ctx: Any, grad_h: torch.Tensor | None, grad: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        h, weight, rstd = ctx.saved_tensors
        if grad is None:
            assert grad_h is not None
            return grad_h, grad_h, None, None
        dx = _rms_grad(h, weight, rstd, grad, grad_h).view(grad.shape)
        return dx, dx, None, None


def _rms_grad(
    h: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, grad: torch.Tensor, grad_h: torch.Tensor | None
) -> torch.Tensor:
    width = h.shape[-1]
    g2 = grad.contiguous().reshape(-1, width)
    gh = grad_h.contiguous().reshape(-1, width) if grad_h is not None else g2
    dx = torch.empty_like(h)
    block = triton.next_power_of_2(width)
    _rms_bwd[(h.shape[0],)](h, weight, rstd, g2, gh, dx, width, HAS_GH=grad_h is not None, BLOCK=block)
    return dx


@triton.jit
def _conv_fwd(bcx_ptr, seq_ptr, w_ptr, y_ptr, n, width, K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)[:, None]
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    rows_ok = t < n
    cols_ok = c < width
    seq = tl.load(seq_ptr + t, mask=rows_ok, other=-1)
    acc = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)
    for lag in tl.static_range(K):
        src = t - lag
        ok = rows_ok & (src >= 0)
        same = ok & (tl.load(seq_ptr + src, mask=ok, other=-2) == seq)
        m = same & cols_ok
        b = tl.load(bcx_ptr + src * 3 * width + c, mask=m, other=0.0).to(tl.float32)
        x = tl.load(bcx_ptr + src * 3 * width + 2 * width + c, mask=m, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + c * K + (K - 1 - lag), mask=cols_ok, other=0.0).to(tl.float32)
        acc += w * (b * x)
    gate = tl.load(bcx_ptr + t * 3 * width + width + c, mask=rows_ok & cols_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + t * width + c, (gate * acc).to(y_ptr.dtype.element_ty), mask=rows_ok & cols_ok)


@triton.jit
def _conv_bwd(
    bcx_ptr, seq_ptr, w_ptr, g_ptr, d_ptr, n, width, K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr
):
    t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)[:, None]
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    rows_ok = t < n
    cols_ok = c < width
    here = rows_ok & cols_ok
    seq = tl.load(seq_ptr + t, mask=rows_ok, other=-1)
    conv = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)  # the forward's conv output at t, for dC
    dz = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)  # d(B * x) at t: from the outputs t + lag that read it
    for lag in tl.static_range(K):
        w = tl.load(w_ptr + c * K + (K - 1 - lag), mask=cols_ok, other=0.0).to(tl.float32)
        src = t - lag
        ok = rows_ok & (src >= 0)
        m = ok & (tl.load(seq_ptr + src, mask=ok, other=-2) == seq) & cols_ok
        b = tl.load(bcx_ptr + src * 3 * width + c, mask=m, other=0.0).to(tl.float32)
        x = tl.load(bcx_ptr + src * 3 * width + 2 * width + c, mask=m, other=0.0).to(tl.float32)
        conv += w * (b * x)
        dst = t + lag
        ok = dst < n
        m = ok & (tl.load(seq_ptr + dst, mask=ok, other=-2) == seq) & cols_ok
        g = tl.load(g_ptr + dst * width + c, mask=m, other=0.0).to(tl.float32)
        gate = tl.load(bcx_ptr + dst * 3 * width + width + c, mask=m, other=0.0).to(tl.float32)
        dz += w * (g * gate)
    g = tl.load(g_ptr + t * width + c, mask=here, other=0.0).to(tl.float32)
    b = tl.load(bcx_ptr + t * 3 * width + c, mask=here, other=0.0).to(tl.float32)
    x = tl.load(bcx_ptr + t * 3 * width + 2 * width + c, mask=here, other=0.0).to(tl.float32)
    dtype = d_ptr.dtype.element_ty
    tl.store(d_ptr + t * 3 * width + c, (dz * x).to(dtype), mask=here)
    tl.store(d_ptr + t * 3 * width + width + c, (g * conv).to(dtype), mask=here)
    tl.store(d_ptr + t * 3 * width + 2 * width + c, (dz * b).to(dtype), mask=here)


CONV_BLOCK_T, CONV_BLOCK_C = 16, 128


class GatedShortConv(torch.autograd.Function):
    """LFM2's short conv block between its projections: bcx [..., T, 3H] (B, C, x along the last axis, as
    `in_proj` gives them) to y [..., T, H] with y[t] = C[t] * sum over lags l < K of w[:, K-1-l] B[t-l] x[t-l],
    counting token t - l only when `seq` (one id per token, flattened) says it is in t's sequence. The conv
    weight [H, K] is frozen."""

    @staticmethod
    def forward(ctx: Any, bcx: torch.Tensor, weight: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        bcx = bcx.contiguous()
        width, kernel = weight.shape
        n = bcx.numel() // (3 * width)
        y = bcx.new_empty(*bcx.shape[:-1], width)
        grid = (triton.cdiv(n, CONV_BLOCK_T), triton.cdiv(width, CONV_BLOCK_C))
        _conv_fwd[grid](bcx, seq, weight, y, n, width, K=kernel, BLOCK_T=CONV_BLOCK_T, BLOCK_C=CONV_BLOCK_C)
        ctx.save_for_backward(bcx, weight, seq)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        bcx, weight, seq = ctx.saved_tensors
        width, kernel = weight.shape
        n = bcx.numel() // (3 * width)
        d = torch.empty_like(bcx)
        grid = (triton.cdiv(n, CONV_BLOCK_T), triton.cdiv(width, CONV_BLOCK_C))
        g = grad.contiguous()
        _conv_bwd[grid](bcx, seq, weight, g, d, n, width, K=kernel, BLOCK_T=CONV_BLOCK_T, BLOCK_C=CONV_BLOCK_C)
        return d, None, None

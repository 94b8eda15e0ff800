"""The Triton kernels of model/kernels.py against float64 references, forward and backward; and LFM2 with them
(model/fast_lfm2.py) against LFM2 without. On the CPU they run in Triton's interpreter (TRITON_INTERPRET=1, set
here before triton is imported); on a CUDA machine the same checks run compiled (`-m gpu`) as well."""

from __future__ import annotations

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    assert os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py sets it before triton is imported"

triton = pytest.importorskip("triton")

from saudial.model import fast_lfm2, kernels  # noqa: E402

# Where CUDA is, triton compiles for it and cannot run CPU tensors: the same checks then run there, and only there.
DEVICES = [pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)] if CUDA else [pytest.param("cpu", id="interpreted")]
DTYPES = [torch.float32, torch.bfloat16]
BOUND = {torch.float32: 1e-5, torch.bfloat16: 1e-2}  # ||out - ref|| / ||ref||: fp32 math, then the output dtype


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.isfinite().all(), "an output element was not written or is not finite"
    return float((out.detach().double() - ref).norm() / ref.norm())


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every buffer the kernels allocate starts as NaN: an element they do not write fails the check."""
    empty_like, new_empty = torch.empty_like, torch.Tensor.new_empty

    def nan(t: torch.Tensor) -> torch.Tensor:
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty_like", lambda t, **kw: nan(empty_like(t, **kw)))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda t, *a, **kw: nan(new_empty(t, *a, **kw)))


def _inputs(shape: tuple[int, ...], dtype: torch.dtype, device: str, n: int = 2) -> list[torch.Tensor]:
    return [torch.randn(shape, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_() for _ in range(n)]


def _grads(out: torch.Tensor, inputs: list[torch.Tensor], grad: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(out, inputs, grad))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 7, 33), (2, 5, 300), (3001,)])
def test_swiglu(device: str, dtype: torch.dtype, shape: tuple[int, ...], poisoned: None) -> None:
    a, b = _inputs(shape, dtype, device)
    g = torch.randn(shape, dtype=torch.float64)
    out = kernels.SwiGLU.apply(a, b)
    da, db = _grads(out, [a, b], g.to(device, dtype))
    a64, b64 = (t.detach().cpu().double().requires_grad_() for t in (a, b))
    ref = torch.nn.functional.silu(a64) * b64
    ra, rb = _grads(ref, [a64, b64], g)
    assert out.dtype == dtype and out.shape == shape
    for mine, theirs in ((out, ref), (da, ra), (db, rb)):
        assert _rel(mine.cpu(), theirs.detach()) < BOUND[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 7, 2 * 33), (2, 5, 2 * 1500), (3, 2 * 1024)])
def test_swiglu_rows(device: str, dtype: torch.dtype, shape: tuple[int, ...], poisoned: None) -> None:
    """SwiGLU of [a | b] side by side (the stacked w1 and w3 outputs), the gradient of both in one tensor."""
    (gu,) = _inputs(shape, dtype, device, n=1)
    width = shape[-1] // 2
    g = torch.randn(*shape[:-1], width, dtype=torch.float64)
    out = kernels.SwiGLURows.apply(gu)
    (dgu,) = _grads(out, [gu], g.to(device, dtype))
    gu64 = gu.detach().cpu().double().requires_grad_()
    ref = torch.nn.functional.silu(gu64[..., :width]) * gu64[..., width:]
    (rgu,) = _grads(ref, [gu64], g)
    assert out.dtype == dtype and out.shape == (*shape[:-1], width) and dgu.shape == shape
    for mine, theirs in ((out, ref), (dgu, rgu)):
        assert _rel(mine.cpu(), theirs.detach()) < BOUND[dtype]


def _rms_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 9, 64), (2, 3, 100), (5, 2048)])
def test_rms_norm_and_add(device: str, dtype: torch.dtype, shape: tuple[int, ...], poisoned: None) -> None:
    x, r = _inputs(shape, dtype, device)
    weight = (1 + 0.1 * torch.randn(shape[-1], dtype=torch.float64)).to(device, dtype)
    g, gh = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    x64, r64 = (t.detach().cpu().double().requires_grad_() for t in (x, r))
    w64 = weight.cpu().double()

    out = kernels.RMSNorm.apply(x, weight, 1e-5)
    (dx,) = _grads(out, [x], g.to(device, dtype))
    ref = _rms_ref(x64, w64, 1e-5)
    (rdx,) = _grads(ref, [x64], g)
    assert _rel(out.cpu(), ref.detach()) < BOUND[dtype] and _rel(dx.cpu(), rdx) < BOUND[dtype]

    h, normed = kernels.AddRMSNorm.apply(x, r, weight, 1e-5)
    dx, dr = torch.autograd.grad((h, normed), [x, r], (gh.to(device, dtype), g.to(device, dtype)))
    h64 = x64 + r64
    rdx, rdr = torch.autograd.grad((h64, _rms_ref(h64, w64, 1e-5)), [x64, r64], (gh, g))
    assert _rel(h.cpu(), h64.detach()) < BOUND[dtype] and _rel(normed.cpu(), _rms_ref(h64, w64, 1e-5).detach()) < 2e-2
    assert _rel(dx.cpu(), rdx) < BOUND[dtype] * 2 and _rel(dr.cpu(), rdr) < BOUND[dtype] * 2


def _conv_ref(bcx: torch.Tensor, weight: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
    """The definition, token by token: y[t] = C[t] * sum_l w[:, K-1-l] B[t-l] x[t-l] within t's sequence."""
    width, kernel = weight.shape
    flat = bcx.reshape(-1, 3 * width)
    b, c, x = flat[:, :width], flat[:, width : 2 * width], flat[:, 2 * width :]
    rows = []
    for t in range(flat.shape[0]):
        acc = torch.zeros(width, dtype=bcx.dtype)
        for lag in range(kernel):
            if t - lag >= 0 and seq[t - lag] == seq[t]:
                acc = acc + weight[:, kernel - 1 - lag] * b[t - lag] * x[t - lag]
        rows.append(c[t] * acc)
    return torch.stack(rows).reshape(*bcx.shape[:-1], width)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("batch", "lengths", "width"), [(1, [5, 1, 7, 3, 2], 20), (2, [9], 130), (1, [37], 8)])
def test_gated_short_conv(
    device: str, dtype: torch.dtype, batch: int, lengths: list[int], width: int, poisoned: None
) -> None:
    total = sum(lengths)
    seq_idx = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[None].expand(batch, -1)
    seq = fast_lfm2.sequence_ids(seq_idx.clone(), batch, total, torch.device(device))
    (bcx,) = _inputs((batch, total, 3 * width), dtype, device, n=1)
    weight = torch.randn(width, 3, dtype=torch.float64).to(device, dtype)
    g = torch.randn(batch, total, width, dtype=torch.float64)
    y = kernels.GatedShortConv.apply(bcx, weight, seq)
    (d,) = _grads(y, [bcx], g.to(device, dtype))
    b64 = bcx.detach().cpu().double().requires_grad_()
    ref = _conv_ref(b64, weight.cpu().double(), seq.cpu())
    (rd,) = _grads(ref, [b64], g)
    assert y.shape == (batch, total, width)
    assert _rel(y.cpu(), ref.detach()) < BOUND[dtype] and _rel(d.cpu(), rd) < BOUND[dtype]


def _tiny_lfm2() -> torch.nn.Module:
    from transformers import Lfm2ForCausalLM

    from saudial.devtools import tiny

    torch.manual_seed(0)
    model = Lfm2ForCausalLM(tiny.tiny_config(vocab_size=97, hidden_size=32, layers=4)).eval()
    for p in model.parameters():  # QLoRA's frozen base; the gradient checked is the input's
        p.requires_grad_(False)
        if p.ndim == 1:  # the norms' weights, ones at init: made distinct
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("device", DEVICES)
def test_lfm2_with_kernels_matches_lfm2_without(device: str) -> None:
    """A padding-free row of four sequences: the same loss and input gradient with the kernels as without."""
    model = _tiny_lfm2().to(device)
    lengths = [6, 1, 9, 4]
    ids = torch.randint(3, 97, (1, sum(lengths)), device=device)
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None].to(device)
    seq_idx = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[None].int().to(device)
    from saudial.model import short_conv

    short_conv.install_boundary_aware_conv()

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
        out = model(inputs_embeds=embeds, position_ids=position_ids, seq_idx=seq_idx, labels=ids)
        (grad,) = torch.autograd.grad(out.loss, [embeds])
        return out.loss.detach(), grad

    loss_ref, grad_ref = run()
    counts = fast_lfm2.install(model, cpu=device == "cpu")
    assert counts == {"mlp": 4, "attention": 1, "norm": 4 * 2 + 2 + 1, "layer": 4, "conv": 3}
    loss, grad = run()
    assert abs(float(loss - loss_ref)) < 1e-5 * float(loss_ref)
    assert _rel(grad, grad_ref.double()) < 1e-5
    # A padded batch (an attention mask) and the cache of generation take the upstream forward.
    with torch.no_grad():
        mask = torch.ones(2, 7, dtype=torch.long, device=device)
        mask[1, 5:] = 0
        assert model(input_ids=ids[:, :7].expand(2, 7), attention_mask=mask).logits.isfinite().all()


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_layers_keep_gradient_checkpointing(device: str) -> None:
    """With the kernels' layer forwards and gradient checkpointing on, every decoder layer is still checkpointed
    (recomputed in the backward) and gives the same loss and gradient: transformers checkpoints in the class's
    forward, which an instance's own forward would bypass, keeping every layer's activations."""
    model = _tiny_lfm2().to(device)
    ids = torch.randint(3, 97, (1, 12), device=device)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
        out = model(inputs_embeds=embeds, labels=ids, use_cache=False)
        (grad,) = torch.autograd.grad(out.loss, [embeds])
        return out.loss.detach(), grad

    loss_ref, grad_ref = run()
    fast_lfm2.install(model, cpu=device == "cpu")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    checkpointed: list[str] = []
    for layer in model.model.layers:
        upstream = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda f, *a, _u=upstream, **k: checkpointed.append("x") or _u(f, *a, **k)
    loss, grad = run()
    assert len(checkpointed) == len(model.model.layers)
    assert abs(float(loss - loss_ref)) < 1e-5 * float(loss_ref)
    assert _rel(grad, grad_ref.double()) < 1e-5


def test_no_packed_sequence_check_under_varlen(monkeypatch: pytest.MonkeyPatch) -> None:
    """patches.skip_packed_check: a padding-free training forward (cu_seq_lens_q, no mask, no cache) builds no mask,
    so transformers' find_packed_sequence_indices (a host-device sync per step) is not called; others still build it."""
    from transformers import masking_utils

    from saudial.model import patches

    model = _tiny_lfm2()
    patches.skip_packed_check(model.get_decoder())
    calls: list[int] = []
    upstream = masking_utils.find_packed_sequence_indices
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda p: calls.append(1) or upstream(p))
    lengths = [3, 5]
    ids = torch.randint(3, 97, (1, sum(lengths)))
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    cu = torch.tensor([0, 3, 8], dtype=torch.int32)
    varlen = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": 5, "max_length_k": 5}
    with torch.no_grad():
        model(input_ids=ids, position_ids=position_ids, use_cache=False, **varlen)
        assert calls == []
        model(input_ids=ids, position_ids=position_ids, use_cache=False)
    assert calls == [1]


def test_triton_key_computed_beside_the_load() -> None:
    """fast_lfm2.key_triton_early: Triton's key of its installation, which upstream's first launch of a process
    computes (get_cache_key calls the cached triton_key), is computed on a thread that imports nothing, and kept
    once the wait returns; not wanted, nothing is computed. A fresh process: the key is kept per process."""
    import inspect
    import subprocess
    import sys

    from triton.runtime import cache

    assert "triton_key()" in inspect.getsource(cache.get_cache_key), "upstream no longer keys a launch by it"
    code = (
        "import sys\n"
        "from triton.runtime import cache\n"
        "from saudial.model import fast_lfm2\n"
        "fast_lfm2.available = lambda: True\n"  # this machine has no GPU; the thread is the same
        "fast_lfm2.key_triton_early(False)()\n"
        "print(cache.triton_key.cache_info().currsize)\n"
        "before = set(sys.modules)\n"
        "fast_lfm2.key_triton_early()()\n"
        "print(cache.triton_key.cache_info().currsize, sorted(set(sys.modules) - before))\n"
        "print(cache.triton_key() == cache.triton_key.__wrapped__(), cache.triton_key.cache_info().misses)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split("\n")[:3] == ["0", "1 []", "True 1"], out.stdout + out.stderr


def _qk_ref(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Upstream's q/k path, in float64: the head's RMS norm, then apply_rotary_pos_emb (heads on axis 2)."""
    from transformers.models.lfm2.modeling_lfm2 import apply_rotary_pos_emb

    normed = _rms_ref(x, weight, 1e-5)
    out, _ = apply_rotary_pos_emb(normed, normed, cos, sin, unsqueeze_dim=2)
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("batch", "tokens", "heads", "dim"), [(1, 37, 4, 16), (2, 5, 3, 64), (1, 3, 1, 8)])
def test_qk_norm_rope(
    device: str, dtype: torch.dtype, batch: int, tokens: int, heads: int, dim: int, poisoned: None
) -> None:
    from saudial.model.qk_kernels import QKNormRope, covers

    (x,) = _inputs((batch, tokens, heads, dim), dtype, device, n=1)
    weight = (1 + 0.1 * torch.randn(dim, dtype=torch.float64)).to(device, dtype)
    angles = torch.rand(batch, tokens, dim // 2, dtype=torch.float64) * 6.3
    cos64, sin64 = (f(torch.cat([angles, angles], -1)) for f in (torch.cos, torch.sin))
    cos, sin = cos64.to(device, dtype), sin64.to(device, dtype)
    g = torch.randn(batch, tokens, heads, dim, dtype=torch.float64)
    x64 = x.detach().cpu().double().requires_grad_()

    assert covers(x, weight, cos, sin)
    out = QKNormRope.apply(x, weight, cos, sin, 1e-5)
    (dx,) = _grads(out, [x], g.to(device, dtype))
    ref = _qk_ref(x64, weight.cpu().double(), cos.cpu().double(), sin.cpu().double())
    (rdx,) = _grads(ref, [x64], g)
    assert _rel(out.cpu(), ref.detach()) < BOUND[dtype] * 2 and _rel(dx.cpu(), rdx) < BOUND[dtype] * 2
    assert not covers(x[..., :4], weight[:4], cos[..., :4], sin[..., :4])  # D 4: upstream's norm and rotation

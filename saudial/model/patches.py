"""Changes to how transformers runs LFM2 that make training fast without changing what is learned.

Each one works around a named upstream behaviour; tests/test_upstream.py fails the day that behaviour
changes, so the patch can be dropped then. Measured in bench/ (docs/benchmarks.md).

1. Boundary-aware short convolution for padding-free rows: model/short_conv.py.
2. Variable-length attention (`use_varlen_attention`, CUDA, padding-free batches). Upstream:
   transformers' SDPA path treats a flat row of 64 examples as one ~8,000-token sequence under a
   block-diagonal mask, computing every pair of tokens and masking most away. PyTorch's own flash
   varlen kernel (`torch.nn.attention.varlen`) takes the boundaries TRL's collator already sends
   (`cu_seq_lens_q`) and computes each example alone; it is registered as a transformers attention
   function (`AttentionInterface`), not patched in.
3. Fused RMSNorm (`use_fused_rms_norm`). Upstream: `Lfm2RMSNorm` normalizes in seven element-wise
   operations over an fp32 copy of the activations, forward and backward, in 45 places of LFM2-1.2B
   (per layer two, plus q/k norms of the 6 attention layers, plus the final one). PyTorch's `rms_norm`
   computes the same (fp32 statistics, output in the input's dtype) in one kernel each way on CUDA.
   The layer's own weight multiply is kept as upstream writes it.
4. Optional regional compilation (`compile_decoder_layers`, `SAUDIAL_TORCH_COMPILE`): each decoder layer
   compiled by torch.compile. Off by default: the eager step with the fused LoRA step and the Triton kernels
   was faster, and compiling costs a warm-up every run (config/settings.py).
5. No cuDNN attention (`avoid_cudnn_attention`, process-wide, wherever a model is loaded with SDPA). Upstream:
   PyTorch's SDPA picks its cuDNN backend on Hopper, which builds an execution plan on the host for every
   new shape: ~3.4 ms forward and ~5 ms backward a call when a masked shape changes (H100, torch 2.11: ~60 ms
   of a 280 ms SDPA training step, 6 attention layers). Generation changes the shape at every decode step
   (the KV cache grows by one), so the first batch of prompts of a width paid it on every step, and only a
   second generation over the same shapes ran from cuDNN's plan cache (docs/benchmarks.md). The
   memory-efficient and flash backends take the same masks for microseconds of host time. The default
   training step never calls SDPA (item 2), but generation always does, and so do runs without varlen.
"""

from __future__ import annotations

import functools
import logging
import types
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def fused_rms_norm(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    """`Lfm2RMSNorm.forward` through `torch.nn.functional.rms_norm`: the statistics in fp32, the normalized
    activations in the input's dtype, times the layer's weight in that dtype, as upstream computes it."""
    normed = F.rms_norm(hidden_states, hidden_states.shape[-1:], eps=self.variance_epsilon)  # fp32 math inside
    return self.weight * normed.to(hidden_states.dtype)


def use_fused_rms_norm(model: torch.nn.Module) -> int:
    """Give each of `model`'s LFM2 RMSNorms the fused forward above; returns how many."""
    from transformers.models.lfm2.modeling_lfm2 import Lfm2RMSNorm

    norms = [m for m in model.modules() if type(m) is Lfm2RMSNorm]
    for norm in norms:
        norm.forward = types.MethodType(fused_rms_norm, norm)  # type: ignore[method-assign]
    return len(norms)


def avoid_cudnn_attention() -> None:
    """SDPA without its cuDNN backend in this process (item 5 above); the flash and memory-efficient
    backends, and the math one as a last resort, stay as PyTorch picks them."""
    torch.backends.cuda.enable_cudnn_sdp(False)


VARLEN = "saudial_varlen"


def varlen_available() -> bool:
    return bool(_VARLEN_PARAMS) and torch.cuda.is_available()  # torch.nn.attention.varlen: torch >= 2.10


def varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """A transformers attention function: flash varlen for padding-free rows, SDPA for anything else.

    query [1, heads, tokens, dim], key/value [1, kv_heads, tokens, dim]; returns [1, tokens, heads, dim].
    """
    from torch.nn.attention.varlen import varlen_attn
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if cu_seq_lens is None:  # a padded batch (evaluation, generation): SDPA with transformers' mask
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else query.dtype
    if query.shape[0] != 1 or dtype not in (torch.bfloat16, torch.float16) or dropout:
        # Unreachable through training/trainer.py (use_varlen_attention is called only for bf16/fp16 padding-free runs);
        # SDPA without a mask here would let the examples of the row attend to each other.
        raise RuntimeError("varlen attention needs one bf16/fp16 padding-free row and no attention dropout")
    q, k, v = (t[0].transpose(0, 1).to(dtype) for t in (query, key, value))  # [tokens, heads, dim]
    options: dict[str, Any] = {"scale": scaling}
    if q.shape[1] != k.shape[1]:  # grouped-query attention: 32 query heads share 8 key/value heads in LFM2
        if _VARLEN_PARAMS.get("enable_gqa", False):
            options["enable_gqa"] = True
        else:  # each key/value head repeated for its query heads; expand + one copy (repeat_interleave cost
            # ~0.6 ms of CPU per call on an H200, torch 2.11: 12 calls a step)
            tokens, kv_heads, dim = k.shape
            group = q.shape[1] // kv_heads
            k, v = (t[:, :, None].expand(tokens, kv_heads, group, dim).reshape(tokens, -1, dim) for t in (k, v))
    # torch 2.10 spells causal `is_causal=True`, later versions `window_size=(-1, 0)`.
    options |= {"window_size": (-1, 0)} if _VARLEN_PARAMS.get("window_size") else {"is_causal": True}
    max_len = int(kwargs["max_length_q"])
    out = varlen_attn(q, k, v, cu_seq_lens, cu_seq_lens, max_len, max_len, **options)
    assert isinstance(out, torch.Tensor)  # a tuple only when the logsumexp is asked for (return_aux)
    return out.unsqueeze(0), None


def _varlen_params() -> dict[str, bool]:
    try:
        import inspect

        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return {}
    return {name: True for name in inspect.signature(varlen_attn).parameters}


_VARLEN_PARAMS = _varlen_params()


def _varlen_mask(attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """No mask without padding (varlen reads the boundaries; SDPA alone is causal); SDPA's for padded batches."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None:
        return None
    return sdpa_mask(attention_mask=attention_mask, **kwargs)


def use_varlen_attention(model: Any) -> None:
    """Switch `model` (a transformers model, PEFT-wrapped or not) to `varlen_attention`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_attention)
    AttentionMaskInterface.register(VARLEN, _varlen_mask)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(VARLEN)
    skip_packed_check(base.get_decoder())


def skip_packed_check(decoder: Any) -> None:
    """No mask building for padding-free rows under varlen attention: the boundaries come with the batch.

    Upstream (transformers 5.23): with no attention mask, `create_causal_mask` looks for packed sequences in
    `position_ids` (`find_packed_sequence_indices`) and asks the GPU whether it found any (`.all()` read on the
    host): one host-device sync per step, and the mask it builds is not used (varlen reads `cu_seq_lens_q`).
    A decoder given a mapping of masks builds none; for a padding-free training forward (`cu_seq_lens_q`, no
    mask, no cache) it gets the one upstream would pass on to varlen attention and the short convs: None.
    """
    inner = decoder.forward
    none_per_type = dict.fromkeys(set(decoder.config.layer_types))

    @functools.wraps(inner)
    def forward(*args: Any, **kwargs: Any) -> Any:
        if (
            kwargs.get("cu_seq_lens_q") is not None
            and kwargs.get("attention_mask") is None
            and kwargs.get("past_key_values") is None
            and kwargs.get("use_cache") is False
        ):
            kwargs["attention_mask"] = dict(none_per_type)
        return inner(*args, **kwargs)

    decoder.forward = forward


def compile_decoder_layers(model: torch.nn.Module) -> int:
    """torch.compile each decoder layer in place (regional compilation); returns how many."""
    enable_compile_cache()
    layers = _find_layers(model)
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def enable_compile_cache() -> None:
    """Let a second run reuse the first one's compiled graphs (AOTAutograd + inductor caches).

    Upstream: AOTAutograd refuses to cache graphs that contain a custom `torch.autograd.Function`, and
    bitsandbytes' 4-bit matmul (`MatMul4Bit`) is one ("BypassAOTAutogradCache: Unsupported call_function
    target autograd_function_apply"), so every run paid the whole compile (~80-116 s). The flag below lets
    the cache take them (tests/test_upstream.py watches the flag). The caches are in the Hugging Face cache
    directory (HF_HOME: the image's named volume, config/runtime.configure_caches), so they outlive the container.
    """
    import torch._functorch.config as functorch_config

    functorch_config.autograd_cache_allow_custom_autograd_functions = True


def _find_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    for module in model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers) > 0:
            return list(layers)
    raise RuntimeError("no decoder layers found to compile")

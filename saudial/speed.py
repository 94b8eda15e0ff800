"""What makes training fast without changing what is learned (measured in bench/, docs/benchmarks.md).

1. Padding-free batches. The micro-batch is one flat row of all its examples (TRL's collator with
   `padding_free=True`), padded only to a multiple of `pad_to_multiple_of` tokens so that kernels
   (cuDNN attention plans, compiled graphs) see few distinct shapes. No compute goes to padding.
2. A boundary-aware short convolution for LFM2. In a flat row, the conv of one example must not
   read the last tokens of the previous one. transformers' torch fallback (used without the
   `causal_conv1d` CUDA package) ignored boundaries in 5.17, and since 5.23 refuses TRL's `seq_idx`
   (`ValueError: causal_conv1d_fn can't keep packed sequences apart without causal_conv1d`).
   `boundary_aware_causal_conv1d` honours `seq_idx`; it replaces the fallback in modeling_lfm2.
   Attention layers keep samples apart through `position_ids` (transformers builds a block-diagonal
   mask from them). tests/test_padding_free.py checks per-example losses against padded batches.
3. Optional regional compilation: each decoder layer compiled by torch.compile. It cuts the Python
   and kernel-launch overhead that bounds a QLoRA step of a 1.2B model, but costs a warm-up.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
import torch.nn.functional as F
from transformers import TrainerCallback

log = logging.getLogger(__name__)


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
        seq_idx = seq_idx.to(x.device)
        out = x * weight[:, kernel - 1, None]
        for lag in range(1, kernel):
            shifted = F.pad(x, (lag, 0))[..., :seq_len]
            same = F.pad(seq_idx, (lag, 0), value=-1)[..., :seq_len] == seq_idx  # [batch, time]
            out = out + shifted * weight[:, kernel - 1 - lag, None] * same[:, None, :].to(x.dtype)
        if bias is not None:
            out = out + bias[:, None]
    if activation is not None:
        out = F.silu(out) if activation in ("silu", "swish") else getattr(F, activation)(out)
    return out.to(hidden_states.dtype)


def install_boundary_aware_conv() -> None:
    """Route LFM2's short conv through the boundary-aware version (idempotent)."""
    from transformers.models.lfm2 import modeling_lfm2

    if modeling_lfm2.causal_conv1d_fn is not boundary_aware_causal_conv1d:
        modeling_lfm2.causal_conv1d_fn = boundary_aware_causal_conv1d


def padding_free_collator(pad_token_id: int, pad_to_multiple_of: int | None) -> Any:
    """TRL's own collator, flattening each micro-batch into one row with position_ids and seq_idx."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(
        pad_token_id=pad_token_id, padding_free=True, pad_to_multiple_of=pad_to_multiple_of
    )


def compile_decoder_layers(model: torch.nn.Module) -> int:
    """torch.compile each decoder layer in place (regional compilation); returns how many."""
    layers = _find_layers(model)
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def _find_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    for module in model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers) > 0:
            return list(layers)
    raise RuntimeError("no decoder layers found to compile")


class ThroughputMeter(TrainerCallback):
    """Steady-state speed of a run: non-pad tokens per second after the warm-up steps, and peak memory.

    It synchronizes the GPU only at the two ends of the measured window: no per-step host-device sync.
    """

    def __init__(self, warmup_fraction: float = 0.2) -> None:
        self.warmup_fraction = warmup_fraction
        self.start_time: float | None = None
        self.start_tokens = 0
        self.start_step = 0
        self.result: dict[str, float] = {}

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        warmup = max(1, int(state.max_steps * self.warmup_fraction)) if state.max_steps > 2 else 0
        if self.start_time is None and state.global_step >= warmup:
            self._sync()
            self.start_time = time.perf_counter()
            self.start_tokens = int(state.num_input_tokens_seen)
            self.start_step = state.global_step

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._sync()
        if self.start_time is not None and state.global_step > self.start_step:
            seconds = time.perf_counter() - self.start_time
            tokens = int(state.num_input_tokens_seen) - self.start_tokens
            steps = state.global_step - self.start_step
            self.result = {
                "steady_tokens_per_second": tokens / seconds,
                "steady_step_time_s": seconds / steps,
                "steady_steps": steps,
            }
        if torch.cuda.is_available():
            self.result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
            self.result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30

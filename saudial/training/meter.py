"""How fast a run trained: non-pad tokens per second after the warm-up steps, and peak GPU memory."""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import TrainerCallback


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

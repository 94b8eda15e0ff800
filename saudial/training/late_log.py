"""A logged step's values read from the GPU one step later, so that logging never empties the GPU's queue.

Upstream (transformers 5.23, `Trainer._maybe_log_save_evaluate`), a logged step reads its loss and gradient norm
with `.item()`, and training/sync_free.py reads TRL's metrics there too: the host waits until the GPU has finished
the step, and the GPU then idles while the host prepares the next batch and launches the next forward, whose
start is host-bound (bench/profile_step.py's gaps). Here a logged step instead copies those values into pinned
host memory behind its own kernels, without waiting, and the log is written at the next step's
`_maybe_log_save_evaluate`, once that step's kernels are queued: by then the copy is done, and the GPU has the
next step's work in hand. The log carries the step's own values, step, epoch, token counts and elapsed time, and
reaches the callbacks, trainer_state.json and the NaN stop (training/sync_free.py) one step late.

Nothing waits on the GPU later than upstream where it matters: a step that also evaluates, saves a checkpoint or
ends training logs at once (after the late log, in order), and so do runs of several processes, whose log
gathers the loss over ranks. A log still held when the training loop ends (an epoch stopped early by a callback)
is written before the run's loss is summed. A callback that acts on a log (`on_log`) acts a step later than
upstream: a stop it asks for comes after one more step (none of saudial's callbacks act there).
tests/test_sync_free.py checks that the logs equal TRL's trainer's.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from trl import SFTTrainer


@dataclass
class _Logged:
    """One logged step: its GPU values on their way to `values` (pinned host memory), and what the host knew."""

    values: torch.Tensor  # float64: [loss sum, grad norm?, (entropy, token accuracy) per step, TRL's tokens?]
    copied: torch.cuda.Event | None  # recorded after the copy; None on the CPU
    norm_on_gpu: bool
    tokens_on_gpu: bool
    logs: dict[str, Any]  # grad_norm when it was a float, learning_rate
    steps: int  # optimizer steps since the previous log
    metrics: defaultdict[str, list[Any]]  # TRL's lists for this log, as its compute_loss fills them
    total_tokens: int  # TRL's num_tokens before this log's GPU-counted tokens
    state: tuple[int, float, int]  # global_step, epoch, num_input_tokens_seen
    start_time: float | None
    at: float = field(default_factory=time.time)


class LateLogs(SFTTrainer):
    """SFTTrainer whose logged steps are read from the GPU one step late (the module's docstring).

    It reads training/sync_free.SyncFreeSFTTrainer's `_pending` (per step, entropy and token accuracy on the
    GPU) and `_pending_tokens`, and TRL's `_metrics`, `_total_train_tokens` and `_tp_size`."""

    _pending: list[torch.Tensor]
    _pending_tokens: list[torch.Tensor]
    _late: _Logged | None = None
    late_logs = 0  # logs written one step late (tests: the path is taken)

    def _log_late_ok(self) -> bool:
        """Whether a logged step may wait: one process (the log's loss is gathered over ranks otherwise) and
        nothing else due at this step that must see the log first."""
        control = self.control
        due = control.should_evaluate or control.should_save or control.should_training_stop
        return self.accelerator.num_processes == 1 and not due

    def train(self, *args: Any, **kwargs: Any) -> Any:
        self._late = None  # nothing held from an earlier call that failed
        return super().train(*args, **kwargs)

    def _finalize_training(self, trial: Any, num_train_samples: int, start_time: float) -> Any:
        self._write_late_log()  # before the Trainer sums the run's loss and logs it
        return super()._finalize_training(trial, num_train_samples, start_time)

    def _maybe_log_save_evaluate(
        self,
        tr_loss: torch.Tensor,
        grad_norm: torch.Tensor | float | None,
        model: Any,
        trial: Any,
        epoch: float,
        ignore_keys_for_eval: list[str] | None,
        start_time: float,
        learning_rate: float | None = None,
    ) -> None:
        self._write_late_log()  # the previous step's, if it waited: its copy is done by now
        if self.control.should_log and self.state.global_step > self._globalstep_last_logged and self._log_late_ok():
            self._hold_log(tr_loss, grad_norm, start_time, learning_rate)
            self.control.should_log = False  # upstream's log is this one, written at the next step
        super()._maybe_log_save_evaluate(
            tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval, start_time, learning_rate=learning_rate
        )

    def _hold_log(
        self, tr_loss: torch.Tensor, grad_norm: Any, start_time: float | None, learning_rate: float | None
    ) -> None:
        """Upstream's logging of this step up to its reads: the values copied without waiting, the loss reset."""
        norm_on_gpu = isinstance(grad_norm, torch.Tensor)
        parts = [tr_loss.detach().reshape(1)]
        if norm_on_gpu:
            parts.append(grad_norm.detach().reshape(1).to(tr_loss.device))
        if self._pending:
            parts.append(torch.stack(self._pending).reshape(-1))
        if self._pending_tokens:
            parts.append(torch.stack(self._pending_tokens).sum().reshape(1))
        # float64 holds each float32 value and token count exactly: the log's numbers are upstream's.
        on_gpu = torch.cat([p.to(torch.float64) for p in parts])
        values = torch.empty(on_gpu.shape, dtype=torch.float64, pin_memory=on_gpu.is_cuda)
        values.copy_(on_gpu, non_blocking=on_gpu.is_cuda)
        copied = None
        if on_gpu.is_cuda:
            copied = torch.cuda.Event()
            copied.record(torch.cuda.current_stream(on_gpu.device))  # the stream the copy was queued on
        tr_loss -= tr_loss  # queued behind the copy above
        logs: dict[str, Any] = {}
        if grad_norm is not None and not norm_on_gpu:
            logs["grad_norm"] = grad_norm
        logs["learning_rate"] = learning_rate if learning_rate is not None else self._get_learning_rate()
        metrics, self._metrics["train"] = self._metrics["train"], defaultdict(list)
        self._late = _Logged(
            values=values,
            copied=copied,
            norm_on_gpu=norm_on_gpu,
            tokens_on_gpu=bool(self._pending_tokens),
            logs=logs,
            steps=self.state.global_step - self._globalstep_last_logged,
            metrics=metrics,
            total_tokens=self._total_train_tokens,
            state=(self.state.global_step, self.state.epoch, self.state.num_input_tokens_seen),
            start_time=start_time,
        )
        self._pending, self._pending_tokens = [], []
        self._globalstep_last_logged = self.state.global_step
        self.store_flos()

    def _add_metrics(self, metrics: dict[str, list[Any]], per_step: list[float], counted: int, total: int) -> None:
        """Into TRL's lists, as its compute_loss appends them: each step's entropy and token accuracy (`per_step`,
        in pairs), and TRL's token count: `total` before these steps, plus `counted` where the GPU counted them."""
        metrics["entropy"] += per_step[0::2]
        metrics["mean_token_accuracy"] += per_step[1::2]
        self._total_train_tokens += counted // self._tp_size
        metrics["num_tokens"] = [total + counted // self._tp_size]

    def _write_late_log(self) -> None:
        """The held step's log, as upstream writes it, with the trainer's state as it was at that step."""
        held, self._late = self._late, None
        if held is None:
            return
        if held.copied is not None:
            held.copied.synchronize()
        values = held.values.tolist()
        logs: dict[str, Any] = {"loss": values[0] / held.steps}
        if held.norm_on_gpu:
            logs["grad_norm"] = values[1]
        logs.update(held.logs)
        per_step = values[1 + held.norm_on_gpu : len(values) - held.tokens_on_gpu]
        if per_step:
            counted = int(values[-1]) if held.tokens_on_gpu else 0
            self._add_metrics(held.metrics, per_step, counted, held.total_tokens)
        self._total_loss_scalar += values[0]
        now = (self.state.global_step, self.state.epoch, self.state.num_input_tokens_seen)
        current = (self._metrics["train"], self._pending, self._pending_tokens)
        self.state.global_step, self.state.epoch, self.state.num_input_tokens_seen = held.state
        self._metrics["train"], self._pending, self._pending_tokens = held.metrics, [], []
        should_log = self.control.should_log  # this step's: the callbacks' on_log clears it
        try:  # the elapsed time as at the held step
            self.log(logs, None if held.start_time is None else held.start_time + (time.time() - held.at))
            self.late_logs += 1
        finally:
            self.state.global_step, self.state.epoch, self.state.num_input_tokens_seen = now
            self._metrics["train"], self._pending, self._pending_tokens = current
            self.control.should_log = should_log

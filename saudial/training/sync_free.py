"""TRL's SFTTrainer without reading GPU values on the host in every step.

The host queues a training step's kernels ahead of the GPU; the GPU waits only where the host falls behind.
Every read of a GPU value on the host (`.item()`, `bool(tensor)`, a blocking copy, a boolean index) empties
that queue, and the GPU then idles until the host has launched the next kernels. Upstream (transformers 5.23,
TRL 1.16), every step reads the GPU 22 times (bench/profile_step.py --syncs):

1. at its start: accelerate copies the batch to the GPU with blocking copies (`non_blocking=False`);
2. in the forward: TRL's fused LM head picks the completion tokens with boolean indexes (again backward);
3. after the forward: TRL's `compute_loss` reads its logging metrics (entropy, token accuracy, tokens);
4. after the backward: the Trainer reads the non-pad token count (`include_num_input_tokens_seen`) and
   checks the loss for NaN/inf (`logging_nan_inf_filter`).

Here 1 is accelerate's own `non_blocking` from pinned memory, and the NaN check is off (both set in
training/trainer.sft_config); 2 is model/lm_head.py, on the positions this module's collator finds on the CPU. The
metrics of 3 stay on the GPU and are read once per logged step, where the Trainer reads the loss anyway: the
same values reach the same logs. The collator counts each batch's non-pad tokens on the host, as upstream
counts them (`input_ids != pad_token_id`). With the NaN filter off (but in fp16, where the grad scaler
skips an overflowed step and the run goes on), a NaN or infinite loss is logged as it is (upstream logs the
mean of the earlier losses in its place), and the run stops there with a `TrainingError` (exit 3), at the log
or at a checkpoint before it (which also checks that the trained weights are finite: a step with a finite
loss and a NaN gradient norm makes them NaN), so that no diverged adapter or checkpoint is saved.

The log itself reads the GPU one step late (training/late_log.py).

tests/test_sync_free.py checks the loss, the logged metrics (the gradient norm among them), the FLOPs and the
token count against TRL's own trainer, and that the overridden Trainer method is still called.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from saudial.errors import TrainingError
from saudial.model import activation_memory, lm_head
from saudial.process import signals
from saudial.training.late_log import LateLogs

NON_PAD_TOKENS = "saudial_non_pad_tokens"  # the collator's count; taken out of the batch before the model


class CountingCollator(DataCollatorForLanguageModeling):
    """TRL's collator, also counting the batch's non-pad tokens on the host (upstream counts them on the GPU) and,
    for padding-free rows, giving the positions to score (model/lm_head.py)."""

    # Off when the model keeps TRL's head (SyncFreeSFTTrainer sets it once it knows, before any batch).
    score_positions = True

    def torch_call(self, examples: list[Any]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        batch[NON_PAD_TOKENS] = int((batch["input_ids"] != self.pad_token_id).sum())
        if self.padding_free and self.score_positions:
            batch[lm_head.POSITIONS], batch[lm_head.TARGETS] = lm_head.label_positions(batch["labels"])
        return batch


class SyncFreeSFTTrainer(LateLogs):
    """SFTTrainer whose training step reads the GPU only when it logs or saves (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model: Any = self.model
        self.compact_head = lm_head.install(model.get_base_model() if hasattr(model, "get_base_model") else model)
        if isinstance(self.data_collator, CountingCollator):  # built before the head was known
            self.data_collator.score_positions = self.compact_head
        self._host_tokens: int | None = None  # the current batch's non-pad tokens, from CountingCollator
        self.host_counted_batches = 0  # batches counted on the host (tests: the override is still called)
        self._pending: list[torch.Tensor] = []  # per step [entropy, mean token accuracy], on the GPU
        self._pending_tokens: list[torch.Tensor] = []  # per step tokens (TRL's num_tokens) when not known on host
        # Gradient checkpointing fitted to each micro-batch's tokens (training/checkpointing.py), if any.
        self.activation_fit: activation_memory.Fit | None = None

    # The loaders' worker processes ignore SIGTERM/SIGINT: this process stops the run (process/signals.QuietWorker).
    def get_train_dataloader(self) -> Any:
        return signals.quiet_workers(super().get_train_dataloader())

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        return signals.quiet_workers(super().get_eval_dataloader(eval_dataset))

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        self._host_tokens = inputs.pop(NON_PAD_TOKENS, None)
        if self.activation_fit is not None:  # the row's length: a shape, known on the host
            self.activation_fit.apply(inputs["input_ids"].numel())
        return super().training_step(model, inputs, num_items_in_batch)

    def _track_num_input_tokens(self, inputs: dict[str, Any]) -> None:
        # Upstream: `(input_ids != pad).sum()` on the GPU, gathered over ranks, read with `.item()`.
        one_process = self.accelerator.num_processes == 1
        if self._host_tokens is None or not one_process or self.args.include_num_input_tokens_seen != "non_padding":
            super()._track_num_input_tokens(inputs)
            return
        self.state.num_input_tokens_seen += self._host_tokens
        self.host_counted_batches += 1

    def _plain_loss(self) -> bool:
        """Whether TRL's compute_loss would take its plain path: the fused LM head's mean token NLL."""
        sequence_parallel = getattr(self.accelerator, "parallelism_config", None)
        return (
            self.model is not None
            and self.model.training
            and self.compute_loss_func is None
            and self.label_smoother is None
            and getattr(self.args, "loss_type", None) == "nll"  # SFTConfig's field
            and not self.aux_loss_enabled
            and not (sequence_parallel is not None and getattr(sequence_parallel, "sp_enabled", False))
        )

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        inputs.pop(NON_PAD_TOKENS, None)  # evaluation batches come from the same collator
        positions, targets = inputs.pop(lm_head.POSITIONS, None), inputs.pop(lm_head.TARGETS, None)
        if return_outputs or not self._plain_loss():
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # TRL's plain path: the mean NLL of the labelled tokens, and its metrics (tests/test_sync_free.py).
        inputs["use_cache"] = False
        if positions is not None and self.compact_head:  # model/lm_head.py: the labelled positions only
            outputs = model(**inputs, **{lm_head.POSITIONS: positions, lm_head.TARGETS: targets})
            valid = torch.full((), positions.numel(), device=positions.device)  # a shape: known on the host
        else:
            outputs = model(**inputs, fused_lm_head=True)
            valid = outputs.label_mask.sum()
        per_token_loss = -outputs.log_probs  # zero on ignored positions (TRL's head)
        num_tokens = valid if num_items_in_batch is None else num_items_in_batch
        loss = per_token_loss.sum() / torch.as_tensor(num_tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        # TRL's metrics, kept on the GPU until the step is logged.
        gather = self.accelerator.gather_for_metrics
        num_valid = gather(valid).sum()
        entropy = gather(outputs.entropy.detach().sum()).sum() / num_valid
        accuracy = gather(outputs.is_top1.sum()).sum() / num_valid
        self._pending.append(torch.where(num_valid > 0, torch.stack([entropy.float(), accuracy.float()]), 0.0))
        if "attention_mask" not in inputs and "position_ids" in inputs and self.accelerator.num_processes == 1:
            self._total_train_tokens += inputs["position_ids"].size(1) // self._tp_size  # a shape: on the host
        else:
            counted = inputs["attention_mask"].sum() if "attention_mask" in inputs else inputs["position_ids"].size(1)
            self._pending_tokens.append(gather(torch.as_tensor(counted, device=loss.device)).sum())
        return loss

    def _flush_metrics(self) -> None:
        """The pending metrics into TRL's lists, as its compute_loss appends them: one read of the GPU, and a second
        when the token counts are on it too (several processes, or an attention mask)."""
        if not self._pending:
            return
        per_step = torch.stack(self._pending).reshape(-1).tolist()
        counted = int(torch.stack(self._pending_tokens).sum()) if self._pending_tokens else 0
        self._add_metrics(self._metrics["train"], per_step, counted, self._total_train_tokens)
        self._pending.clear()
        self._pending_tokens.clear()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self._flush_metrics()
        loss = logs.get("loss", logs.get("train_loss"))  # a logged step; the end of training
        if isinstance(loss, float):
            self._stop_if_diverged(loss)
        super().log(logs, start_time)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        # A checkpoint can come before the next log (the last step always saves; save_steps need not be a multiple
        # of logging_steps): the losses summed since the last log are read here, once per checkpoint, so that no
        # checkpoint of a diverged run is written for a restart to resume from. So are the trained weights: a
        # step whose loss was finite but whose gradient was not (its norm NaN) makes them NaN, and its loss
        # shows only in the next step's. One read, gathered: every rank stops alike.
        trained = [p.detach() for p in model.parameters() if p.requires_grad]
        finite = torch.stack([p.isfinite().all() for p in trained]).all() if trained else self._tr_loss.new_ones(())
        both = self.accelerator.gather(torch.stack([self._tr_loss.detach(), finite.to(self._tr_loss)]).view(1, 2))
        loss, ranks_finite = both.sum(0).tolist()
        self._stop_if_diverged(loss)
        if ranks_finite < len(both):  # clipping cannot mend a NaN gradient norm: its coefficient is NaN too
            raise self._diverged(
                "the adapter's weights became NaN or infinite",
                "lower SAUDIAL_LEARNING_RATE, or check that the model's weights are finite",
            )
        super()._save_checkpoint(model, trial)

    def _stop_if_diverged(self, loss: float) -> None:
        if not math.isfinite(loss):
            raise self._diverged(
                f"the training loss became {loss}",
                "lower SAUDIAL_LEARNING_RATE or SAUDIAL_MAX_GRAD_NORM, or check that the model's weights are finite",
            )

    def _diverged(self, became: str, fix: str) -> TrainingError:
        error = TrainingError(
            f"{became} by step {self.state.global_step} (learning_rate {self.args.learning_rate:g}): "
            f"training diverged and its adapter was not saved; {fix}"
        )
        error.shared = True  # every rank saw the same gathered values
        return error

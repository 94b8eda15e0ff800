"""One readable line per logged step, in place of the Trainer's printed dictionaries.

Upstream (transformers 5.23, `ProgressCallback.on_log`) writes each log as a Python dict, TRL's per-step
diagnostics included: `{'loss': '6.851', 'grad_norm': '0.182', 'learning_rate': '0.001', 'entropy': '6.8',
'mean_token_accuracy': '0', 'num_tokens': '1.254e+04', ...}`. saudial prints the step, the loss and what
a user tunes by (learning rate, gradient norm, epoch); every value still goes to the run's
trainer_state.json and metrics.json. The bar itself is upstream's (line-based without a terminal:
cli/logs.py).
"""

from __future__ import annotations

from typing import Any

from transformers.trainer_callback import ProgressCallback

SHOWN = ("loss", "eval_loss", "grad_norm", "learning_rate", "epoch")  # in this order, when the log has them


def step_line(logs: dict[str, Any], step: int, max_steps: int) -> str:
    """`step 3/6  loss 6.851  grad_norm 0.182  learning_rate 0.001  epoch 0.46`; the end of training in words."""
    if "train_loss" in logs:  # the end of training (every log has train_runtime with num_input_tokens_seen)
        seconds = float(logs.get("train_runtime", 0))
        return f"trained {step} steps in {seconds:.1f} s, mean loss {_number(logs['train_loss'])}"
    values = [f"{name} {_number(logs[name])}" for name in SHOWN if name in logs]
    return "  ".join([f"step {step}/{max_steps}", *values])


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class StepLines(ProgressCallback):
    """Upstream's progress bar, with `step_line` for each log (rank 0 only, as upstream)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and self.training_bar is not None and logs:
            self.training_bar.write(step_line(logs, state.global_step, state.max_steps))

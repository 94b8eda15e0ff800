"""What happens after the adapter is on disk: evaluation (per SAUDIAL_EVAL), then the Hub upload.

`train.py` calls `after_training` once, with the trained PeftModel still in memory, so evaluation
loads nothing again. Only the main process evaluates and uploads when training ran in several.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from transformers import PreTrainedTokenizerBase

from saudial import distributed
from saudial.config import Settings

log = logging.getLogger(__name__)


def after_training(
    settings: Settings,
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    eval_rows: pd.DataFrame,
    metrics: dict[str, Any],
    output_dir: Path | None = None,
) -> dict[str, Any]:
    """Evaluate the in-memory adapter as configured, then push when SAUDIAL_PUSH_TO_HUB is on.

    Returns the evaluation results (also merged into metrics.json). A failed upload raises
    PushError (exit code 4) after the adapter and the evaluation are safely on disk.
    """
    if not distributed.is_main_process():
        return {}
    output_dir = output_dir or settings.output_dir
    results: dict[str, Any] = {}
    if settings.eval != "none" and not eval_rows.empty:
        from saudial.evaluate import evaluate

        results = evaluate(settings, model, tokenizer, eval_rows, output_dir, loss=metrics.get("eval_loss"))
        metrics.update(results)
    if settings.push_to_hub:
        from saudial.hub import push

        push(settings, output_dir)
    return results

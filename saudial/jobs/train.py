"""`saudial train`: the whole job, start to end.

1. Cheap checks first, so a wrong path or a missing GPU fails in seconds, not after the slow imports of
   transformers, PEFT and TRL: the data (pandas only), the GPU (torch only), the Hub upload.
2. With several GPUs, this same command as one process per GPU (run/distributed.py).
3. Training (run/train.py): the adapter, tokenizer and run record on disk.
4. After training, in this order: evaluation (SAUDIAL_EVAL) with the adapter still in memory, then the
   Hub upload (SAUDIAL_PUSH_TO_HUB). Only the main process does these.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from saudial.config.settings import Settings
from saudial.data.workbook import load_configured
from saudial.errors import EXIT_OK
from saudial.run import distributed

if TYPE_CHECKING:
    from saudial.run.checkpoints import CheckpointStore
    from saudial.run.train import Trained

log = logging.getLogger(__name__)


def run(settings: Settings, dry_run: bool = False) -> int:
    """Check, train, evaluate, publish; return the exit code."""
    dataset = load_configured(settings)
    # The slow imports (torch, transformers, PEFT, TRL: seconds) only once the data is known to be good.
    from saudial.model.hardware import check_cuda
    from saudial.publish import hub
    from saudial.run.train import train

    if settings.quantization != "none" and not dry_run:
        check_cuda()
    if settings.push_to_hub:  # a push that would fail must fail now, not after hours of training (exit 2)
        hub.preflight(settings)
    if not dry_run and (processes := distributed.needs_launch(settings)):
        return distributed.launch(processes)  # N ranks of this same command (checked once, here); their exit code
    trained = train(settings, dataset, dry_run=dry_run, store=checkpoint_store(settings))
    if trained is not None:
        after_training(trained)
    return EXIT_OK


def checkpoint_store(settings: Settings) -> CheckpointStore | None:
    """The Hub copy of the newest checkpoint, with SAUDIAL_HUB_STRATEGY=checkpoint."""
    if not (settings.push_to_hub and settings.hub_strategy == "checkpoint"):
        return None
    from saudial.publish import hub
    from saudial.run.checkpoints import CheckpointStore

    return CheckpointStore(
        upload=partial(hub.upload_checkpoint, settings), download=partial(hub.download_checkpoint, settings)
    )


def after_training(trained: Trained) -> dict[str, Any]:
    """Evaluate the in-memory adapter as configured, then push when SAUDIAL_PUSH_TO_HUB is on.

    Returns the evaluation results (also merged into metrics.json). A failed upload raises PushError
    (exit code 4) after the adapter and the evaluation are safely on disk.
    """
    settings = trained.settings
    results: dict[str, Any] = {}
    if settings.eval != "none" and not trained.eval_rows.empty:
        from saudial.inference.evaluate import evaluate

        results = evaluate(
            settings,
            trained.model,
            trained.tokenizer,
            trained.eval_rows,
            settings.output_dir,
            loss=trained.metrics.get("eval_loss"),
        )
        trained.metrics.update(results)
    from saudial.publish.card import write_card

    write_card(settings.output_dir, settings.hub_model_id)  # saudial's card replaces TRL's placeholder README.md
    if settings.push_to_hub:
        from saudial.jobs.push import push

        push(settings, settings.output_dir)
    return results

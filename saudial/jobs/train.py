"""`saudial train`: the whole job, start to end.

1. Cheap checks first, so a wrong path or a missing GPU fails in seconds, not after the slow imports of
   transformers, PEFT and TRL: the data (pandas only), the output directory's path, the GPU (torch only), the Hub
   upload. A dry run makes the same checks, the GPU's aside.
2. With several GPUs, this same command as one process per GPU (process/distributed.py).
3. Training (training/recipe.py): the adapter, tokenizer and run record in OUTPUT_DIR/staging (status trained).
4. After training, in this order, each recorded in the run record so that a restart with the same
   settings does only what is left: evaluation (SAUDIAL_EVAL; SIGTERM stops it with exit 75) -> evaluated;
   the run's files moved into OUTPUT_DIR (rundir/staging.py) -> finished, then saudial's model card (the record
   notes it: a crash between the two is completed by the next start); the GGUF export (SAUDIAL_EXPORT, into
   OUTPUT_DIR/gguf: jobs/export.py; a start that finds it missing does it); the Hub upload (SAUDIAL_PUSH_TO_HUB)
   -> pushed. A start that finds this run finished and nothing left exits 0 ("nothing to do"). Only the
   main process does these.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from saudial.config.settings import Settings
from saudial.data.conversations import load_configured_data
from saudial.errors import EXIT_OK, OOM_INFERENCE, faults
from saudial.model import base_model
from saudial.process import distributed
from saudial.process.collector import long_lived_imports
from saudial.rundir import staging

if TYPE_CHECKING:
    from saudial.rundir.checkpoints import CheckpointStore
    from saudial.training.recipe import Trained

log = logging.getLogger(__name__)

CARD_WRITTEN = "card_written"  # in the run record once saudial's model card is in OUTPUT_DIR


def run(settings: Settings, dry_run: bool = False) -> int:
    """Check, train, evaluate, publish; return the exit code."""
    dataset = load_configured_data(settings)  # SauDial rows, or conversations (SAUDIAL_TASK)
    if settings.task != dataset.task:  # `auto` resolved, so that the run's record says which
        settings = settings.model_copy(update={"task": dataset.task})
    # A path that can never be the run's folder (a file, the data's folder, the current one): refused now, dry run
    # or not; what the folder holds is looked at when the run starts (rundir/outputs.py).
    staging.check_not_protected(settings.output_dir, "SAUDIAL_OUTPUT_DIR", settings.data)
    # The slow imports (torch, transformers, PEFT, TRL: seconds) only once the data is known to be good.
    with long_lived_imports():
        from saudial.model.hardware import check_cuda
        from saudial.publish import hub
        from saudial.training.recipe import train

    # The base model: a size that does not exist or an architecture saudial does not train stops here (exit 2).
    info = base_model.inspect_base(settings)
    base_model.log_base(info, settings)
    if settings.export:  # an unknown GGUF type fails now, not after training (exit 2)
        from saudial.export.llama import parse_types

        parse_types(settings.export.removeprefix("gguf:"), "SAUDIAL_EXPORT")
    if settings.quantization != "none" and not dry_run:
        check_cuda()
    if settings.push_to_hub:  # a push that would fail must fail now, not after hours of training (exit 2)
        hub.preflight(settings)
    from saudial.process import signals

    signals.stop_if_received("training started", "nothing was written: start it again")  # heard while importing
    if not dry_run and (processes := distributed.needs_launch(settings)):
        return distributed.launch(processes)  # N ranks of this same command (checked once, here); their exit code
    trained = train(settings, dataset, dry_run, checkpoint_store(settings), base_model.record_of(info))
    if trained is not None:
        after_training(trained)
    return EXIT_OK


def checkpoint_store(settings: Settings) -> CheckpointStore | None:
    """The Hub copy of the newest checkpoint, with SAUDIAL_HUB_STRATEGY=checkpoint."""
    if not (settings.push_to_hub and settings.hub_strategy == "checkpoint"):
        return None
    from saudial.publish import hub
    from saudial.rundir.checkpoints import CheckpointStore

    return CheckpointStore(
        upload=partial(hub.upload_checkpoint, settings), download=partial(hub.download_checkpoint, settings)
    )


def after_training(trained: Trained) -> dict[str, Any]:
    """What is left after training: evaluate, move the run into place, write the model card, push when
    SAUDIAL_PUSH_TO_HUB is on.

    Returns the evaluation results (also merged into metrics.json). A failed upload raises PushError
    (exit code 4) after the adapter and the evaluation are safely in place.
    """
    from saudial.process import signals
    from saudial.publish.card import CARD, write_card
    from saudial.rundir import record, staging

    settings, output_dir = trained.settings, trained.settings.output_dir
    results: dict[str, Any] = {}
    if trained.stage == "evaluate":
        results = evaluate_run(trained)
    if trained.stage in ("evaluate", "promote"):
        signals.stop_if_received(
            "the move into place",
            f"the finished run is complete in {trained.run_dir}: restart with the same settings to move it into place",
        )
        with faults(output_dir, note=f"the finished run is complete in {trained.run_dir}: restart to move it"):
            staging.promote(output_dir)
        log.info("the finished run is in %s", output_dir.resolve())
    if trained.stage in ("evaluate", "promote", "done") and not (
        record.read_json(output_dir / record.MANIFEST) or {}
    ).get(CARD_WRITTEN):
        with faults(output_dir, note=f"the finished run is in {output_dir}: restart to write its model card"):
            record.own(output_dir, CARD)  # the run's card (it names OUTPUT_DIR, so it is written in place)
            write_card(output_dir, settings.hub_model_id)  # saudial's card replaces TRL's placeholder README.md
            record.update(output_dir, {CARD_WRITTEN: record.now()})
    exported = False
    if settings.export and not (record.read_json(output_dir / record.MANIFEST) or {}).get("export"):
        from saudial.jobs.export import run_export

        run_export(settings, output_dir, None, None, lora_only=False)  # OUTPUT_DIR/gguf, in the run's record
        write_card(output_dir, settings.hub_model_id)  # the card lists the GGUF files
        exported = True
    if trained.stage == "done":
        if not exported:
            log.info(
                "nothing to do: %s already holds this run, finished (same settings and data)", output_dir.resolve()
            )
    elif settings.push_to_hub:
        from saudial.jobs.push import push, retry_command

        then = f"the finished run is in {output_dir}: upload it with `{retry_command(output_dir)}`"
        signals.stop_if_received("the upload", then)
        push(settings, output_dir)  # SIGTERM from here: the card is finished, the upload stopped at once (exit 75)
        record.advance(output_dir, record.PUSHED, hub_model_id=settings.hub_model_id)
    return results


def evaluate_run(trained: Trained) -> dict[str, Any]:
    """Evaluate the adapter in staging (in memory after training, else loaded again); status evaluated."""
    from saudial.process import signals
    from saudial.rundir import record

    settings, run_dir = trained.settings, trained.run_dir
    results: dict[str, Any] = {}
    if settings.eval != "none" and not trained.eval_rows.empty:
        from saudial.inference.evaluation import evaluate
        from saudial.inference.generate import load_for_inference

        then = f"the trained adapter is in {run_dir}: restart with the same settings to finish the evaluation"
        with signals.interruptible("evaluation", then, trained.signal), faults(run_dir, OOM_INFERENCE, then):
            signals.check()
            model, tokenizer = trained.model, trained.tokenizer
            if model is None:
                log.info("evaluating the adapter trained by an earlier start, in %s", run_dir)
                model, tokenizer = load_for_inference(settings, run_dir, revision=trained.revision)
            results = evaluate(settings, model, tokenizer, trained.eval_rows, run_dir, trained.metrics.get("eval_loss"))
        trained.metrics.update(results)
    record.advance(run_dir, record.EVALUATED)
    return results

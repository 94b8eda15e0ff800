"""`saudial evaluate`: score a trained adapter against its base model on its run's eval split."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from saudial.config.settings import Settings
from saudial.data import chat_examples
from saudial.data.chat_examples import CONVERSATION
from saudial.data.conversations import ChatData, load_configured_data
from saudial.data.examples import split
from saudial.data.messages import check_template
from saudial.errors import ConfigError, check_writable
from saudial.inference.evaluation import evaluate
from saudial.inference.generate import load_for_inference, settings_for_adapter
from saudial.process import signals
from saudial.publish.card import CARD, write_card
from saudial.rundir import products, record
from saudial.rundir.record import MANIFEST, PUSHED, owned, read_json
from saudial.rundir.staging import check_can_be_directory

log = logging.getLogger(__name__)


def eval_split(settings: Settings) -> pd.DataFrame:
    """The held-out rows (or conversations) of the adapter's run: same data file, dialect filter, eval_size
    and seed."""
    dataset = load_configured_data(settings)
    if isinstance(dataset, ChatData):
        rows = chat_examples.held_out_frame(chat_examples.split(dataset, settings.eval_size, settings.seed).eval)
    else:
        rows = split(dataset.rows, settings.eval_size, settings.seed).eval
    if rows.empty:
        raise ConfigError(
            f"the eval split of {settings.data} is empty (SAUDIAL_EVAL_SIZE={settings.eval_size}): raise it to evaluate"
        )
    return rows


def run_evaluate(settings: Settings, adapter_dir: Path) -> dict[str, Any]:
    """`saudial evaluate --adapter DIR`: evaluate a trained adapter on its run's eval split."""
    explicit_output = "output_dir" in settings.model_fields_set
    settings = settings_for_adapter(settings, adapter_dir)
    if settings.eval == "none":
        log.info("eval is none (SAUDIAL_EVAL or --eval): nothing to evaluate; --eval full or loss evaluates")
        return {}
    output_dir = settings.output_dir if explicit_output else adapter_dir
    elsewhere = explicit_output and output_dir.resolve() != adapter_dir.resolve()
    if elsewhere:
        check_can_be_directory(output_dir, "--output-dir", "give --output-dir a folder, or leave it out")
    check_writable(output_dir)  # created where missing; read-only is exit 74 now, not after the generation
    if elsewhere:
        claim(output_dir)
    rows = eval_split(settings)
    if settings.task == "auto":  # the adapter's own record says which; else the data does
        settings = settings.model_copy(update={"task": "chat" if CONVERSATION in rows else "translate"})
    model, tokenizer = load_for_inference(settings, adapter_dir)
    if settings.task == "chat":
        check_template(tokenizer, str(adapter_dir))
    # Stops between batches (exit 75) until the results are written; from there on it finishes, card included.
    then = f"nothing was written: run `saudial evaluate --adapter {adapter_dir}` again"
    with signals.interruptible("evaluation", then):
        results = evaluate(settings, model, tokenizer, rows, output_dir, command="evaluate")
        update_card(output_dir)
    return results


def claim(output_dir: Path) -> None:
    """An --output-dir other than the adapter's folder holds evaluations only: new, empty, or an earlier one's (its
    record says so). Another command's output or anything saudial did not write there is refused (exit 2), overwrite
    or not; the folder's record lists what the evaluation writes before it writes it."""
    fix = ": choose a new or empty folder, or leave --output-dir out to evaluate into the adapter's own folder"
    earlier = products.earlier_record(f"--output-dir {str(output_dir)!r}", output_dir, "evaluation", fix)
    files = sorted({*owned(earlier or {}), record.METRICS, record.RESULTS_MD, record.PREDICTIONS} - {MANIFEST})
    record.update(output_dir, {"saudial_run": 1, "saudial_evaluate": 1, record.FILES: files})


def update_card(output_dir: Path) -> None:
    """A run's model card shows its latest evaluation, as its metrics.json and run record do."""
    manifest = read_json(output_dir / MANIFEST)
    if manifest is None or CARD not in owned(manifest):
        return
    write_card(output_dir, (manifest.get("config") or {}).get("hub_model_id"))
    if manifest.get("status") == PUSHED:
        log.info("the copy on the Hub still shows the earlier evaluation: `saudial push --output-dir %s`", output_dir)

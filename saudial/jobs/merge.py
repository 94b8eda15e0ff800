"""Fold the adapter into the base model: one bf16 model + tokenizer, for tools that take no adapter.

The base model is loaded unquantized (merging into 4-bit weights would round the LoRA update away),
the adapter is merged with PEFT's `merge_and_unload`, and the result is saved with `save_pretrained`,
so plain `AutoModelForCausalLM.from_pretrained(DIR)` loads it (what vLLM and llama.cpp's converter take).

Like a training run, a merge is written into --output/staging and moved into --output only once it is
complete (rundir/staging.py): a merge that fails (disk full, out of memory) leaves the previous merged
model as it was, and one stopped by SIGTERM/SIGINT (exit 75) leaves nothing of itself. Its run_manifest.json
(the adapter's, with the merge's own list of files) says what a later merge with
SAUDIAL_OVERWRITE_OUTPUT_DIR=true may replace; nothing else there is touched.
"""

from __future__ import annotations

import logging
from pathlib import Path

from saudial.config.huggingface import check_adapter_weights
from saudial.config.settings import Settings
from saudial.errors import ConfigError, Interrupted, faults
from saudial.inference.generate import settings_for_adapter
from saudial.inference.merged import load_merged
from saudial.process import signals
from saudial.process.environment import versions
from saudial.rundir import products, record, staging
from saudial.rundir.record import MANIFEST, now, read_json, write_json

log = logging.getLogger(__name__)

MERGE_INFO = "merge_info.json"
# Out of memory while merging: the whole base model is in host memory, unquantized (bf16).
OOM_MERGE = "merging holds the whole base model in host memory in bf16 (about 2.5 GB for LFM2-1.2B): free memory"


def merge(settings: Settings, adapter_dir: Path, output: Path) -> Path:
    """Merge; a refusal (exit 2) leaves --output as it was: the adapter is checked before anything is written,
    and a refusal that comes later (the base model cannot be loaded) takes back what `prepare` wrote, as does
    SIGTERM/SIGINT (exit 75) before the merge is complete. The move into place is never cut short."""
    settings = settings_for_adapter(settings, adapter_dir)
    check_adapter_weights(adapter_dir)
    created = None if output.exists() else output
    with signals.deferred("preparing the output folder"):
        work = products.prepare(output, settings, kind="merge")
    note, then = f"nothing in {output} outside {work} was changed", f"nothing was written to {output}: run it again"
    try:
        with signals.interruptible("the merge", then, at_once=True), faults(work, oom_advice=OOM_MERGE, note=note):
            write(settings, adapter_dir, work)
    except (ConfigError, Interrupted):  # e.g. the base model cannot be reached: take back what `prepare` wrote
        products.discard(work, created)
        raise
    with signals.deferred("the move into place"), faults(work, note=note):
        staging.promote(output)
    log.info("merged model written to %s", output.resolve())
    return output


def write(settings: Settings, adapter_dir: Path, work: Path) -> None:
    """The merged model, its tokenizer, merge_info.json and the record into `work`."""
    log.info("loading %s unquantized (bf16) and merging %s into it", settings.model_name_or_path, adapter_dir)
    model, tokenizer = load_merged(settings, adapter_dir, "bfloat16")
    model.save_pretrained(work)
    tokenizer.save_pretrained(work)
    write_json(
        work / MERGE_INFO,
        {
            "base_model": settings.model_name_or_path,
            "base_model_revision": settings.model_revision,
            "adapter": str(adapter_dir.resolve()),
            "dtype": "bfloat16",
            "merged": now(),
            "versions": versions(),
        },
    )
    # The adapter's record (its settings, data, versions) with the merge's own files.
    manifest = read_json(adapter_dir / MANIFEST) or {"saudial_run": 1}
    files = [name for name in staging.contents(work) if name != MANIFEST]
    record.update(work, {**manifest, "saudial_merge": 1, record.FILES: files}, replace=True)

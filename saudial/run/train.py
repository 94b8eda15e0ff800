"""The training recipe, top to bottom: data -> tokenizer -> model -> SFTTrainer -> adapter on disk.

Read `train()` first. It is one run of TRL's SFTTrainer on the loaded data; what happens before it
(the cheap checks, the multi-process launch) and after it (evaluation, model card, Hub upload) is
jobs/train.py.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from saudial.data.examples import log_summary, summarize, to_prompt_completion
from saudial.data.split import split as split_rows
from saudial.errors import ConfigError, Interrupted, TrainingError
from saudial.model import hardware
from saudial.model.loading import load_model, load_tokenizer
from saudial.run import distributed, record, reproducibility
from saudial.run.checkpoints import PREFIX, CheckpointCallback, CheckpointStore
from saudial.run.meter import ThroughputMeter
from saudial.run.outputs import prepare_output_dir
from saudial.run.signals import StopOnSignal
from saudial.run.trainer import build_trainer, count_parameters

if TYPE_CHECKING:
    from saudial.config.settings import Settings
    from saudial.data.workbook import Dataset

log = logging.getLogger(__name__)


@dataclass
class Trained:
    """A finished training run, still in memory: what evaluation and publishing need."""

    settings: Settings  # as the run used them (e.g. gradient checkpointing turned on for a small GPU)
    model: Any  # the PeftModel: base model + the trained adapter
    tokenizer: Any
    eval_rows: pd.DataFrame
    metrics: dict[str, Any] = field(default_factory=dict)


def train(
    settings: Settings, dataset: Dataset, dry_run: bool = False, store: CheckpointStore | None = None
) -> Trained | None:
    """Train an adapter on `dataset` as configured and save it in settings.output_dir.

    Returns None for a dry run, and on the processes other than rank 0 of a multi-process run.
    `store`: where else checkpoints go and come from (the Hub, with hub_strategy=checkpoint).
    """
    clock = time.perf_counter()
    timings: dict[str, float] = {}

    # 1. Data: the split (deterministic, stratified by dialect, each English sentence on one side).
    split = split_rows(dataset.rows, settings.eval_size, settings.seed)
    if split.train.empty:
        raise ConfigError("the training split is empty: lower SAUDIAL_EVAL_SIZE or add rows")
    if not dry_run:
        gpu_gib = hardware.gpu_memory_gib()
        fitted = hardware.fit_to_gpu(settings, gpu_gib)
        if fitted is not settings:
            log.info(
                "the GPU has %.0f GiB: gradient checkpointing on (the default batch peaks at ~49 GiB without it; "
                "SAUDIAL_GRADIENT_CHECKPOINTING=false keeps it off)",
                gpu_gib,
            )
            settings = fitted
        # Fresh start, resume from a checkpoint, or refuse (exit 2): rank 0 decides before any model is
        # loaded (run/outputs.py) and writes the run's record with its fingerprint.
        distributed.init()
        fingerprint = record.run_fingerprint(settings, dataset.sha256)
        fetch = (lambda: store.download(fingerprint)) if store else None
        plan = distributed.on_main_then_share(
            lambda: prepare_output_dir(settings, fingerprint, dataset.sha256, fetch_checkpoint=fetch)
        )
        determinism = reproducibility.configure()
        stopper = StopOnSignal()  # SIGTERM/SIGINT from here on: checkpoint, then exit 75
        stopper.install()

    # 2. Tokenizer, and what the data looks like through it.
    tokenizer = load_tokenizer(settings)
    train_ds, eval_ds = to_prompt_completion(split.train), to_prompt_completion(split.eval)
    summary = summarize(dataset, split, tokenizer, settings.max_length, train_ds)
    log_summary(summary)
    timings["data_s"] = time.perf_counter() - clock
    if dry_run:
        first = train_ds[0]
        log.info("first training example:\n%s%s%s", first["prompt"], first["completion"], tokenizer.eos_token)
        return None

    # 3. The base model (4-bit NF4 on a GPU by default) and the LoRA adapter to train on it.
    tick = time.perf_counter()
    dtype = hardware.compute_dtype(settings)
    log.info("loading %s (%s, compute dtype %s)", settings.model_name_or_path, settings.quantization, dtype)
    model = load_model(settings)
    timings["load_s"] = time.perf_counter() - tick

    # 4. TRL's SFTTrainer: prompt/completion pairs, loss on the completion and its EOS only.
    trainer = build_trainer(settings, model, tokenizer, train_ds, eval_ds, dtype)
    peft_model = trainer.model  # the base model wrapped with the LoRA adapter by TRL
    assert peft_model is not None
    meter = ThroughputMeter()
    trainer.add_callback(meter)
    trainer.add_callback(CheckpointCallback(settings, fingerprint, on_saved=store.upload if store else None))
    trainer.add_callback(stopper)
    trainable, total = count_parameters(peft_model)
    log.info(
        "LoRA on %s: %s trainable of %s parameters", ",".join(settings.target_modules), f"{trainable:,}", f"{total:,}"
    )

    tick = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=str(plan.checkpoint) if plan.checkpoint else None)
    except torch.OutOfMemoryError:
        raise TrainingError(
            "CUDA out of memory: lower SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE (raise SAUDIAL_GRADIENT_ACCUMULATION_STEPS "
            "to keep the effective batch), lower SAUDIAL_MAX_LENGTH, or set SAUDIAL_GRADIENT_CHECKPOINTING=true"
        ) from None
    finally:
        stopper.restore()
    if stopper.stopped_at is not None:  # a signal stopped training: the checkpoint is written, no adapter
        saved = settings.output_dir.resolve() / f"{PREFIX}{stopper.stopped_at}"
        if trainer.is_world_process_zero():
            record.interrupted(settings.output_dir, stopper.stopped_at, str(stopper.received))
        interrupted = Interrupted(
            f"stopped by {stopper.received} at step {stopper.stopped_at}; checkpoint saved to {saved}; "
            "restart with the same settings to resume"
        )
        interrupted.shared = True  # every rank stopped at this step; rank 0 says so
        raise interrupted
    timings["train_s"] = time.perf_counter() - tick

    metrics: dict[str, Any] = {
        "train_loss": result.training_loss,
        "train_runtime_s": timings["train_s"],
        "train_steps": result.global_step,
        "train_tokens": int(trainer.state.num_input_tokens_seen),
        "train_tokens_per_second": trainer.state.num_input_tokens_seen / max(timings["train_s"], 1e-9),
        "train_samples": len(train_ds),
        "eval_samples": len(eval_ds),
        "trainable_parameters": trainable,
        **meter.result,
        "loss_curve": [[e["step"], e["loss"]] for e in trainer.state.log_history if "loss" in e],
    }
    if len(eval_ds) and settings.eval != "none":
        tick = time.perf_counter()
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
        timings["eval_loss_s"] = time.perf_counter() - tick

    # 5. Save: the adapter, the tokenizer, the run record (manifest and metrics).
    tick = time.perf_counter()
    trainer.save_model(str(settings.output_dir))  # writes on rank 0 only
    if not trainer.is_world_process_zero():  # with several processes, only rank 0 writes outputs
        return None
    tokenizer.save_pretrained(settings.output_dir)
    timings["save_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - clock
    metrics["timings"] = timings
    record.finished(settings.output_dir, summary, metrics, determinism, distributed.world_size())
    log.info("adapter saved to %s", settings.output_dir.resolve())
    return Trained(settings, peft_model, tokenizer, split.eval, metrics)

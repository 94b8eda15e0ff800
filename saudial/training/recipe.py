"""The training recipe, top to bottom: data -> tokenizer -> model -> SFTTrainer -> adapter on disk.

Read `train()` first. It is one run of TRL's SFTTrainer on the loaded data, in OUTPUT_DIR/staging; what
happens before it (the cheap checks, the multi-process launch) and after it (evaluation, moving the run
into place, model card, Hub upload) is jobs/train.py.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from saudial.config.huggingface import fetch_command, not_here
from saudial.data import chat_examples, examples
from saudial.data.conversations import ChatData
from saudial.errors import OOM_INFERENCE, ConfigError, Interrupted, faults
from saudial.model import fast_lfm2, hardware
from saudial.model.loading import load_model, load_tokenizer, resolve_revision
from saudial.model.lora import check_targets
from saudial.process import collector, distributed
from saudial.process.signals import Stopper
from saudial.rundir import record
from saudial.rundir.checkpoints import PREFIX, TRAINING_ARGS, CheckpointCallback, CheckpointStore
from saudial.rundir.outputs import ResumePlan, prepare_output_dir
from saudial.training import reproducibility
from saudial.training.meter import ThroughputMeter
from saudial.training.trainer import build_trainer, check_optimizer, count_parameters

if TYPE_CHECKING:
    from saudial.config.settings import Settings
    from saudial.data.workbook import Dataset

log = logging.getLogger(__name__)


class StopOnSignal(Stopper, TrainerCallback):
    """SIGTERM/SIGINT: finish the current optimizer step, save a checkpoint, stop training.

    The handler only sets a flag; the callback acts on it at the end of the step, on every rank at the
    same step (the flag is all-reduced), because ranks that stopped at different steps would wait for
    each other forever. Further signals while stopping are logged and otherwise ignored: the checkpoint
    is being written, and a SIGKILL in the middle of it leaves a folder that the next start skips. A
    signal heard before training began (process/signals.py) stops it after its first step.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stopped_at: int | None = None

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if distributed.any_rank(self.received is not None) and state.global_step < state.max_steps:
            self.received = self.received or "a signal (on another process)"
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control


@dataclass
class Trained:
    """A finished training run, still in memory: what evaluation and publishing need."""

    settings: Settings  # as the run used them
    model: Any  # the PeftModel: base model + the trained adapter (None: trained by an earlier start)
    tokenizer: Any
    eval_rows: pd.DataFrame  # held-out rows (chat: dialect + conversation, data/chat_examples.held_out_frame)
    metrics: dict[str, Any] = field(default_factory=dict)
    run_dir: Path = Path()  # where the run's files are: OUTPUT_DIR/staging (OUTPUT_DIR when only the upload is left)
    stage: str = "evaluate"  # what is left: evaluate, promote (move into place) or push (rundir/outputs.py)
    revision: str | None = None  # the base model's pinned commit, to load it again for evaluation
    signal: str | None = None  # SIGTERM/SIGINT that arrived after the last step: evaluation stops at once


def train(
    settings: Settings,
    dataset: Dataset | ChatData,
    dry_run: bool = False,
    store: CheckpointStore | None = None,
    base: dict[str, Any] | None = None,
) -> Trained | None:
    """Train an adapter on `dataset` (SauDial rows, or conversations: SAUDIAL_TASK) as configured and save it
    in OUTPUT_DIR/staging (status trained).

    Returns None for a dry run, and on the processes other than rank 0 of a multi-process run. Where an
    earlier start trained this run already, trains nothing and returns what is left to do (`Trained.stage`).
    `store`: where else checkpoints go and come from (the Hub, with hub_strategy=checkpoint). `base`: what
    model/base_model.py found of the base model (family, size, status), kept in the run record.
    """
    check_optimizer(settings)
    clock = time.perf_counter()
    timings: dict[str, float] = {}
    revision: str | None = None  # the base model's commit, pinned when the run starts (model/loading.py)

    # 1. Data: the split (deterministic, stratified by dialect): each English sentence on one side; for chat
    # data each conversation whole, and those opening with the same user message, on one side.
    if isinstance(dataset, ChatData):
        chat_split = chat_examples.split(dataset, settings.eval_size, settings.seed)
        train_count, held_out = len(chat_split.train), chat_examples.held_out_frame(chat_split.eval)
    else:
        split = examples.split(dataset.rows, settings.eval_size, settings.seed)
        train_count, held_out = len(split.train), split.eval
    if not train_count:
        raise ConfigError("the training split is empty: lower SAUDIAL_EVAL_SIZE or add rows")
    if held_out.empty and settings.eval != "none":
        warn_no_held_out(settings)
    if not dry_run:
        # Fresh start, resume, continue after training, or refuse (exit 2): rank 0 decides before any model
        # is loaded (rundir/outputs.py) and writes the run's record with its fingerprint in OUTPUT_DIR/staging.
        distributed.init()
        fingerprint = record.run_fingerprint(settings, dataset.sha256)
        fetch = (lambda: store.download(fingerprint)) if store else None
        plan: ResumePlan = distributed.on_main_then_share(
            lambda: prepare_output_dir(settings, fingerprint, dataset.sha256, fetch, lambda: resolve_revision(settings))
        )
        revision = plan.model.get("revision_sha")  # None for a local directory
        if plan.stage != "train":  # trained by an earlier start: what is left is jobs/train.py's
            if not distributed.is_main_process():
                return None
            return Trained(settings, None, None, held_out, plan.metrics, plan.run_dir, plan.stage, revision)
        determinism = reproducibility.configure()
        stopper = StopOnSignal()  # SIGTERM/SIGINT from here on: checkpoint, then exit 75
        stopper.install()
        run_dir = plan.run_dir
        staged = settings.model_copy(update={"output_dir": run_dir})  # the Trainer writes into staging

    # 2. Tokenizer, and what the data looks like through it: SauDial rows as the original recipe's prompt and
    # the translation (prompt/completion), conversations as token ids with their assistant tokens marked, from
    # the tokenizer's own chat template (data/messages.py).
    name = settings.tokenizer_name_or_path or settings.model_name_or_path
    if dry_run and (why := not_here(name, settings.model_revision)):  # the settings and data are checked offline
        data_split = chat_split if isinstance(dataset, ChatData) else split
        examples.log_summary(examples.summarize(dataset, data_split, None, settings.max_length, None))
        log.warning(
            "token statistics skipped: the tokenizer %s. To count tokens too, cache it where the Hub is reachable "
            "(same HF_HOME) and dry-run again: %s",
            why,
            fetch_command(name, settings.model_revision),
        )
        return None
    tokenizer = load_tokenizer(settings, revision=revision)
    with collector.paused():  # millions of token-id lists (process/collector.py)
        if isinstance(dataset, ChatData):
            train_ds, eval_ds, summary = chat_examples.prepare(dataset, chat_split, tokenizer, settings.max_length)
        else:
            train_ds, eval_ds, summary = examples.prepare(dataset, split, tokenizer, settings.max_length)
    timings["data_s"] = time.perf_counter() - clock
    if dry_run:
        first = train_ds[0]
        if isinstance(dataset, ChatData):  # the rendered conversation, its end-of-turn tokens included
            log.info("first training example:\n%s", tokenizer.decode(first["input_ids"]))
        else:
            log.info("first training example:\n%s%s%s", first["prompt"], first["completion"], tokenizer.eos_token)
        return None

    # 3. The base model (4-bit NF4 on a GPU by default) and the LoRA adapter to train on it.
    tick = time.perf_counter()
    # Triton's key of its installation, which the first launch of saudial's kernels (or of compiled layers)
    # would compute: ~0.4 s, here beside the model's load
    triton_keyed = fast_lfm2.key_triton_early(settings.fused_kernels or settings.torch_compile)
    dtype = hardware.compute_dtype(settings)
    log.info("loading %s (%s, compute dtype %s)", settings.model_name_or_path, settings.quantization, dtype)
    if distributed.is_main_process():  # what the model card says the adapter was trained on
        record.update(run_dir, {"compute_dtype": str(dtype).removeprefix("torch.")})
    model = load_model(settings, revision=revision)
    timings["load_s"] = time.perf_counter() - tick
    # Every target name must select a module (PEFT skips one that selects none): exit 2 before training.
    matched = check_targets(model, settings.target_modules)
    log.info("LoRA targets, modules each name selects: %s", ", ".join(f"{k} {v}" for k, v in matched.items()))

    # 4. TRL's SFTTrainer: prompt/completion pairs, loss on the completion and its EOS only (chat: token ids,
    # loss where the assistant mask is 1: every assistant turn and its end-of-turn token).
    trainer = build_trainer(staged, model, tokenizer, train_ds, eval_ds, dtype)
    peft_model = trainer.model  # the base model wrapped with the LoRA adapter by TRL
    assert peft_model is not None
    meter = ThroughputMeter()
    trainer.add_callback(meter)
    trainer.add_callback(CheckpointCallback(staged, fingerprint, on_saved=store.upload if store else None))
    trainer.add_callback(stopper)
    trainable, total = count_parameters(peft_model)
    log.info(
        "LoRA on %s: %s trainable of %s parameters", ",".join(settings.target_modules), f"{trainable:,}", f"{total:,}"
    )

    tick = time.perf_counter()
    io_note = (
        f"nothing outside {run_dir} was changed; with room again, restart with the same settings: it resumes from "
        "the newest complete checkpoint"
    )
    triton_keyed()
    try:
        with faults(run_dir, note=io_note):
            result = trainer.train(resume_from_checkpoint=str(plan.checkpoint) if plan.checkpoint else None)
    except BaseException:
        stopper.restore()
        raise
    if stopper.stopped_at is not None:  # a signal stopped training: the checkpoint is written, no adapter
        stopper.restore()
        saved = run_dir.resolve() / f"{PREFIX}{stopper.stopped_at}"
        if trainer.is_world_process_zero():
            record.interrupted(run_dir, stopper.stopped_at, str(stopper.received))
        interrupted = Interrupted(
            f"stopped by {stopper.received} at step {stopper.stopped_at}; checkpoint saved to {saved}; "
            "restart with the same settings to resume"
        )
        interrupted.shared = True  # every rank stopped at this step; rank 0 says so
        raise interrupted
    timings["train_s"] = time.perf_counter() - tick
    fitted = trainer.activation_fit.summary() if trainer.activation_fit is not None else None
    if fitted is not None:
        log.info(
            "gradient checkpointing: %d to %d of %d decoder layers a step (%.1f on average)",
            fitted["checkpointed_min"],
            fitted["checkpointed_max"],
            fitted["layers"],
            fitted["checkpointed_mean"],
        )

    metrics: dict[str, Any] = {
        "train_loss": result.training_loss,
        "train_runtime_s": timings["train_s"],
        "train_steps": result.global_step,
        "train_tokens": int(trainer.state.num_input_tokens_seen),
        "train_tokens_per_second": trainer.state.num_input_tokens_seen / max(timings["train_s"], 1e-9),
        "train_samples": len(train_ds),
        "eval_samples": len(eval_ds),
        "trainable_parameters": trainable,
        "lora_target_modules": matched,
        **({"base_model": base} if base else {}),
        **meter.result,
        **({"gradient_checkpointing": fitted} if fitted is not None else {}),
        "loss_curve": [[e["step"], e["loss"]] for e in trainer.state.log_history if "loss" in e],
    }

    # 5. Save into staging: the adapter, the tokenizer, the run record (status trained). No training_args.bin
    # (the Trainer's pickle): the run record holds the settings. Then the eval loss, on every rank.
    tick = time.perf_counter()
    with faults(run_dir, note=io_note):
        before = {p.name for p in run_dir.iterdir()}
        trainer.save_model(str(run_dir))  # writes on rank 0 only
        if trainer.is_world_process_zero():
            (run_dir / TRAINING_ARGS).unlink(missing_ok=True)
            tokenizer.save_pretrained(run_dir)
            record.own(run_dir, *sorted({p.name for p in run_dir.iterdir()} - before))
            timings["save_s"] = time.perf_counter() - tick
            timings["total_s"] = time.perf_counter() - clock
            metrics["timings"] = timings
            record.trained(run_dir, summary, metrics, determinism, distributed.world_size())
            log.info("adapter saved; it moves into %s when the run is complete", settings.output_dir.resolve())
    if len(eval_ds) and settings.eval != "none" and not distributed.any_rank(stopper.received is not None):
        then = f"the trained adapter is in {run_dir}: restart with the same settings to finish the evaluation"
        tick = time.perf_counter()
        with faults(run_dir, oom_advice=OOM_INFERENCE, note=then):
            metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
        timings["eval_loss_s"] = time.perf_counter() - tick
        if trainer.is_world_process_zero():
            record.update(run_dir, metrics={"eval_loss": metrics["eval_loss"]})
    stopper.restore()
    if not trainer.is_world_process_zero():  # with several processes, only rank 0 writes outputs
        return None
    return Trained(settings, peft_model, tokenizer, held_out, metrics, run_dir, "evaluate", revision, stopper.received)


def warn_no_held_out(settings: Settings) -> None:
    """Why a run that was asked to evaluate will not, and what to change (the path as an argument: escaped)."""
    then = "this run trains on every row and will not evaluate (SAUDIAL_EVAL=%s): to evaluate, add rows (two or more"
    then += " in a dialect) or raise SAUDIAL_EVAL_SIZE; or set SAUDIAL_EVAL=none"
    if not settings.eval_size:
        log.warning("SAUDIAL_EVAL_SIZE=0 holds no rows out: " + then, settings.eval)
    else:  # data/examples.split: a dialect of one row keeps it; a sentence goes out with all its rows or not at all
        log.warning(
            "no rows could be held out of %s at SAUDIAL_EVAL_SIZE=%g: " + then,
            settings.data,
            settings.eval_size,
            settings.eval,
        )

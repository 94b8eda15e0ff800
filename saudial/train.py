"""The training recipe, top to bottom: data -> tokenizer -> model -> SFTTrainer -> adapter on disk.

Read `train()` first; everything it calls is in this file or a module named after its job.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from typing import Any

import datasets
import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase
from trl import SFTConfig, SFTTrainer

from saudial import checkpoints, distributed, finish, hardware, hub, reproducibility, speed
from saudial import data as data_mod
from saudial.checkpoints import prepare_output_dir
from saudial.config import Settings
from saudial.errors import ConfigError, Interrupted, TrainingError
from saudial.manifest import MANIFEST, METRICS, device_name, git_revision, now, run_fingerprint, versions, write_json
from saudial.model import compute_dtype, load_model, load_tokenizer, lora_config
from saudial.prompts import build_example

log = logging.getLogger(__name__)


def train(settings: Settings, dry_run: bool = False, dataset: data_mod.Dataset | None = None) -> dict[str, Any]:
    """Run one training job as configured; return its metrics. `dataset`: already loaded, if it was."""
    started, clock = now(), time.perf_counter()
    timings: dict[str, float] = {}
    if settings.data is None:
        raise ConfigError("no data file: set SAUDIAL_DATA (or --data) to the SauDial .xlsx, .csv, .jsonl or .parquet")

    # 1. Data: read the workbook as published, clean it, split it.
    if dataset is None:
        dataset = data_mod.load(settings.data, settings.sheet_name, settings.dialects)
    split = data_mod.split(dataset.rows, settings.eval_size, settings.seed)
    if split.train.empty:
        raise ConfigError("the training split is empty: lower SAUDIAL_EVAL_SIZE or add rows")
    if settings.push_to_hub:  # a push that would fail must fail now, not after hours of training (exit 2)
        hub.preflight(settings)
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
        # loaded (checkpoints.prepare_output_dir) and writes the manifest with the run's fingerprint.
        distributed.init()
        fingerprint = run_fingerprint(settings, dataset.sha256)
        plan = distributed.on_main_then_share(lambda: prepare_output_dir(settings, fingerprint, dataset.sha256))
        determinism = reproducibility.configure()
        stopper = checkpoints.StopOnSignal()  # SIGTERM/SIGINT from here on: checkpoint, then exit 75
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
        return {"dry_run": True, "data": summary}

    # 3. The base model (4-bit NF4 on a GPU by default) and the LoRA adapter to train on it.
    tick = time.perf_counter()
    dtype = compute_dtype(settings)
    log.info("loading %s (%s, compute dtype %s)", settings.model_name_or_path, settings.quantization, dtype)
    model = load_model(settings)
    timings["load_s"] = time.perf_counter() - tick

    # 4. TRL's SFTTrainer: prompt/completion pairs, loss on the completion and its EOS only.
    trainer = build_trainer(settings, model, tokenizer, train_ds, eval_ds, dtype)
    peft_model = trainer.model  # the base model wrapped with the LoRA adapter by TRL
    assert peft_model is not None
    meter = speed.ThroughputMeter()
    trainer.add_callback(meter)
    trainer.add_callback(checkpoints.CheckpointCallback(settings, fingerprint))
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
        saved = settings.output_dir.resolve() / f"{checkpoints.PREFIX}{stopper.stopped_at}"
        if trainer.is_world_process_zero():
            checkpoints.mark_interrupted(settings.output_dir, stopper.stopped_at, str(stopper.received))
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

    # 5. Save: the adapter, the tokenizer, the manifest and the metrics.
    tick = time.perf_counter()
    trainer.save_model(str(settings.output_dir))  # writes on rank 0 only
    if not trainer.is_world_process_zero():  # with several processes, only rank 0 writes outputs
        return metrics
    tokenizer.save_pretrained(settings.output_dir)
    timings["save_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - clock
    metrics["timings"] = timings
    write_json(settings.output_dir / METRICS, metrics)
    run_record = {
        "status": "finished",
        "lock_sha256": reproducibility.lock_sha256(),
        "processes": distributed.world_size(),
        "determinism": determinism,
        "attempts": plan.attempts,
    }
    write_json(
        settings.output_dir / MANIFEST,
        manifest(settings, dataset, summary, started, metrics) | run_record,
    )
    log.info("adapter saved to %s", settings.output_dir.resolve())
    # 6. Evaluation (SAUDIAL_EVAL) with the in-memory adapter, then the Hub upload (SAUDIAL_PUSH_TO_HUB).
    finish.after_training(settings, peft_model, tokenizer, split.eval, metrics)
    return metrics


def build_trainer(
    settings: Settings,
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    train_ds: datasets.Dataset,
    eval_ds: datasets.Dataset,
    dtype: torch.dtype,
) -> SFTTrainer:
    """TRL's SFTTrainer with the LoRA adapter on `model`, set up for speed as configured (saudial/speed.py)."""
    trainer = SFTTrainer(
        model=model,
        args=sft_config(settings, dtype),
        train_dataset=train_ds,
        eval_dataset=eval_ds if len(eval_ds) else None,
        processing_class=tokenizer,
        peft_config=lora_config(settings),
    )
    peft_model = trainer.model
    assert peft_model is not None
    if dtype == torch.float16:
        # TRL casts a quantized model's LoRA weights to bf16; fp16 mixed precision needs fp32 master
        # weights (the grad scaler cannot unscale bf16 grads: "_amp_foreach_non_finite_check_and_unscale_cuda"
        # not implemented for 'BFloat16', seen with trl 1.16 + torch 2.11).
        for param in peft_model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    speed.avoid_cudnn_attention()
    if settings.padding_free:
        # One flat row per micro-batch, no compute on padding; see speed.py for why the conv is replaced.
        speed.install_boundary_aware_conv()
        trainer.data_collator = speed.padding_free_collator(tokenizer.pad_token_id, settings.pad_to_multiple_of)
        if settings.attn_implementation == "auto" and dtype != torch.float32 and speed.varlen_available():
            speed.use_varlen_attention(peft_model)  # each example attends only to itself, no L^2 mask
            log.info("attention: flash varlen over the examples of each padding-free row")
    steps = speed.planned_steps(settings, len(train_ds), distributed.world_size())
    compile_layers, why = speed.decide_compile(settings, steps, torch.cuda.is_available())
    if compile_layers:
        count = speed.compile_decoder_layers(peft_model)
        log.info("torch.compile: %d decoder layers (%s); the first steps are slow while it compiles", count, why)
    else:
        log.info("torch.compile: off (%s)", why)
    return trainer


def to_prompt_completion(rows: pd.DataFrame) -> datasets.Dataset:
    records = [build_example(r.dialect, r.english, r.translation, r.context or None) for r in data_mod.iter_rows(rows)]
    return datasets.Dataset.from_list(
        records,
        features=datasets.Features({"prompt": datasets.Value("string"), "completion": datasets.Value("string")}),
    )


def token_lengths(ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Tokens per example as trained: prompt + completion + EOS."""
    texts = [p + c for p, c in zip(ds["prompt"], ds["completion"], strict=True)]
    encoded = tokenizer(texts, add_special_tokens=True)["input_ids"]
    return [len(ids) + 1 for ids in encoded]


def summarize(
    dataset: data_mod.Dataset,
    split: data_mod.Split,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    train_ds: datasets.Dataset,
) -> dict[str, Any]:
    lengths = token_lengths(train_ds, tokenizer)
    ordered = sorted(lengths)
    return {
        "file": str(dataset.path),
        "sha256": dataset.sha256,
        "rows_read": dataset.rows_read,
        "dropped_empty": dataset.dropped_empty,
        "duplicates_removed": dataset.duplicates_removed,
        "rows_used": len(dataset.rows),
        "train_rows": len(split.train),
        "eval_rows": len(split.eval),
        "per_dialect": split.counts,
        "train_tokens": {
            "mean": round(statistics.fmean(lengths), 1),
            "median": statistics.median(lengths),
            "p90": ordered[int(0.9 * (len(ordered) - 1))],
            "max": ordered[-1],
            "total": sum(lengths),
            "truncated_at_max_length": sum(1 for n in lengths if n > max_length),
            "max_length": max_length,
        },
    }


def log_summary(summary: dict[str, Any]) -> None:
    lines = [
        f"data: {summary['file']} (sha256 {summary['sha256'][:12]})",
        f"  rows read {summary['rows_read']}, dropped empty {summary['dropped_empty']}, "
        f"exact duplicates removed {summary['duplicates_removed']}, used {summary['rows_used']}",
        f"  {'dialect':<12}{'train':>7}{'eval':>7}",
    ]
    for dialect, counts in summary["per_dialect"].items():
        lines.append(f"  {dialect:<12}{counts['train']:>7}{counts['eval']:>7}")
    lines.append(f"  {'total':<12}{summary['train_rows']:>7}{summary['eval_rows']:>7}")
    t = summary["train_tokens"]
    lines.append(
        f"  train tokens/example: mean {t['mean']}, median {t['median']}, p90 {t['p90']}, max {t['max']}; "
        f"{t['truncated_at_max_length']} example(s) longer than max_length={t['max_length']} will be truncated"
    )
    log.info("\n".join(lines))


def sft_config(settings: Settings, dtype: torch.dtype) -> SFTConfig:
    on_gpu = torch.cuda.is_available()
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(settings.output_dir / "logs"))
    return SFTConfig(
        output_dir=str(settings.output_dir),
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler_type,
        warmup_steps=settings.warmup_ratio,  # transformers 5 takes a ratio in warmup_steps when < 1
        weight_decay=settings.weight_decay,
        num_train_epochs=settings.num_train_epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        per_device_eval_batch_size=settings.per_device_eval_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        max_length=settings.max_length,
        activation_checkpointing=settings.gradient_checkpointing,  # transformers 5 name of gradient_checkpointing
        optim=settings.optim,
        max_grad_norm=settings.max_grad_norm,
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=not on_gpu,
        completion_only_loss=True,  # loss on the translation (and EOS), not on the prompt
        logging_steps=settings.logging_steps,
        logging_first_step=True,
        report_to=[] if settings.report_to == "none" else [settings.report_to],
        save_strategy="steps",  # checkpoint-N every save_steps (resume after preemption: saudial/checkpoints.py)
        save_steps=settings.save_steps,
        save_total_limit=None,  # CheckpointCallback rotates, only once the new checkpoint is complete
        ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient every step
        eval_strategy="no",
        dataloader_num_workers=settings.dataloader_num_workers,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=False,
    )


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def manifest(
    settings: Settings,
    dataset: data_mod.Dataset,
    summary: dict[str, Any],
    started: str,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    return {
        "saudial_run": 1,
        "config": settings.redacted(),
        "fingerprint": run_fingerprint(settings, dataset.sha256),
        "data": {k: v for k, v in summary.items() if k != "train_tokens"} | {"tokens": summary["train_tokens"]},
        "versions": versions(),
        "device": device_name(),
        "git_revision": git_revision(),
        "started": started,
        "finished": now(),
        "metrics": {k: v for k, v in metrics.items() if k != "timings"},
    }

"""TRL's SFTTrainer as saudial runs it: the settings passed through by their names, the LoRA adapter,
padding-free batches, and the speed patches of model/patches.py.

`sft_config` passes every setting that is an `SFTConfig` field (TRL's and transformers' own names) as
it is, except the few that saudial handles itself (`HANDLED_HERE`, each with its reason) and the two
that transformers 5 renamed (`RENAMED`). tests/test_settings_flow.py fails when a setting reaches no
consumer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Any

import datasets
import torch
from transformers import PreTrainedTokenizerBase
from transformers.trainer_callback import ProgressCallback
from transformers.training_args import OptimizerNames
from trl import SFTConfig
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from saudial.config import runtime
from saudial.errors import ConfigError
from saudial.model import activation_memory, fast_lfm2, fused_lora, patches, short_conv
from saudial.model.lora import lora_config
from saudial.training.checkpointing import fit_activations
from saudial.training.steplines import StepLines
from saudial.training.sync_free import CountingCollator, SyncFreeSFTTrainer

if TYPE_CHECKING:
    from saudial.config.settings import Settings

log = logging.getLogger(__name__)

SFT_FIELDS = frozenset(f.name for f in dataclasses.fields(SFTConfig))

# Settings whose SFTConfig field has another name in transformers 5 (the settings keep the names of
# TRL's documentation).
RENAMED = {
    "gradient_checkpointing": "activation_checkpointing",  # `gradient_checkpointing` is its deprecated alias
    "warmup_ratio": "warmup_steps",  # transformers 5 reads a value below 1 in warmup_steps as a ratio
}

# SFTConfig fields that saudial sets itself instead of passing the setting of that name, and why.
HANDLED_HERE = {
    "padding_free": "TRL refuses padding_free without packing when max_length is set; saudial keeps TRL's "
    "truncation (padding_free=False) and gives the Trainer TRL's padding-free collator itself",
    "pad_to_multiple_of": "an argument of that collator",
    "torch_compile": "saudial compiles the decoder layers one by one (model/patches.py), not the whole model",
    "save_total_limit": "rundir/checkpoints.py rotates, and only once the new checkpoint is complete",
    "push_to_hub": "saudial uploads once, after evaluation (publish/hub.py); the Trainer would upload every save",
    "hub_model_id": "used by publish/hub.py",
    "hub_strategy": "used by publish/hub.py",
    "dataloader_num_workers": "unset, saudial picks it for the device (loader_workers)",
}


def sft_fields(settings: Settings) -> dict[str, Any]:
    """The settings that SFTConfig takes, under SFTConfig's names."""
    fields: dict[str, Any] = {}
    for name in type(settings).model_fields:
        if name in HANDLED_HERE:
            continue
        if name in RENAMED:
            fields[RENAMED[name]] = getattr(settings, name)
        elif name in SFT_FIELDS:
            fields[name] = getattr(settings, name)
    fields["output_dir"] = str(fields["output_dir"])
    return fields


def check_optimizer(settings: Settings) -> None:
    """SAUDIAL_OPTIM names one of transformers' optimizers (its own list), checked before anything loads:
    transformers would refuse it only when the trainer is built, after the data and the model."""
    if settings.optim not in {name.value for name in OptimizerNames}:
        raise ConfigError(
            f"SAUDIAL_OPTIM={settings.optim!r} is not an optimizer transformers knows: set one of its "
            "OptimizerNames, e.g. adamw_torch_fused (the default) or adamw_torch, or unset it"
        )


def sft_config(settings: Settings, dtype: torch.dtype) -> SFTConfig:
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(settings.output_dir / "logs"))
    workers = loader_workers(settings)
    return SFTConfig(
        **sft_fields(settings),
        data_seed=settings.seed,  # the data order repeats with the seed too
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=not torch.cuda.is_available(),
        completion_only_loss=True,  # loss on the translation (and EOS), not on the prompt
        padding_free=False,  # see HANDLED_HERE: the collator is given to the trainer (build_trainer)
        # No log after the first step: with warmup, transformers' linear schedule gives that step a learning
        # rate of 0 (lr(step) = step / warmup_steps), so the first line would read `learning_rate 0`.
        logging_first_step=False,
        save_strategy="steps",  # checkpoint-N every save_steps (resume after preemption: rundir/checkpoints.py)
        save_total_limit=None,
        ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient every step
        eval_strategy="no",
        include_num_input_tokens_seen="non_padding",  # counted on the host by CountingCollator (training/sync_free.py)
        # No host-device sync per step (training/sync_free.py): batches copied to the GPU without blocking, from
        # pinned memory; and the loss not checked for NaN/inf in every step (SyncFreeSFTTrainer stops a run
        # whose loss is not finite, where upstream would log the earlier losses' mean instead). Except in fp16:
        # there the grad scaler skips a step whose loss overflowed, and the run goes on, as upstream logs it.
        accelerator_config={"non_blocking": torch.cuda.is_available()},  # with pinned memory (upstream's default)
        logging_nan_inf_filter=dtype == torch.float16,
        dataloader_num_workers=workers,
        # Workers kept across epochs: each new epoch would otherwise fork them again.
        dataloader_persistent_workers=workers > 0,
        disable_tqdm=False,
    )


def padding_free_collator(
    pad_token_id: int, pad_to_multiple_of: int | None, count_tokens: bool = False
) -> DataCollatorForLanguageModeling:
    """TRL's own collator, flattening each micro-batch into one row with position_ids and seq_idx; with
    `count_tokens`, also what SyncFreeSFTTrainer reads on the host: the batch's non-pad token count and the
    positions the loss head scores (training/sync_free.CountingCollator)."""
    kind = CountingCollator if count_tokens else DataCollatorForLanguageModeling
    return kind(pad_token_id=pad_token_id, padding_free=True, pad_to_multiple_of=pad_to_multiple_of)


def build_trainer(
    settings: Settings,
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    train_ds: datasets.Dataset,
    eval_ds: datasets.Dataset,
    dtype: torch.dtype,
) -> SyncFreeSFTTrainer:
    """TRL's SFTTrainer with the LoRA adapter on `model`, set up for speed as configured (model/patches.py)."""
    collator = None
    if settings.padding_free:  # one flat row per micro-batch, no compute on padding
        collator = padding_free_collator(tokenizer.pad_token_id, settings.pad_to_multiple_of, count_tokens=True)
    args = sft_config(settings, dtype)
    if args.dataloader_num_workers:
        log.info(
            "data loader: %d worker process(es) collate the next batches during each step "
            "(SAUDIAL_DATALOADER_NUM_WORKERS=0: in this process)",
            args.dataloader_num_workers,
        )
    if "labels" in train_ds.column_names:  # tokenized and cut to max_length already (data/examples.py)
        args.dataset_kwargs = {"skip_prepare_dataset": True}  # no setting of saudial's sets other dataset_kwargs
    trainer = SyncFreeSFTTrainer(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=train_ds,
        eval_dataset=eval_ds if len(eval_ds) else None,
        processing_class=tokenizer,
        peft_config=lora_config(settings),
    )
    if trainer.pop_callback(ProgressCallback) is not None:  # disable_tqdm=False: the bar, with readable lines
        trainer.add_callback(StepLines())
    peft_model = trainer.model
    assert peft_model is not None
    if dtype == torch.float16:
        # Upstream: TRL casts a quantized model's LoRA weights to bf16, but fp16 mixed precision needs fp32
        # master weights (the grad scaler cannot unscale bf16 grads: "_amp_foreach_non_finite_check_and_unscale_cuda"
        # not implemented for 'BFloat16', trl 1.16 + torch 2.11). tests/test_upstream.py watches the cast.
        for param in peft_model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    varlen = False
    if settings.padding_free:
        short_conv.install_boundary_aware_conv()  # examples of one flat row must not see each other in the conv
        if settings.attn_implementation == "auto" and dtype != torch.float32 and patches.varlen_available():
            patches.use_varlen_attention(peft_model)  # each example attends only to itself, no L^2 mask
            log.info("attention: flash varlen over the examples of each padding-free row")
            varlen = True
    if settings.torch_compile:
        count = patches.compile_decoder_layers(peft_model)
        log.info("torch.compile: %d decoder layers; the first steps are slow while it compiles", count)
    else:
        if settings.fused_rms_norm:  # one kernel per norm each way instead of seven (compiled layers fuse their own)
            log.info("fused RMSNorm: %d norms", patches.use_fused_rms_norm(peft_model))
        installed = settings.fused_kernels and fast_lfm2.available()
        if installed:  # one Triton kernel per element-wise piece, each way
            log.info("fused kernels: %s", fast_lfm2.install(peft_model))
        # One autograd step per 4-bit LoRA linear instead of PEFT's chain (compiled layers fuse on their own).
        fused = False
        if settings.fused_lora and settings.quantization == "4bit" and dtype == torch.bfloat16:
            if settings.lora_dropout:
                log.info("fused LoRA: off (it needs SAUDIAL_LORA_DROPOUT=0)")
            else:
                log.info("fused LoRA: %d 4-bit linear layers, one autograd step each", fused_lora.fuse(peft_model))
                fused = True
        kept = fused_lora.dequantized_size(peft_model) if fused and settings.dequantize_once is not False else 0
        # The estimate was measured on this path: the fused LoRA step and kernels, flash varlen attention over
        # padding-free rows, expandable segments (a fragmenting allocator reserves far more than it allocates).
        measured = fused and varlen and installed and runtime.expandable_segments()
        fit = fit_activations(settings, trainer, train_ds, dtype, kept, measured)
        keep = fused and keeps_dequantized(settings, fit)
        if fit is not None:
            fit.keep_weights = keep
        if keep:
            # w1 and w3 of each feed-forward kept as one tensor: one frozen GEMM for both each way
            # (model/stacked_lora.py); q, k and v keep theirs apart, their outputs three tensors for the norms
            layers, size = fused_lora.keep_dequantized(peft_model, fast_lfm2.stacks(peft_model))
            log.info(
                "frozen weights: %d layers dequantized once and kept, %.1f GB (SAUDIAL_DEQUANTIZE_ONCE=false: "
                "dequantized on each use instead)",
                layers,
                size / 1e9,
            )
    return trainer


def keeps_dequantized(settings: Settings, fit: activation_memory.Fit | None = None) -> bool:
    """Whether the fused LoRA step keeps the frozen weights dequantized: `dequantize_once`, and where it is unset,
    where gradient checkpointing is off, or fitted to each step with room for them (model/activation_memory.py)."""
    if settings.dequantize_once is not None:
        return settings.dequantize_once
    if fit is not None:
        return fit.keep_weights
    return not settings.gradient_checkpointing


def loader_workers(settings: Settings) -> int:
    """Data loader worker processes: `dataloader_num_workers`, and where it is unset, one on a GPU and none on
    the CPU. On a GPU the step is bound by the host, and collating the next batch in the training process left
    the GPU idle ~4 ms a step (docs/benchmarks.md, the step profile); a worker collates it during the step. On
    the CPU a worker would take a core from the step itself. The workers leave stopping to this process
    (process/signals.QuietWorker)."""
    if settings.dataloader_num_workers is not None:
        return settings.dataloader_num_workers
    return 1 if torch.cuda.is_available() else 0


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total

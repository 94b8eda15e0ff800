"""Gradient checkpointing for a training run whose setting is left unset: none where the data's largest micro-batch
fits the GPU, else fitted to each step (model/activation_memory.py), or every layer where the fit was not measured.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import datasets
import pyarrow.compute
import torch

from saudial.model import activation_memory
from saudial.process import distributed

if TYPE_CHECKING:
    from saudial.config.settings import Settings
    from saudial.training.sync_free import SyncFreeSFTTrainer

log = logging.getLogger(__name__)


def fit_activations(
    settings: Settings,
    trainer: SyncFreeSFTTrainer,
    train_ds: datasets.Dataset,
    dtype: torch.dtype,
    kept: int,
    measured: bool = True,
) -> activation_memory.Fit | None:
    """Gradient checkpointing fitted to each step (model/activation_memory.py) where `gradient_checkpointing` is left
    unset on a GPU and the data's largest micro-batch would not fit the GPU without it; the trainer set up for it.
    `kept`: bytes of the frozen weights dequantized once (`dequantize_once`), if they may be. Off the path the
    estimate was `measured` on, and with several processes, every layer in every step instead."""
    if "gradient_checkpointing" in settings.model_fields_set or settings.gradient_checkpointing:
        return None
    if not torch.cuda.is_available() or "input_ids" not in train_ds.column_names:
        return None
    lengths = pyarrow.compute.list_value_length(train_ds.data.column("input_ids")).to_numpy().tolist()
    batch = settings.per_device_train_batch_size
    if settings.padding_free:
        worst = activation_memory.worst_step(lengths, batch, settings.max_length, settings.pad_to_multiple_of)
    else:
        worst = batch * min(max(lengths), settings.max_length)
    model: Any = trainer.model
    trainable = sum(p.numel() * (p.element_size() + 8) for p in model.parameters() if p.requires_grad)  # + AdamW
    fit = activation_memory.fitted(model, worst, dtype.itemsize, trainable, kept)
    if fit is None:
        return None
    budget, layers = fit.usable / 2**30, len(fit.layers)
    needs = f"the largest micro-batch the data can make ({worst} tokens) needs ~{fit.unchecked / 2**30:.1f} GiB "
    needs += f"without it and this GPU gives the run {budget:.1f} GiB"
    if fit.need(worst, layers) > fit.budget:
        log.warning(
            "the largest micro-batch (%d tokens) may not fit this GPU's %.1f GiB even with every layer checkpointed "
            "(~%.1f GiB): lower SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE and raise SAUDIAL_GRADIENT_ACCUMULATION_STEPS "
            "to keep the batch (recipes/small-gpu.yaml), or lower SAUDIAL_MAX_LENGTH",
            worst,
            budget,
            fit.need(worst, layers) / 2**30,
        )
    if distributed.world_size() > 1 or not measured:
        # Several processes would each fit their own micro-batches, the layers differing within a step: not measured
        # under DDP; and off the measured path the estimate is a guess. Every layer, every step there, as
        # `gradient_checkpointing=true` does.
        log.info("gradient checkpointing on, every layer: %s (SAUDIAL_GRADIENT_CHECKPOINTING=false: off)", needs)
        fit.budget = 0
    else:
        log.info(
            "gradient checkpointing fitted to each step: %s, so each step checkpoints the fewest of the %d decoder "
            "layers its tokens need (SAUDIAL_GRADIENT_CHECKPOINTING=true: all of them; false: none)",
            needs,
            layers,
        )
    checkpoint_per_step(trainer, fit)
    return fit


def checkpoint_per_step(trainer: SyncFreeSFTTrainer, fit: activation_memory.Fit) -> None:
    """Have `trainer` set up gradient checkpointing (transformers' own, when training starts) and let `fit` flag the
    layers before each micro-batch. TRL's SFTTrainer, where checkpointing is on from the start, also makes the PEFT
    model's inputs require gradients; done here as it does."""
    trainer.args.activation_checkpointing = trainer.args.gradient_checkpointing = True
    model: Any = trainer.model
    model.enable_input_require_grads()
    trainer.activation_fit = fit

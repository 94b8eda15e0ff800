"""Gradient checkpointing fitted to each step (model/activation_memory.py): the estimate against what an H100
measured, the choice of layers, and a real training run whose steps checkpoint different layers, with the losses
of a run that checkpoints none."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import Lfm2Config
from transformers.models.lfm2.modeling_lfm2 import Lfm2DecoderLayer

from saudial.config.settings import Settings
from saudial.data.examples import prepare, split
from saudial.data.workbook import load
from saudial.model import activation_memory, family
from saudial.model.activation_memory import Fit
from saudial.model.loading import load_model, load_tokenizer
from saudial.training.checkpointing import checkpoint_per_step
from saudial.training.trainer import build_trainer, keeps_dequantized

MEASURED = Path(__file__).resolve().parent.parent / "bench" / "results-2026-12-07-h100-activations.json"
GIB = 2**30


def _layers_of(config: Lfm2Config, fused: bool = True) -> list[Any]:
    """The decoder layers of a model of `config`, without memory (meta tensors); `fused` as fast_lfm2 marks them."""
    with torch.device("meta"):
        layers = [Lfm2DecoderLayer(config, i) for i in range(config.num_hidden_layers)]
    for layer in layers:
        if fused:
            vars(layer)["_saudial_cpu"] = False
    return layers


def test_the_estimate_holds_each_measured_step_within_a_few_percent() -> None:
    """Every step the H100 measured on LFM2-1.2B's shape (no layer checkpointed, all 16, 8; the defaults' rows and
    long rows, 8,448-19,456 tokens): the estimate is at most 1% under the peak above the step's start (HEADROOM's
    10% covers that) and at most 12% above it. A change to what a layer keeps, or to the kernels that makes them
    keep more, fails here first."""
    layers = _layers_of(Lfm2Config(**family.LFM2_1_2B.config_kwargs()))
    fit = activation_memory.plan(layers, 2, 0, 2**50)
    runs = json.loads(MEASURED.read_text())["runs"]
    checked = 0
    for run in runs.values():
        for step in run["steps"]:
            if step["step"] == 1 or step["tokens"] < 4096:  # step 1 allocates the optimizer; a tiny last batch
                continue
            measured = (step["peak_gib"] - step["start_gib"]) * GIB
            estimate = fit.need(step["tokens"], step["checkpointed"])
            assert 0.99 * measured <= estimate <= 1.12 * measured, step
            checked += 1
    assert checked >= 50


def test_each_step_checkpoints_the_fewest_layers_that_fit() -> None:
    layers = _layers_of(Lfm2Config(**family.LFM2_1_2B.config_kwargs()))
    fit = activation_memory.plan(layers, 2, GIB, int(4 * GIB / activation_memory.HEADROOM))
    counts = [fit.count(tokens) for tokens in (256, 2048, 4096, 8192, 9984, 16384)]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == len(layers)  # more tokens, more layers
    for tokens, count in zip((256, 2048, 4096, 8192, 9984), counts, strict=False):
        assert fit.need(tokens, count) <= fit.budget
        if count:
            assert fit.need(tokens, count - 1) > fit.budget  # one fewer would not fit
    # The layers that keep the most go first: LFM2-1.2B's attention layers (2, 5, 8, 10, 12, 14), then conv layers.
    fit.apply(9984)
    flagged = [i for i, layer in enumerate(layers) if layer.gradient_checkpointing]
    assert len(flagged) == fit.counts[-1] >= 6
    assert {2, 5, 8, 10, 12, 14} <= set(flagged)
    fit.apply(256)
    assert not any(layer.gradient_checkpointing for layer in layers)
    assert fit.summary()["checkpointed_min"] == 0 and fit.summary()["checkpointed_max"] == len(flagged)


def test_layers_without_the_kernels_count_as_keeping_more() -> None:
    config = Lfm2Config(**family.LFM2_1_2B.config_kwargs())
    fused, upstream = _layers_of(config), _layers_of(config, fused=False)
    assert activation_memory.layer_bytes(upstream[0], 2) > activation_memory.layer_bytes(fused[0], 2)
    assert activation_memory.layer_bytes(fused[2], 2) > activation_memory.layer_bytes(fused[0], 2)  # attention


def test_the_largest_step_is_the_longest_rows_padded() -> None:
    lengths = [10, 700, 30, 500, 20]
    assert activation_memory.worst_step(lengths, 2, 512, 256) == 1024  # 512 (cut) + 500 = 1012, padded
    assert activation_memory.worst_step(lengths, 3, 4096, None) == 1230
    assert activation_memory.worst_step(lengths, 9, 512, 1) == 10 + 512 + 30 + 500 + 20


def test_a_peak_above_the_estimate_raises_the_later_estimates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through `apply`, as the trainer calls it: the first micro-batch measures what is held (`start`); a peak the
    allocator reserved above the highest estimate so far makes the next step of the same tokens checkpoint more."""
    layers = _layers_of(Lfm2Config(**family.LFM2_1_2B.config_kwargs()))
    fit = activation_memory.plan(layers, 2, 0, 8 * GIB)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: GIB)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda: GIB)
    first = fit.apply(9000)
    assert fit.fixed == GIB + fit.extra and 0 < first < len(layers)
    assert fit.apply(9000) == first and fit.scale == 1  # a peak under the estimate changes nothing
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda: fit.highest + GIB)  # a step came out 1 GiB over
    assert fit.apply(9000) > first and fit.scale > 1


def test_frozen_weights_kept_where_checkpointing_is_off_or_the_fit_has_room(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused step keeps the frozen weights dequantized (~2 bytes a weight) where nothing is checkpointed, and
    under a Fit only where even the largest step fits with them; the user's setting wins either way."""
    fit = Fit([], [], [], 0, 0, 0)
    assert keeps_dequantized(Settings())
    assert not keeps_dequantized(Settings(gradient_checkpointing=True))
    assert not keeps_dequantized(Settings(), fit)
    fit.keep_weights = True
    assert keeps_dequantized(Settings(), fit)
    assert not keeps_dequantized(Settings(dequantize_once=False), fit)
    assert keeps_dequantized(Settings(gradient_checkpointing=True, dequantize_once=True))


def _tiny_run(tiny_model: Path, workbook: Path, out: Path, **extra: Any) -> tuple[Settings, Any, Any, Any]:
    """Settings of a CPU run on the tiny model, micro-batches of 8 rows, and its tokenizer and data as training
    prepares them."""
    settings = Settings(
        data=workbook,
        model_name_or_path=str(tiny_model),
        quantization="none",
        output_dir=out,
        per_device_train_batch_size=8,
        report_to="none",
        **extra,
    )
    dataset = load(workbook)
    tokenizer = load_tokenizer(settings)
    train_ds, eval_ds, _ = prepare(dataset, split(dataset.rows, 0.1, 42), tokenizer, settings.max_length)
    return settings, tokenizer, train_ds, eval_ds


def _losses(tiny_model: Path, workbook: Path, out: Path, budget: int | None) -> tuple[list[float], Fit | None]:
    """Six logged steps of the real trainer on the tiny model; with `budget`, a Fit flags the layers of each."""
    extra = {"max_steps": 6, "logging_steps": 1, "pad_to_multiple_of": 16, "save_steps": 1000}
    settings, tokenizer, train_ds, eval_ds = _tiny_run(tiny_model, workbook, out, **extra)
    torch.manual_seed(0)
    trainer = build_trainer(settings, load_model(settings), tokenizer, train_ds, eval_ds, torch.float32)
    fit = None
    if budget is not None:
        fit = activation_memory.plan(activation_memory.decoder_layers(trainer.model), 4, 0, budget)  # type: ignore[arg-type]
        checkpoint_per_step(trainer, fit)
    trainer.train()
    return [e["loss"] for e in trainer.state.log_history if "loss" in e], fit


@pytest.mark.slow
def test_steps_checkpointing_different_layers_train_as_a_run_checkpointing_none(
    tiny_model: Path, workbook: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real trainer with a Fit whose budget makes the micro-batches checkpoint different numbers of layers (by
    their tokens): each step's layers are flagged as the Fit chose, and the losses equal those of the same run with
    no layer checkpointed (checkpointing recomputes the same values)."""
    import transformers.modeling_utils as modeling

    plain, _ = _losses(tiny_model, workbook, tmp_path / "plain", None)
    # The same run with a Fit that has room for every step: nothing checkpointed; it gives the steps' tokens.
    roomy, probe = _losses(tiny_model, workbook, tmp_path / "roomy", 2**50)
    assert probe is not None and probe.counts == [0] * 6 and roomy == pytest.approx(plain, rel=1e-6)
    # A budget that fits the median step with half the layers checkpointed: longer steps need more, shorter fewer.
    median = sorted(probe.tokens)[3]
    assert len(set(probe.tokens)) > 1
    budget = int(probe.need(median, len(probe.layers) // 2) / activation_memory.HEADROOM)
    recomputed: list[int] = []  # each checkpointed layer call of the run (transformers' own checkpoint function)
    upstream = modeling.checkpoint
    monkeypatch.setattr(modeling, "checkpoint", lambda *a, **k: recomputed.append(1) or upstream(*a, **k))
    fitted, fit = _losses(tiny_model, workbook, tmp_path / "fitted", budget)
    assert fit is not None and len(fit.counts) == 6
    assert len(set(fit.counts)) > 1, fit.counts  # the steps' tokens differ, and so do their layers
    assert len(recomputed) == sum(fit.counts)  # each step checkpointed the layers its Fit flagged
    assert fitted == pytest.approx(plain, rel=1e-6)


def test_the_run_is_fitted_only_where_its_largest_step_would_not_fit(
    tiny_model: Path, workbook: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """fit_activations on the real trainer, a GPU's memory stood in for (the CPU has none; tests/test_gpu.py runs it
    on one): a GPU the largest step fits gets nothing; a smaller one a Fit, with transformers' checkpointing set up
    and one line that says why; one too small even for every layer a warning naming the settings; several processes,
    or a path the estimate was not measured on, every layer in every step; and a user's own setting is never
    overridden."""
    from saudial.process import distributed
    from saudial.training.checkpointing import fit_activations

    settings, tokenizer, train_ds, eval_ds = _tiny_run(tiny_model, workbook, tmp_path)

    def fitted_on(budget: int, chosen: Settings = settings, measured: bool = True) -> tuple[Fit | None, Any]:
        trainer = build_trainer(chosen, load_model(chosen), tokenizer, train_ds, eval_ds, torch.float32)
        with monkeypatch.context() as gpu:
            gpu.setattr(torch.cuda, "is_available", lambda: True)
            gpu.setattr(torch.cuda, "memory_allocated", lambda: 64 * 2**20)
            gpu.setattr(activation_memory, "budget_bytes", lambda: budget)
            return fit_activations(chosen, trainer, train_ds, torch.float32, 0, measured), trainer

    # What the decision weighs, from the same parts: the largest step with none and with every layer checkpointed.
    caplog.set_level(logging.INFO, logger="saudial")
    lengths = [len(ids) for ids in train_ds["input_ids"]]
    worst = activation_memory.worst_step(lengths, 8, settings.max_length, settings.pad_to_multiple_of)
    _, trainer = fitted_on(80 * GIB)
    trainable = sum(p.numel() * (p.element_size() + 8) for p in trainer.model.parameters() if p.requires_grad)
    held = 64 * 2**20 + trainable + activation_memory.RUNNING_EXTRA
    probe = activation_memory.plan(activation_memory.decoder_layers(trainer.model), 4, held, 0)
    unchecked, every = probe.need(worst, 0), probe.need(worst, len(probe.layers))
    assert every < unchecked

    fit, trainer = fitted_on(int(unchecked / activation_memory.HEADROOM) + 2**20)  # fits: nothing changes
    assert fit is None and not trainer.args.activation_checkpointing and trainer.activation_fit is None
    fit, trainer = fitted_on(int((unchecked + every) / 2 / activation_memory.HEADROOM))
    assert fit is not None and trainer.activation_fit is fit and trainer.args.activation_checkpointing
    assert 0 < fit.count(worst) < len(fit.layers)
    assert "gradient checkpointing fitted to each step" in caplog.text and f"({worst} tokens)" in caplog.text
    assert "may not fit" not in caplog.text
    fit, _ = fitted_on(int(every * 0.95 / activation_memory.HEADROOM))  # not even with every layer
    assert fit is not None and fit.count(worst) == len(fit.layers)
    assert "SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE" in caplog.text and "SAUDIAL_MAX_LENGTH" in caplog.text
    middle = int((unchecked + every) / 2 / activation_memory.HEADROOM)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    fit, _ = fitted_on(middle)
    assert fit is not None and fit.count(16) == len(fit.layers)  # every layer, whatever the step's tokens
    monkeypatch.setattr(distributed, "world_size", lambda: 1)
    fit, _ = fitted_on(middle, measured=False)  # off the path the estimate was measured on: every layer too
    assert fit is not None and fit.count(16) == len(fit.layers)
    own = Settings(**{**settings.model_dump(exclude_unset=True), "gradient_checkpointing": False})
    assert "gradient_checkpointing" in own.model_fields_set
    assert fitted_on(middle, own)[0] is None  # set off by the user: theirs


def test_expandable_segments_are_read_from_either_allocator_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fit runs only on the allocator it was measured on: expandable segments, as config/runtime sets them or
    a user writes them in either of PyTorch's variables."""
    from saudial.config import runtime

    for name in runtime.ALLOCATOR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not runtime.expandable_segments()
    runtime.configure_allocator()
    assert runtime.expandable_segments()
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "per_process_memory_fraction:0.5")  # the user's own, without
    assert not runtime.expandable_segments()
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "expandable_segments: true,per_process_memory_fraction:0.5")
    assert runtime.expandable_segments()

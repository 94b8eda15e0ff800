"""training/sync_free.py: the trainer without a GPU read per step learns and logs exactly what TRL's trainer does,
and a run whose loss, or whose adapter's weights, turn NaN or infinite stops with exit 3 before saving anything
over the previous adapter.

Whether a step really reads the GPU less is a property of a CUDA run: `bench/profile_step.py --syncs` counts
the reads per step on the GPU machine (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback
from transformers.trainer_utils import IntervalStrategy
from trl import SFTTrainer
from trl.trainer.utils import add_fused_lm_head

from saudial.config.settings import Settings
from saudial.data.examples import to_prompt_completion
from saudial.data.workbook import load
from saudial.errors import EXIT_TRAINING, TrainingError
from saudial.model import lm_head, short_conv
from saudial.model.loading import load_model, load_tokenizer
from saudial.model.lora import lora_config
from saudial.training.late_log import LateLogs
from saudial.training.sync_free import NON_PAD_TOKENS, SyncFreeSFTTrainer
from saudial.training.trainer import padding_free_collator, sft_config
from tests.adapter_run import copy_run, trained_adapter
from tests.conftest import base_env
from tests.entry import error_line, run, tree

STEPS = 3
TIMINGS = {"train_runtime", "train_tokens_per_second", "train_samples_per_second", "train_steps_per_second"}
TIMINGS |= {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}


def _train(
    kind: type[SFTTrainer], tiny_model: Path, workbook: Path, out: Path, *, stop_epoch_at: int | None = None
) -> tuple[Any, list[dict[str, Any]]]:
    """3 logged steps and an evaluation; what the model was called with is kept in `trainer.model_kwargs`.
    `stop_epoch_at`: instead, one epoch logged at its end, which a callback stops at that step."""
    settings = Settings(
        data=workbook,
        model_name_or_path=str(tiny_model),
        quantization="none",
        output_dir=out,
        max_steps=STEPS if stop_epoch_at is None else -1,
        num_train_epochs=1,
        logging_steps=1,
        per_device_train_batch_size=4,
        report_to="none",
    )
    tokenizer = load_tokenizer(settings)
    short_conv.install_boundary_aware_conv()  # padding-free rows, as build_trainer runs them
    torch.manual_seed(0)
    rows = to_prompt_completion(load(workbook).rows.head(32))
    args = sft_config(settings, torch.float32)
    if stop_epoch_at is not None:
        args.logging_strategy = IntervalStrategy.EPOCH
    trainer = kind(
        model=load_model(settings),
        args=args,
        data_collator=padding_free_collator(tokenizer.pad_token_id, 64, count_tokens=kind is SyncFreeSFTTrainer),
        train_dataset=rows.select(range(24)),
        eval_dataset=rows.select(range(24, 32)),
        processing_class=tokenizer,
        peft_config=lora_config(settings),
        callbacks=[] if stop_epoch_at is None else [_StopEpoch(stop_epoch_at)],
    )
    seen: set[tuple[bool, str]] = set()  # (training?, keyword) of every call of the model
    trainer.model.register_forward_pre_hook(lambda m, a, kw: seen.update((m.training, k) for k in kw), with_kwargs=True)
    trainer.model_kwargs = seen  # type: ignore[attr-defined]
    trainer.train()
    trainer.evaluate()
    logs = [{k: v for k, v in entry.items() if k not in TIMINGS} for entry in trainer.state.log_history]
    return trainer, logs


def _assert_same_logs(logs: list[dict[str, Any]], expected: list[dict[str, Any]], rel: float, abs_: float) -> None:
    """The same keys in every log, the values close, the counts (steps, tokens) equal."""
    assert [sorted(e) for e in logs] == [sorted(e) for e in expected]
    for mine, theirs in zip(logs, expected, strict=True):
        assert mine == pytest.approx(theirs, rel=rel, abs=abs_)
        assert {k: v for k, v in mine.items() if isinstance(v, int)} == {
            k: v for k, v in theirs.items() if isinstance(v, int)
        }


class _StopEpoch(TrainerCallback):
    """Ends the epoch at `step`, as a callback may (`should_epoch_stop`): the epoch ends at a fraction."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            control.should_epoch_stop = True


@pytest.mark.slow
def test_same_losses_metrics_and_token_counts_as_trls_trainer(tiny_model: Path, workbook: Path, tmp_path: Path) -> None:
    """Every logged value equal (loss, grad norm, entropy, token accuracy, TRL's num_tokens, the non-pad tokens
    seen, the eval loss) and the run's FLOPs, with the tokens counted on the host: the Trainer still calls the
    overridden `_track_num_input_tokens`. The losses agree to
    float32 rounding: the compact head sums the labelled tokens alone, TRL's head (on the CPU) the whole row with
    zeros between them. The collator's extra keys reach the model only as the compact head's positions, in
    training."""
    upstream, expected = _train(SFTTrainer, tiny_model, workbook, tmp_path / "trl")
    ours, logs = _train(SyncFreeSFTTrainer, tiny_model, workbook, tmp_path / "ours")
    assert ours.compact_head
    _assert_same_logs(logs, expected, rel=1e-5, abs_=1e-7)
    logged = ["entropy", "epoch", "grad_norm", "learning_rate", "loss", "mean_token_accuracy"]
    assert [sorted(e) for e in logs[:STEPS]] == [[*logged, "num_input_tokens_seen", "num_tokens", "step"]] * STEPS
    assert "eval_loss" in logs[-1] and "eval_mean_token_accuracy" in logs[-1]
    assert ours.state.num_input_tokens_seen == upstream.state.num_input_tokens_seen > 0
    assert ours.host_counted_batches == STEPS, "transformers no longer calls _track_num_input_tokens"
    assert ours.late_logs == STEPS - 1  # training/late_log.py: the last step logs at once, as it ends training
    assert ours.state.total_flos == upstream.state.total_flos > 0
    ours_only = {(training, k) for training, k in ours.model_kwargs if k.startswith("saudial_")}
    assert ours_only == {(True, lm_head.POSITIONS), (True, lm_head.TARGETS)}
    assert not any(k.startswith("saudial_") for _, k in upstream.model_kwargs)


@pytest.mark.slow
def test_a_log_held_when_the_training_loop_ends_is_written_and_summed(
    tiny_model: Path, workbook: Path, tmp_path: Path
) -> None:
    """An epoch stopped by a callback at step 3 of 6, logged at its end: the log held there (no evaluation, no
    save, no end of training due) is written before the Trainer sums the run's loss, as TRL's trainer logs it."""
    _, expected = _train(SFTTrainer, tiny_model, workbook, tmp_path / "trl", stop_epoch_at=3)
    ours, logs = _train(SyncFreeSFTTrainer, tiny_model, workbook, tmp_path / "ours", stop_epoch_at=3)
    assert [(e["step"], sorted(e)) for e in logs] == [(e["step"], sorted(e)) for e in expected]
    assert logs[0]["step"] == 3 and "loss" in logs[0] and logs[1]["train_loss"] > 0
    _assert_same_logs(logs, expected, rel=1e-5, abs_=1e-7)
    assert ours.late_logs == 1 and ours._late is None


@pytest.mark.gpu
def test_logs_read_a_step_late_on_the_gpu_equal_logs_read_at_their_step(
    tiny_model: Path, workbook: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """training/late_log.py on CUDA (pinned memory, an event): the same logs as the Trainer reading each at its
    step. Atomics in the GPU's backward may round differently from run to run: close, not bitwise."""
    late, logs = _train(SyncFreeSFTTrainer, tiny_model, workbook, tmp_path / "late")
    monkeypatch.setattr(LateLogs, "_log_late_ok", lambda self: False)
    at_once, expected = _train(SyncFreeSFTTrainer, tiny_model, workbook, tmp_path / "at-once")
    assert next(late.model.parameters()).is_cuda
    assert (late.late_logs, at_once.late_logs) == (STEPS - 1, 0)
    _assert_same_logs(logs, expected, rel=1e-4, abs_=1e-6)


@pytest.mark.slow
def test_accuracy_and_entropy_on_tokens_the_model_predicts(tiny_model: Path, tmp_path: Path) -> None:
    """Sequences the model itself generated greedily, so most labels are its top-1 token: the token accuracy is
    far from 0 and must equal TRL's, as must the entropy (the tiny model's accuracy on the workbook is 0)."""
    settings = Settings(model_name_or_path=str(tiny_model), quantization="none", output_dir=tmp_path, report_to="none")
    tokenizer = load_tokenizer(settings)
    short_conv.install_boundary_aware_conv()
    generator = load_model(settings)
    prompts = torch.tensor([[5 + i, 9, 13 + i, 20] for i in range(4)])
    greedy = generator.generate(prompts, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    examples = datasets.Dataset.from_list([{"input_ids": row.tolist()} for row in greedy])
    metrics = []
    for kind in (SFTTrainer, SyncFreeSFTTrainer):
        torch.manual_seed(0)
        trainer = kind(
            model=load_model(settings),
            args=sft_config(settings, torch.float32),
            data_collator=padding_free_collator(tokenizer.pad_token_id, 64, count_tokens=kind is SyncFreeSFTTrainer),
            train_dataset=examples,
            processing_class=tokenizer,
            peft_config=lora_config(settings),
        )
        assert trainer.model is not None
        trainer.model.train()
        batch = next(iter(trainer.get_train_dataloader()))
        trainer.compute_loss(trainer.model, batch)
        if isinstance(trainer, SyncFreeSFTTrainer):
            trainer._flush_metrics()
        logged = trainer._metrics["train"]
        metrics.append({k: logged[k][0] for k in ("entropy", "mean_token_accuracy", "num_tokens")})
    theirs, mine = metrics
    assert mine == pytest.approx(theirs, rel=1e-5)
    assert theirs["mean_token_accuracy"] > 0.5  # 12 of 15 labels per sequence are the model's own choice


def test_the_compact_head_scores_what_trls_head_scores(tiny_model: Path) -> None:
    """model/lm_head.py against TRL's fused head on the same padding-free batch: the same per-token log-probs,
    entropies and top-1 flags at the labelled positions, and the same gradients into the model."""
    settings = Settings(model_name_or_path=str(tiny_model), quantization="none")
    tokenizer = load_tokenizer(settings)
    short_conv.install_boundary_aware_conv()
    torch.manual_seed(0)
    model = load_model(settings)
    add_fused_lm_head(model, outputs=lm_head.OUTPUTS)  # as SFTTrainer does
    assert lm_head.install(model)
    examples = [{"input_ids": list(range(5, 5 + n))} for n in (9, 4, 12)]
    batch = padding_free_collator(tokenizer.pad_token_id, 64, count_tokens=True)(examples)
    batch.pop(NON_PAD_TOKENS)
    positions, targets = batch.pop(lm_head.POSITIONS), batch.pop(lm_head.TARGETS)
    # Each example's first token and the row's padding are never predicted: 8 + 3 + 11 of 63 positions.
    assert positions.numel() == int((batch["labels"][0, 1:] != -100).sum()) == 22
    assert torch.equal(targets, batch["labels"][0, 1:][positions])

    def run(**extra: Any) -> tuple[Any, list[torch.Tensor]]:
        model.zero_grad()
        out = model(**batch, **extra)
        values = out.log_probs if out.log_probs.dim() == 1 else out.log_probs[0, positions]
        (values.sum() + out.entropy.sum()).backward()
        return out, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    ours, our_grads = run(**{lm_head.POSITIONS: positions, lm_head.TARGETS: targets})
    trl, trl_grads = run(fused_lm_head=True)
    torch.testing.assert_close(ours.log_probs, trl.log_probs[0, positions])
    torch.testing.assert_close(ours.entropy, trl.entropy[0, positions])
    assert torch.equal(ours.is_top1, trl.is_top1[0, positions])
    assert trl.log_probs[0][batch["labels"][0, 1:] == -100].abs().sum() == 0  # TRL's zeros elsewhere
    assert len(our_grads) == len(trl_grads) > 0
    for mine, theirs in zip(our_grads, trl_grads, strict=True):
        torch.testing.assert_close(mine, theirs)
    assert model(**batch).logits.shape[-1] == model.config.vocab_size  # without the positions: the model's forward


def test_the_collator_counts_non_pad_tokens_as_upstream(tiny_model: Path) -> None:
    tokenizer = load_tokenizer(Settings(model_name_or_path=str(tiny_model)))
    examples = [{"input_ids": list(range(5, 5 + n))} for n in (7, 3, 11)]
    batch = padding_free_collator(tokenizer.pad_token_id, 64, count_tokens=True)(examples)
    assert batch["input_ids"].shape[1] == 64  # padded to the multiple
    assert batch[NON_PAD_TOKENS] == int((batch["input_ids"] != tokenizer.pad_token_id).sum()) == 21
    assert NON_PAD_TOKENS not in padding_free_collator(tokenizer.pad_token_id, 64)(examples)


def test_a_model_that_keeps_trls_head_gets_no_positions_from_the_collator(tiny_model: Path, tmp_path: Path) -> None:
    """A model whose logits TRL's head scales keeps TRL's head: the collator, built before the trainer knew, stops
    finding the positions (work on the CPU every step, then dropped), and the loss is still TRL's."""
    settings = Settings(model_name_or_path=str(tiny_model), quantization="none", output_dir=tmp_path, report_to="none")
    tokenizer = load_tokenizer(settings)
    short_conv.install_boundary_aware_conv()
    model = load_model(settings)
    model.config.logit_scale = 1.0  # one of lm_head.SCALED_BY
    examples = datasets.Dataset.from_list([{"input_ids": list(range(5, 5 + n))} for n in (7, 3, 11)])
    collator = padding_free_collator(tokenizer.pad_token_id, 64, count_tokens=True)
    assert lm_head.POSITIONS in collator([examples[0]])
    trainer = SyncFreeSFTTrainer(
        model=model,
        args=sft_config(settings, torch.float32),
        data_collator=collator,
        train_dataset=examples,
        processing_class=tokenizer,
        peft_config=lora_config(settings),
    )
    assert not trainer.compact_head
    batch = next(iter(trainer.get_train_dataloader()))
    assert NON_PAD_TOKENS in batch and lm_head.POSITIONS not in batch and lm_head.TARGETS not in batch
    assert trainer.model is not None
    trainer.model.train()
    assert torch.isfinite(trainer.compute_loss(trainer.model, batch))


def _nan_model(tiny_model: Path, target: Path) -> Path:
    """A copy of the tiny model whose final norm holds NaN: a damaged model file that still loads."""
    shutil.copytree(tiny_model, target)
    weights = load_file(target / "model.safetensors")
    name = next(k for k in weights if k.endswith("norm.weight") and "layers" not in k)
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_with_exit_3_and_keeps_the_previous_adapter(
    tiny_model: Path, workbook: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Upstream would log the earlier losses' mean in place of NaN and save a NaN adapter over the good one."""
    out = copy_run(trained_adapter(tiny_model, workbook, tmp_path_factory), tmp_path / "out")
    before = tree(out, skip="staging")
    env = base_env(_nan_model(tiny_model, tmp_path / "nan-model"), workbook, out, SAUDIAL_EVAL="none")
    env["SAUDIAL_OVERWRITE_OUTPUT_DIR"] = "true"
    result = run(env)
    assert result.returncode == EXIT_TRAINING, result.stderr[-3000:]
    line = error_line(result.stderr)
    assert "the training loss became nan by step 1" in line and "SAUDIAL_LEARNING_RATE" in line, line
    assert "adapter was not saved" in line, line
    assert tree(out, skip="staging") == before  # the previous run, byte for byte
    assert json.loads((out / "run_manifest.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_a_nan_loss_before_the_first_log_leaves_no_checkpoint_to_resume(
    tiny_model: Path, workbook: Path, tmp_path: Path
) -> None:
    """Logging every 10 steps, 4 steps: the last step's checkpoint comes before the only log of the loss (the final
    train_loss). Without the check at the checkpoint, staging kept a NaN checkpoint-4 that a restart resumed."""
    out = tmp_path / "out"
    env = base_env(_nan_model(tiny_model, tmp_path / "nan-model"), workbook, out, SAUDIAL_EVAL="none")
    env["SAUDIAL_LOGGING_STEPS"] = "10"
    result = run(env)
    assert result.returncode == EXIT_TRAINING, result.stderr[-3000:]
    assert "the training loss became nan by step 4" in error_line(result.stderr)
    assert not list(out.rglob("checkpoint-*")), sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))


class _NaNUpdate(TrainerCallback):
    """A fault at the end of the last step: one trained weight NaN, as a NaN gradient norm leaves it."""

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step == state.max_steps:
            next(p for p in model.parameters() if p.requires_grad).data[0, 0] = float("nan")


@pytest.mark.slow
def test_weights_made_nan_by_a_finite_loss_step_stop_before_its_checkpoint(
    tiny_model: Path, workbook: Path, tmp_path: Path
) -> None:
    """The last step's loss is finite and its update not: no log reads the loss after it, so only the check of
    the weights at the checkpoint stops it. Without that check, checkpoint-3 held a NaN adapter."""
    settings = Settings(
        data=workbook, model_name_or_path=str(tiny_model), quantization="none", output_dir=tmp_path,
        max_steps=STEPS, logging_steps=10, per_device_train_batch_size=4, report_to="none",
    )  # fmt: skip
    tokenizer = load_tokenizer(settings)
    short_conv.install_boundary_aware_conv()
    trainer = SyncFreeSFTTrainer(
        model=load_model(settings),
        args=sft_config(settings, torch.float32),
        data_collator=padding_free_collator(tokenizer.pad_token_id, 64, count_tokens=True),
        train_dataset=to_prompt_completion(load(workbook).rows.head(12)),
        processing_class=tokenizer,
        peft_config=lora_config(settings),
        callbacks=[_NaNUpdate()],
    )
    with pytest.raises(TrainingError, match="the adapter's weights became NaN or infinite by step 3") as raised:
        trainer.train()
    assert raised.value.exit_code == EXIT_TRAINING and "adapter was not saved" in str(raised.value)
    assert "SAUDIAL_LEARNING_RATE" in str(raised.value)
    assert not list(tmp_path.rglob("checkpoint-*"))

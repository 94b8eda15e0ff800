"""The loss covers the translation and its EOS, never the prompt; OOM maps to exit code 3."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trl import SFTTrainer

from saudial.config.settings import Settings
from saudial.data.examples import prepare, split, to_prompt_completion
from saudial.data.workbook import load, load_configured
from saudial.errors import TrainingError
from saudial.model.loading import load_model, load_tokenizer
from saudial.model.lora import lora_config
from saudial.training.recipe import train
from saudial.training.trainer import build_trainer, sft_config


def test_labels_mask_exactly_the_prompt(tiny_model: Path, workbook: Path, tmp_path: Path) -> None:
    settings = Settings(data=workbook, model_name_or_path=str(tiny_model), quantization="none", output_dir=tmp_path)
    tokenizer = load_tokenizer(settings)
    rows = load(workbook).rows.head(8)
    ds = to_prompt_completion(rows)
    trainer = SFTTrainer(
        model=load_model(settings),
        args=sft_config(settings, torch.float32),
        train_dataset=ds,
        processing_class=tokenizer,
        peft_config=lora_config(settings),
    )
    prepared = trainer.train_dataset
    for example, source in zip(prepared, ds, strict=True):
        prompt_ids = tokenizer(source["prompt"])["input_ids"]
        completion_ids = tokenizer(source["completion"], add_special_tokens=False)["input_ids"]
        labels = example["labels"]
        assert example["input_ids"][: len(prompt_ids)] == prompt_ids
        assert labels[: len(prompt_ids)] == [-100] * len(prompt_ids)
        learned = labels[len(prompt_ids) :]
        assert learned[-1] == tokenizer.eos_token_id  # the model learns to stop
        assert tokenizer.decode(learned[:-1]) == tokenizer.decode(completion_ids)
    # A batch from the collator pads with the pad token, masked by position, and keeps the EOS label.
    batch = trainer.data_collator([prepared[0], prepared[1]])
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert (batch["labels"] == tokenizer.eos_token_id).sum() == 2


def test_out_of_memory_becomes_exit_code_3(
    tiny_model: Path, workbook: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A CPU cannot run out of CUDA memory; inject the error torch raises so the mapping is exercised.
    def oom(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(SFTTrainer, "training_step", oom)
    settings = Settings(
        data=workbook,
        model_name_or_path=str(tiny_model),
        quantization="none",
        output_dir=tmp_path / "out",
        max_steps=1,
        report_to="none",
    )
    with pytest.raises(TrainingError) as info:
        train(settings, load_configured(settings))
    assert info.value.exit_code == 3
    assert "SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE" in str(info.value)


def test_the_trainer_takes_the_prepared_records_as_they_are(tiny_model: Path, workbook: Path, tmp_path: Path) -> None:
    # data/examples.prepare tokenizes, labels and cuts the records (tests/test_upstream.py: as TRL would), so
    # build_trainer has TRL skip its own preparation: the dataset the trainer holds is that very one.
    settings = Settings(data=workbook, model_name_or_path=str(tiny_model), quantization="none", output_dir=tmp_path)
    tokenizer = load_tokenizer(settings)
    dataset = load(workbook)
    parts = split(dataset.rows.head(40), 0.1, 0)
    train_ds, eval_ds, _ = prepare(dataset, parts, tokenizer, settings.max_length)
    trainer = build_trainer(settings, load_model(settings), tokenizer, train_ds, eval_ds, torch.float32)
    assert trainer.train_dataset is not None and trainer.eval_dataset is not None
    assert trainer.train_dataset._fingerprint == train_ds._fingerprint  # no map or filter ran over it
    assert trainer.eval_dataset._fingerprint == eval_ds._fingerprint
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    assert (batch["labels"] == tokenizer.eos_token_id).sum() == 2  # each example's EOS is learned

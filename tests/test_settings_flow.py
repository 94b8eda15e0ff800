"""Every setting reaches the code that uses it: the libraries' own settings by their names, without a
hand-written copy per field, and saudial's own settings in the module that reads them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig

from saudial.config.settings import Settings
from saudial.model.loading import bnb_fields, quantization_config
from saudial.model.lora import lora_config, lora_fields
from saudial.training.trainer import HANDLED_HERE, RENAMED, SFT_FIELDS, sft_config, sft_fields

PACKAGE = Path(__file__).resolve().parent.parent / "saudial"

# The settings that are saudial's own (no library takes them), and the module that reads each.
SAUDIAL_OWN = {
    "data": "data/workbook.py",
    "task": "data/conversations.py",
    "sheet_name": "data/workbook.py",
    "dialects": "data/workbook.py",
    "max_data_file_mb": "data/workbook.py",  # and jobs/translate.py for --input
    "eval_size": "training/recipe.py",
    "model_name_or_path": "model/loading.py",
    "model_revision": "model/loading.py",
    "tokenizer_name_or_path": "model/loading.py",
    "quantization": "model/loading.py",
    "torch_dtype": "model/hardware.py",
    "attn_implementation": "model/loading.py",
    "overwrite_output_dir": "rundir/outputs.py",
    "resume": "rundir/outputs.py",
    "num_processes": "process/distributed.py",
    "eval": "inference/evaluation.py",
    "max_eval_samples": "inference/evaluation.py",
    "max_new_tokens": "inference/batches.py",
    "do_sample": "inference/batches.py",
    "temperature": "inference/batches.py",
    "min_p": "inference/batches.py",
    "repetition_penalty": "inference/batches.py",
    "hub_private": "publish/hub.py",
    "export": "jobs/train.py",  # and jobs/export.py
    # SFTConfig fields that saudial handles itself (run/trainer.HANDLED_HERE says why)
    "fused_lora": "training/trainer.py",
    "dequantize_once": "training/trainer.py",
    "dataloader_num_workers": "training/trainer.py",
    "fused_rms_norm": "training/trainer.py",
    "fused_kernels": "training/trainer.py",
    "padding_free": "training/trainer.py",
    "pad_to_multiple_of": "training/trainer.py",
    "torch_compile": "training/trainer.py",
    "save_total_limit": "rundir/checkpoints.py",
    "push_to_hub": "jobs/train.py",
    "hub_model_id": "publish/hub.py",
    "hub_strategy": "jobs/train.py",
}

# A value different from the default for every setting that flows to a library.
CHANGED: dict[str, Any] = {
    "learning_rate": 3e-4,
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.25,
    "weight_decay": 0.01,
    "num_train_epochs": 2.0,
    "max_steps": 7,
    "per_device_train_batch_size": 3,
    "per_device_eval_batch_size": 5,
    "gradient_accumulation_steps": 2,
    "max_length": 99,
    "gradient_checkpointing": True,
    "optim": "adafactor",
    "max_grad_norm": 0.5,
    "logging_steps": 3,
    "seed": 7,
    "report_to": "none",
    "save_steps": 9,
    "lora_r": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.2,
    "target_modules": ["q_proj", "w2"],
    "bnb_4bit_quant_type": "fp4",
    "bnb_4bit_use_double_quant": False,
}


def consumer(name: str) -> str:
    if name in SAUDIAL_OWN:
        return "saudial"
    if name in lora_fields(Settings()) or name.removeprefix("lora_") in lora_fields(Settings()):
        return "lora"
    if name in bnb_fields(Settings()):
        return "bnb"
    if name in RENAMED or (name in SFT_FIELDS and name not in HANDLED_HERE):
        return "sft"
    return "none"


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_every_setting_has_a_consumer(name: str) -> None:
    kind = consumer(name)
    assert kind != "none", f"setting {name!r} reaches no library and is not in SAUDIAL_OWN"
    if kind == "saudial":
        source = (PACKAGE / SAUDIAL_OWN[name]).read_text()
        assert f"settings.{name}" in source, f"{SAUDIAL_OWN[name]} never reads settings.{name}"
    if name in HANDLED_HERE:
        assert name in SFT_FIELDS, f"HANDLED_HERE names {name!r}, which SFTConfig does not have"


def test_library_settings_reach_the_libraries(tmp_path: Path) -> None:
    passed = {n for n in Settings.model_fields if consumer(n) in ("sft", "lora", "bnb")}
    assert passed == set(CHANGED) | {"output_dir"}
    settings = Settings(output_dir=tmp_path, **CHANGED)
    args = sft_config(settings, torch.float32)
    for name in CHANGED:
        if consumer(name) == "sft":
            got = getattr(args, RENAMED.get(name, name))
            want = CHANGED[name]
            assert got == want or (name == "report_to" and got in ([], ["none"], "none")), (name, got, want)
    assert args.output_dir == str(tmp_path)
    assert set(sft_fields(settings)) <= SFT_FIELDS
    lora = lora_config(settings)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, set(lora.target_modules)) == (4, 8, 0.2, {"q_proj", "w2"})
    assert {f.name for f in dataclasses.fields(LoraConfig)} >= set(lora_fields(settings))
    quant = quantization_config(settings, torch.bfloat16)
    assert quant is not None
    assert (quant.bnb_4bit_quant_type, quant.bnb_4bit_use_double_quant) == ("fp4", False)
    assert quant.bnb_4bit_compute_dtype == torch.bfloat16

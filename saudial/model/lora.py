"""The LoRA adapter to train: PEFT's LoraConfig, built from the settings that carry its names.

A setting named like a LoraConfig field (`lora_alpha`, `lora_dropout`, `target_modules`), or like one
with a `lora_` prefix (`lora_r` is LoraConfig's `r`), is passed through as it is: a new LoRA setting in
config/settings.py reaches PEFT without code here.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from peft import LoraConfig

if TYPE_CHECKING:
    from saudial.config.settings import Settings


def lora_fields(settings: Settings) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(LoraConfig)}
    fields: dict[str, Any] = {}
    for name in type(settings).model_fields:
        if name in known:
            fields[name] = getattr(settings, name)
        elif name.startswith("lora_") and name.removeprefix("lora_") in known:
            fields[name.removeprefix("lora_")] = getattr(settings, name)
    return fields


def lora_config(settings: Settings) -> LoraConfig:
    # bias "none": the base model stays frozen, biases included (LFM2's linear layers have none anyway).
    return LoraConfig(**lora_fields(settings), bias="none", task_type="CAUSAL_LM")

"""The LoRA adapter to train: PEFT's LoraConfig, built from the settings that carry its names, and a check
that every target name reaches the model.

A setting named like a LoraConfig field (`lora_alpha`, `lora_dropout`, `target_modules`), or like one
with a `lora_` prefix (`lora_r` is LoraConfig's `r`), is passed through as it is: a new LoRA setting in
config/settings.py reaches PEFT without code here. `target_modules: all-linear` is PEFT's own shorthand
(every linear layer but the output head).

PEFT skips a target name that matches no module as long as another name matches, so a list with a name
from another architecture (`o_proj`, `gate_proj`: LFM2 has neither) trains a fraction of what was asked
without a word, and a list that matches nothing fails deep inside PEFT. `target_matches` counts, for
each name, the modules PEFT's own matching (`check_target_module_exists`) selects in the loaded model;
`check_targets` refuses a name that selects none (exit 2), naming the model's own linear layers.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from peft import LoraConfig

from saudial.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from saudial.config.settings import Settings

ALL_LINEAR = "all-linear"  # peft.utils.constants.INCLUDE_LINEAR_LAYERS_SHORTHAND


def lora_fields(settings: Settings) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(LoraConfig)}
    fields: dict[str, Any] = {}
    for name in type(settings).model_fields:
        if name in known:
            fields[name] = getattr(settings, name)
        elif name.startswith("lora_") and name.removeprefix("lora_") in known:
            fields[name.removeprefix("lora_")] = getattr(settings, name)
    if [t.lower() for t in fields.get("target_modules") or []] == [ALL_LINEAR]:
        fields["target_modules"] = ALL_LINEAR  # PEFT expands the shorthand only as a string
    return fields


def lora_config(settings: Settings) -> LoraConfig:
    # bias "none": the base model stays frozen, biases included (LFM2's linear layers have none anyway).
    return LoraConfig(**lora_fields(settings), bias="none", task_type="CAUSAL_LM")


def linear_layers(model: torch.nn.Module) -> list[str]:
    """The model's own linear layer names (the last part of each module's name), as `all-linear` takes them:
    PEFT's expansion of the shorthand, which leaves out the output head."""
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

    expanded = _maybe_include_all_linear_layers(LoraConfig(target_modules=ALL_LINEAR), model)
    names = getattr(expanded, "target_modules", None) or ()
    return sorted({name.rsplit(".", 1)[-1] for name in names})


def target_matches(model: torch.nn.Module, targets: list[str]) -> dict[str, int]:
    """How many modules of `model` each target name selects, by PEFT's own matching."""
    from peft.tuners.tuners_utils import check_target_module_exists

    keys = [key for key, _ in model.named_modules() if key]
    counts: dict[str, int] = {}
    for target in targets:
        if target.lower() == ALL_LINEAR:
            linear = set(linear_layers(model))
            counts[target] = sum(1 for key in keys if key.rsplit(".", 1)[-1] in linear and "lm_head" not in key)
            continue
        config = LoraConfig(target_modules=[target])
        counts[target] = sum(1 for key in keys if check_target_module_exists(config, key))
    return counts


def check_targets(model: torch.nn.Module, targets: list[str]) -> dict[str, int]:
    """`target_matches`, or a ConfigError naming each target that matches nothing and the model's linear layers."""
    counts = target_matches(model, targets)
    missing = [name for name, count in counts.items() if count == 0]
    if missing:
        own = ",".join(linear_layers(model))
        raise ConfigError(
            f"SAUDIAL_TARGET_MODULES: {', '.join(repr(m) for m in missing)} match{'es' if len(missing) == 1 else ''} "
            f"no module of the base model, which LoRA would skip without a word; this model's linear layers are "
            f"{own} (or all-linear): set SAUDIAL_TARGET_MODULES={own}"
        )
    return counts

"""Fold the adapter into the base model: one bf16 model + tokenizer, for tools that take no adapter.

The base model is loaded unquantized (merging into 4-bit weights would round the LoRA update away),
the adapter is merged with PEFT's `merge_and_unload`, and the result is saved with `save_pretrained`,
so plain `AutoModelForCausalLM.from_pretrained(DIR)` loads it (what vLLM and llama.cpp's converter take).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from peft import PeftModel

from saudial.config.settings import Settings
from saudial.errors import ConfigError
from saudial.inference.generate import settings_for_adapter
from saudial.model.loading import load_model, load_tokenizer
from saudial.run.record import MANIFEST, now, versions, write_json

log = logging.getLogger(__name__)

MERGE_INFO = "merge_info.json"


def merge(settings: Settings, adapter_dir: Path, output: Path) -> Path:
    settings = settings_for_adapter(settings, adapter_dir)
    prepare(output, settings.overwrite_output_dir)
    merge_settings = settings.model_copy(update={"quantization": "none", "torch_dtype": "bfloat16"})
    log.info("loading %s unquantized (bf16) and merging %s into it", settings.model_name_or_path, adapter_dir)
    tokenizer = load_tokenizer(merge_settings, source=str(adapter_dir))
    base = load_model(merge_settings, device_map="cpu")
    model: Any = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    model.config.use_cache = True  # training switched the KV cache off; inference wants it
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    if (adapter_dir / MANIFEST).is_file():
        shutil.copy2(adapter_dir / MANIFEST, output / MANIFEST)
    write_json(
        output / MERGE_INFO,
        {
            "base_model": settings.model_name_or_path,
            "base_model_revision": settings.model_revision,
            "adapter": str(adapter_dir.resolve()),
            "dtype": "bfloat16",
            "merged": now(),
            "versions": versions(),
        },
    )
    log.info("merged model written to %s", output.resolve())
    return output


def prepare(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {str(output)!r} is a file, not a directory")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"--output {str(output)!r} is not empty: choose another directory, or set "
                "SAUDIAL_OVERWRITE_OUTPUT_DIR=true to replace its contents"
            )
        shutil.rmtree(output)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create --output {str(output)!r}: {exc.strerror}") from None

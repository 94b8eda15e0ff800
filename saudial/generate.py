"""Inference: load base model + adapter the way training did, and translate in batches.

The prompt is `prompts.build_prompt` with the response left empty: exactly what training put before
the translation. Batches are left-padded (so every row's next token follows its own prompt) and
generation stops at the tokenizer's EOS, the token training taught the model to end with.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from saudial.config import Settings
from saudial.errors import ConfigError
from saudial.manifest import MANIFEST, NOT_TRAINING, read_json
from saudial.model import load_model, load_tokenizer
from saudial.prompts import build_prompt

log = logging.getLogger(__name__)

# If a model does not stop at EOS it tends to go on with the next prompt section; cut it there.
NEXT_SECTION = "\n### "


@dataclass(frozen=True)
class Request:
    """One sentence to translate."""

    dialect: str
    english: str
    context: str | None = None


def settings_for_adapter(settings: Settings, adapter_dir: Path) -> Settings:
    """The adapter's training settings (from its run_manifest.json), with what the user set on top.

    An adapter remembers its base model, quantization, data file and split; a later `evaluate`,
    `translate` or `merge` reuses them unless a flag or SAUDIAL_* variable says otherwise. Evaluation,
    generation and Hub settings are not inherited: they are this command's own.
    """
    check_adapter_dir(adapter_dir)
    recorded: dict[str, Any] = {}
    manifest = read_json(adapter_dir / MANIFEST)
    if manifest and isinstance(manifest.get("config"), dict):
        # What decides the model and the split; not how to evaluate, generate or publish this time.
        recorded = {
            k: v
            for k, v in manifest["config"].items()
            if k in Settings.model_fields and (k not in NOT_TRAINING or k == "data")
        }
    else:
        config = read_json(adapter_dir / "adapter_config.json") or {}
        if config.get("base_model_name_or_path"):
            recorded["model_name_or_path"] = config["base_model_name_or_path"]
    explicit = {name: getattr(settings, name) for name in settings.model_fields_set}
    merged = {**recorded, **explicit}
    # Settings() would read SAUDIAL_* again; model_validate on the merged values keeps this explicit.
    return Settings.model_validate({**settings.model_dump(), **merged})


def check_adapter_dir(adapter_dir: Path) -> None:
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ConfigError(
            f"--adapter {str(adapter_dir)!r} holds no adapter_config.json: point it at the output directory "
            "of a training run (SAUDIAL_OUTPUT_DIR)"
        )


def inference_settings(settings: Settings) -> Settings:
    """4-bit on a GPU as in training; on a machine without CUDA the base model loads unquantized."""
    if settings.quantization != "none" and not torch.cuda.is_available():
        log.info("no CUDA GPU: loading the base model unquantized for inference (quantization=none)")
        return settings.model_copy(update={"quantization": "none"})
    return settings


def load_for_inference(settings: Settings, adapter_dir: Path) -> tuple[Any, PreTrainedTokenizerBase]:
    """Base model (loaded as in training) + the trained adapter, and the adapter's tokenizer."""
    settings = inference_settings(settings)
    tokenizer = load_tokenizer(settings, source=str(adapter_dir))
    base = load_model(settings)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.eval()
    return model, tokenizer


def generation_kwargs(settings: Settings, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "do_sample": settings.do_sample,
        "repetition_penalty": settings.repetition_penalty,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "use_cache": True,  # training switched it off; generation wants it
    }
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, min_p=settings.min_p)
    else:  # greedy: no sampling knobs, so transformers does not warn that they are ignored
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


def postprocess(text: str) -> str:
    """The translation the model wrote: up to the next prompt section, trimmed."""
    cut = text.find(NEXT_SECTION)
    if cut >= 0:
        text = text[:cut]
    return text.strip()


def translate(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[Request],
    settings: Settings,
    batch_size: int | None = None,
    progress: bool = True,
    description: str = "translating",
) -> list[str]:
    """Translate `requests` in batches of prompts of similar length; results in input order."""
    from tqdm.auto import tqdm

    batch_size = batch_size or settings.per_device_eval_batch_size
    prompts = [build_prompt(r.dialect, r.english, r.context or None) for r in requests]
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i], reverse=True)  # longest first: OOM shows early
    results: list[str] = [""] * len(prompts)
    kwargs = generation_kwargs(settings, tokenizer)
    device = _input_device(model)
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    try:
        batches = list(_chunks(order, batch_size))
        for batch in tqdm(batches, desc=description, unit="batch", disable=not progress or not batches):
            encoded = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True)
            encoded = {k: v.to(device) for k, v in encoded.items()}
            with torch.inference_mode():
                output = model.generate(**encoded, **kwargs)
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            for i, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True):
                results[i] = postprocess(text)
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return results


def _chunks(items: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _input_device(model: Any) -> torch.device:
    try:
        return model.get_input_embeddings().weight.device
    except AttributeError:
        return next(model.parameters()).device


# --- the `translate` command ------------------------------------------------------------------------

TRANSLATION_COLUMN = "Model Translation"


def known_dialects(adapter_dir: Path) -> list[str]:
    """The dialects the adapter was trained on, from its manifest (empty when unknown)."""
    manifest = read_json(adapter_dir / MANIFEST) or {}
    per_dialect = (manifest.get("data") or {}).get("per_dialect") or {}
    return sorted(per_dialect)


def resolve_dialect(dialect: str | None, known: list[str], where: str = "--dialect") -> str:
    if not dialect:
        raise ConfigError(
            f"{where} is required: one of {', '.join(known) or 'the dialects the adapter was trained on'}"
        )
    if not known:
        return dialect
    by_key = {d.casefold(): d for d in known}
    if dialect.strip().casefold() not in by_key:
        raise ConfigError(f"{where} {dialect!r} is not a dialect this adapter was trained on ({', '.join(known)})")
    return by_key[dialect.strip().casefold()]


def output_path_for(input_path: Path, output: Path | None) -> Path:
    """`name.translated.ext` next to the input, unless given; an existing file is never overwritten."""
    target = output or input_path.with_name(f"{input_path.stem}.translated{input_path.suffix}")
    if target.exists():
        raise ConfigError(f"{target} already exists: remove it or choose another file with --output")
    if target.resolve() == input_path.resolve():
        raise ConfigError("--output must differ from --input")
    return target


def read_requests(path: Path, dialect: str | None, context: str | None, known: list[str]) -> tuple[Any, list[Request]]:
    """Rows of a .csv/.xlsx/.jsonl/.parquet file: English text (required), dialect and context (optional)."""
    from saudial import data as data_mod

    frame = data_mod.read_table(path)
    by_key = {str(c).strip().casefold(): c for c in frame.columns}
    english_col = by_key.get(data_mod.REQUIRED_COLUMNS["english"].casefold()) or by_key.get("english")
    if english_col is None:
        raise ConfigError(
            f"{path.name} has no '{data_mod.REQUIRED_COLUMNS['english']}' column "
            f"(found {[str(c) for c in frame.columns]})"
        )
    dialect_col = by_key.get(data_mod.REQUIRED_COLUMNS["dialect"].casefold())
    context_col = by_key.get(data_mod.OPTIONAL_COLUMNS["context"].casefold())
    requests = []
    for i, row in enumerate(frame.to_dict("records")):
        row_dialect = data_mod.clean_text(row[dialect_col]) if dialect_col is not None else ""
        # --dialect / --context win over the file's columns.
        resolved = resolve_dialect(dialect or row_dialect, known, where=f"row {i + 2}: dialect")
        row_context = context if context is not None else data_mod.clean_text(row[context_col]) if context_col else ""
        requests.append(Request(resolved, data_mod.clean_text(row[english_col]), row_context or None))
    return frame, requests


def write_table(frame: Any, path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xlsm"):
        frame.to_excel(path, index=False)
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_parquet(path, index=False)


def run_translate(
    settings: Settings,
    adapter_dir: Path,
    text: str | None,
    dialect: str | None,
    context: str | None,
    input_path: Path | None,
    output: Path | None = None,
) -> list[str]:
    """`python -m saudial translate`: one text to stdout, or a whole file to `name.translated.ext`."""
    if (text is None) == (input_path is None):
        raise ConfigError("translate needs either an English TEXT argument or --input FILE (not both)")
    settings = settings_for_adapter(settings, adapter_dir)
    known = known_dialects(adapter_dir)
    if input_path is not None:
        target = output_path_for(input_path, output)
        frame, requests = read_requests(input_path, dialect, context, known)
    else:
        requests = [Request(resolve_dialect(dialect, known), str(text).strip(), context or None)]
    model, tokenizer = load_for_inference(settings, adapter_dir)
    results = translate(model, tokenizer, requests, settings, progress=input_path is not None)
    if input_path is None:
        print(results[0], flush=True)
    else:
        frame[TRANSLATION_COLUMN] = results
        write_table(frame, target)
        log.info("%d translation(s) written to %s", len(results), target)
    return results

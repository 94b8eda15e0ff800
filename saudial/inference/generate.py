"""Inference: load base model + adapter the way training did, and translate in batches.

The prompt is `prompts.build_prompt` with the response left empty: exactly what training put before
the translation. Batches are left-padded (so every row's next token follows its own prompt) and
generation stops at the tokenizer's EOS, the token training taught the model to end with.

Memory is bounded by batch and length: a prompt longer than max_length tokens is cut like training cuts
an example (its token ids, keeping the response marker at its end), and max_new_tokens is held to what
fits in the model's context after the longest prompt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from saudial.config.settings import Settings
from saudial.data.prompts import RESPONSE_MARKER, build_prompt
from saudial.errors import OOM_INFERENCE, ConfigError, faults
from saudial.model.loading import load_model, load_tokenizer
from saudial.run import signals
from saudial.run.record import MANIFEST, NOT_TRAINING, read_json

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
    model: dict[str, Any] = (manifest or {}).get("model") or {}
    if (
        isinstance(model, dict) and model.get("source") == "hub" and model.get("revision_sha")
    ):  # the very commit it was trained on
        recorded["model_revision"] = model["revision_sha"]
    explicit = {name: getattr(settings, name) for name in settings.model_fields_set}
    if {"model_name_or_path", "model_revision"} & settings.model_fields_set:
        explicit.setdefault("model_revision", settings.model_revision)
    merged = {**recorded, **explicit}
    # Settings() would read SAUDIAL_* again; model_validate on the merged values keeps this explicit.
    return Settings.model_validate({**settings.model_dump(), **merged})


def check_adapter_dir(adapter_dir: Path) -> None:
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ConfigError(
            f"--adapter {str(adapter_dir)!r} holds no adapter_config.json: point it at the output directory "
            "of a training run (SAUDIAL_OUTPUT_DIR)"
        )


def check_adapter_weights(adapter_dir: Path) -> None:
    """The adapter's weights are safetensors: a pickle (adapter_model.bin) is never loaded."""
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        pickle = (adapter_dir / "adapter_model.bin").is_file()
        raise ConfigError(
            f"--adapter {str(adapter_dir)!r} has "
            + (
                "only adapter_model.bin, a pickle, which saudial never loads (loading one can run code): save the "
                "adapter with safe_serialization=True to get adapter_model.safetensors"
                if pickle
                else "no adapter_model.safetensors: point it at the output directory of a finished training run"
            )
        )


def inference_settings(settings: Settings) -> Settings:
    """4-bit on a GPU as in training; on a machine without CUDA the base model loads unquantized."""
    if settings.quantization != "none" and not torch.cuda.is_available():
        log.info("no CUDA GPU: loading the base model unquantized for inference (quantization=none)")
        return settings.model_copy(update={"quantization": "none"})
    return settings


def load_for_inference(
    settings: Settings, adapter_dir: Path, revision: str | None = None
) -> tuple[Any, PreTrainedTokenizerBase]:
    """Base model (loaded as in training, at `revision` when given) + the trained adapter (safetensors
    only), and the adapter's tokenizer."""
    check_adapter_dir(adapter_dir)
    check_adapter_weights(adapter_dir)
    settings = inference_settings(settings)
    tokenizer = load_tokenizer(settings, source=str(adapter_dir))
    base = load_model(settings, revision=revision)
    model = PeftModel.from_pretrained(base, str(adapter_dir), use_safetensors=True)
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


def encode(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_length: int) -> tuple[list[list[int]], int]:
    """Each prompt's token ids, at most `max_length` of them: a longer prompt is cut like training cuts an
    example, except that its end (the response marker) is kept, so the model still starts its answer.
    Returns the ids and how many prompts were cut."""
    tail = tokenizer("\n\n" + RESPONSE_MARKER, add_special_tokens=False)["input_ids"]
    encoded: list[list[int]] = []
    cut = 0
    for start in range(0, len(prompts), 256):  # a few at a time: a huge file never holds all its ids twice
        for ids in tokenizer(list(prompts[start : start + 256]))["input_ids"]:
            if len(ids) > max_length:
                ids, cut = [*ids[: max_length - len(tail)], *tail], cut + 1
            encoded.append(list(ids))
    return encoded, cut


def new_token_limit(model: Any, settings: Settings, longest_prompt: int) -> int:
    """max_new_tokens, held to what fits in the model's context after the longest prompt."""
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not isinstance(context, int) or settings.max_new_tokens + longest_prompt <= context:
        return settings.max_new_tokens
    fits = max(context - longest_prompt, 1)
    log.warning("SAUDIAL_MAX_NEW_TOKENS=%d does not fit in the model's context: %d", settings.max_new_tokens, fits)
    return fits


def translate(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[Request],
    settings: Settings,
    batch_size: int | None = None,
    progress: bool = True,
    description: str = "translating",
    stats: dict[str, float] | None = None,
) -> list[str]:
    """Translate `requests` in batches of prompts of similar length; results in input order.

    `stats`, when given, receives the tokens generated, the seconds and the rate."""
    from tqdm.auto import tqdm

    batch_size = batch_size or settings.per_device_eval_batch_size
    prompts, cut = encode(
        tokenizer, [build_prompt(r.dialect, r.english, r.context or None) for r in requests], settings.max_length
    )
    if cut:
        log.warning(
            "%s: %d of %d prompts were longer than SAUDIAL_MAX_LENGTH=%d tokens and were cut (the end of their "
            "English text is left out), as training cuts its examples",
            description,
            cut,
            len(prompts),
            settings.max_length,
        )
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)  # longest first: OOM shows early
    results: list[str] = [""] * len(prompts)
    kwargs = generation_kwargs(settings, tokenizer)
    kwargs["max_new_tokens"] = new_token_limit(model, settings, max(map(len, prompts), default=0))
    device = _input_device(model)
    was_training = model.training
    model.eval()
    generated, clock = 0, time.perf_counter()
    try:
        batches = list(_chunks(order, batch_size))
        for batch in tqdm(batches, desc=description, unit="batch", disable=not progress or not batches):
            signals.check()  # SIGTERM during evaluation: stop here (exit 75)
            input_ids, attention_mask = left_padded([prompts[i] for i in batch], tokenizer.pad_token_id)
            width = input_ids.shape[1]
            advice = f"generating for {len(batch)} prompts of up to {width} tokens at once: {OOM_INFERENCE}"
            with faults(oom_advice=advice), torch.inference_mode():
                output = model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **kwargs
                )
            new_tokens = output[:, width:]
            generated += int((new_tokens != tokenizer.pad_token_id).sum())
            for i, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True):
                results[i] = postprocess(text)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - clock
    if stats is not None:
        stats.update(tokens=generated, seconds=round(seconds, 3), tokens_per_second=round(generated / seconds, 1))
    log.info("%s: %d texts, %d tokens generated in %.1f s", description, len(results), generated, seconds)
    return results


def left_padded(rows: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of token ids padded on the left (each row's next token follows its own prompt), and its mask."""
    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


def _chunks(items: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _input_device(model: Any) -> torch.device:
    try:
        return model.get_input_embeddings().weight.device
    except AttributeError:
        return next(model.parameters()).device

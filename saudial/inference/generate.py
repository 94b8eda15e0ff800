"""Inference: load base model + adapter the way training did, and translate (or reply) in batches.

The prompt is `prompts.build_prompt` with the response left empty: exactly what training put before
the translation; for a chat adapter, the conversation through the tokenizer's chat template with its
generation prompt (`chat_replies`). Batches are left-padded (so every row's next token follows its own
prompt) and generation stops at the tokenizer's EOS, the token training taught the model to end with.

Memory is bounded by batch and length: a prompt longer than max_length tokens is cut like training cuts
an example (its token ids, keeping the response marker at its end; a conversation loses its oldest turns
first), and max_new_tokens is held to what fits in the model's context after the longest prompt
(`batches.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from saudial.config.huggingface import check_adapter_dir, check_adapter_weights
from saudial.config.settings import Settings, check_repo_id
from saudial.data.messages import prompt_ids
from saudial.data.prompts import build_prompt
from saudial.errors import OOM_INFERENCE, ConfigError, faults
from saudial.inference.batches import (
    chunks,
    encode,
    generation_kwargs,
    input_device,
    left_padded,
    new_token_limit,
    postprocess,
    reply_text,
    special_ids,
)
from saudial.model.hardware import set_cpu_threads
from saudial.model.loading import load_model, load_tokenizer
from saudial.process import signals
from saudial.rundir.record import MANIFEST, NOT_TRAINING, read_json, trained_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """One sentence to translate."""

    dialect: str
    english: str
    context: str | None = None


def settings_for_adapter(settings: Settings, adapter_dir: Path) -> Settings:
    """The adapter's training settings (from its run_manifest.json), with what the user set on top.

    An adapter remembers its base model, quantization, data file and split; a later `evaluate`,
    `translate` or `merge` reuses them unless a flag or SAUDIAL_* variable says otherwise; its task
    (translate or chat) always. Evaluation, generation and Hub settings are not inherited: they are this
    command's own.
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
        base = config.get("base_model_name_or_path")
        if base and "model_name_or_path" not in settings.model_fields_set:
            check_base_named(adapter_dir, str(base))
            recorded["model_name_or_path"] = base
    model: dict[str, Any] = (manifest or {}).get("model") or {}
    if (
        isinstance(model, dict) and model.get("source") == "hub" and model.get("revision_sha")
    ):  # the very commit it was trained on
        recorded["model_revision"] = model["revision_sha"]
    explicit = {name: getattr(settings, name) for name in settings.model_fields_set}
    if explicit.get("quantization", "none") != "none" and not torch.cuda.is_available():
        # Asked for by name (flag or variable), not the adapter's record: not replaced behind the user's back.
        raise ConfigError(
            f"SAUDIAL_QUANTIZATION={explicit['quantization']} needs a CUDA GPU, which this machine lacks: unset it "
            "(without a GPU the base model loads unquantized) or set it to none"
        )
    if {"model_name_or_path", "model_revision"} & settings.model_fields_set:
        explicit.setdefault("model_revision", settings.model_revision)
    merged = {**recorded, **explicit}
    if task := trained_task(adapter_dir):  # an adapter does the one job it was trained for
        merged["task"] = task
    # Settings() would read SAUDIAL_* again; model_validate on the merged values keeps this explicit.
    return Settings.model_validate({**settings.model_dump(), **merged})


def check_base_named(adapter_dir: Path, base: str) -> None:
    """The base model an adapter folder without a run record names (a checkpoint's adapter_config.json): a relative
    folder that is not there from this working directory, and no Hub id either, is exit 2 that says so (an absolute
    one that is gone: the model's loading says so)."""
    if Path(base).expanduser().is_absolute() or Path(base).expanduser().is_dir():
        return
    try:
        check_repo_id(base)
    except ValueError:
        raise ConfigError(
            f"--adapter {str(adapter_dir)!r}: its adapter_config.json names the base model {base!r}, which is not a "
            f"folder from here ({str(Path.cwd())!r}): run the command in the folder it was trained from, or set "
            "--model-name-or-path"
        ) from None


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
    set_cpu_threads(model)
    return model, tokenizer


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
    return generate_texts(model, tokenizer, prompts, settings, batch_size, progress, description, stats)


def chat_replies(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[list[dict[str, str]]],
    settings: Settings,
    progress: bool = True,
    description: str = "replying",
    stats: dict[str, float] | None = None,
) -> list[str]:
    """The assistant's next turn after each conversation (messages ending with the user's), from the tokenizer's
    chat template with its generation prompt, as training formatted them; at most max_length prompt tokens each
    (data/messages.prompt_ids: the oldest turns after the system prompt are left out first)."""
    encoded = [prompt_ids(tokenizer, messages, settings.max_length) for messages in conversations]
    if cut := sum(was_cut for _, was_cut in encoded):
        log.warning(
            "%s: %d of %d conversations were longer than SAUDIAL_MAX_LENGTH=%d tokens: their oldest turns (or the "
            "end of a last message too long by itself) were left out",
            description,
            cut,
            len(encoded),
            settings.max_length,
        )
    prompts = [ids for ids, _ in encoded]
    return generate_texts(model, tokenizer, prompts, settings, None, progress, description, stats, chat=True)


def generate_texts(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    settings: Settings,
    batch_size: int | None = None,
    progress: bool = True,
    description: str = "generating",
    stats: dict[str, float] | None = None,
    chat: bool = False,
) -> list[str]:
    """What the model writes after each prompt (token ids), in left-padded batches of similar length, longest
    first; results in input order. A translation ends at EOS (`postprocess`), a chat reply at its first special
    token (`reply_text`). `stats`, when given, receives the tokens generated, the seconds and the rate."""
    from tqdm.auto import tqdm

    batch_size = batch_size or settings.per_device_eval_batch_size
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)  # longest first: OOM shows early
    results: list[str] = [""] * len(prompts)
    kwargs = generation_kwargs(settings, tokenizer)
    kwargs["max_new_tokens"] = new_token_limit(model, settings, max(map(len, prompts), default=0))
    device = input_device(model)
    stops = special_ids(tokenizer)
    was_training = model.training
    model.eval()
    generated, clock = 0, time.perf_counter()
    try:
        batches = list(chunks(order, batch_size))
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
            if chat:
                texts = [reply_text(tokenizer, ids, stops) for ids in new_tokens.tolist()]
            else:
                texts = [postprocess(text) for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
            for i, text in zip(batch, texts, strict=True):
                results[i] = text
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - clock
    if stats is not None:
        stats.update(tokens=generated, seconds=round(seconds, 3), tokens_per_second=round(generated / seconds, 1))
    log.info("%s: %d texts, %d tokens generated in %.1f s", description, len(results), generated, seconds)
    return results

"""Token ids in and out of generation: prompts held to max_length, left-padded batches, the generation
options from the settings, and the text of what the model wrote (a translation up to the next prompt
section, a chat reply up to its first special token).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from saudial.config.settings import Settings
from saudial.data.prompts import RESPONSE_MARKER

log = logging.getLogger(__name__)

# If a model does not stop at EOS it tends to go on with the next prompt section; cut it there.
NEXT_SECTION = "\n### "


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


def special_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The ids of the special tokens: EOS, padding, and the added ones (a chat template's `<|im_start|>`)."""
    added = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    return added | {tokenizer.eos_token_id, tokenizer.pad_token_id}


def reply_text(tokenizer: PreTrainedTokenizerBase, ids: list[int], stops: set[int]) -> str:
    """A chat reply: the generated tokens up to the first special one (its end of turn, or a next turn's
    header that a model that does not stop writes), trimmed."""
    end = next((k for k, token in enumerate(ids) if token in stops), len(ids))
    return str(tokenizer.decode(ids[:end], skip_special_tokens=True)).strip()


def left_padded(rows: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of token ids padded on the left (each row's next token follows its own prompt), and its mask."""
    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


def chunks(items: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def input_device(model: Any) -> torch.device:
    try:
        return model.get_input_embeddings().weight.device
    except AttributeError:
        return next(model.parameters()).device

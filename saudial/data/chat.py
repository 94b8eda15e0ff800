"""Chat data: conversations in TRL's conversational format -> token ids with a loss on assistant tokens only.

A data row is one conversation: a `messages` list of {"role": "system" | "user" | "assistant", "content":
str} (TRL's, Axolotl's and LLaMA-Factory's standard format), or a conversational prompt/completion pair
(`prompt` and `completion` both message lists, joined). It is formatted with the tokenizer's own chat
template (LFM2's is ChatML-like: `<|im_start|>role\\n...<|im_end|>\\n`, the system prompt first).

Which tokens carry the loss. LFM2's template has no `{% generation %}` markers, so TRL's
`assistant_only_loss` cannot find the assistant tokens by itself. `tokenize` finds them exactly, from
the template's own output: the text of messages[:i] with the generation prompt is a prefix of the text
of messages[:i+1], and what the latter adds is assistant turn i, up to and including the end-of-turn
token (`<|im_end|>`, the EOS the model must learn to stop with). The characters of those spans,
mapped to tokens through the tokenizer's offsets, are the assistant mask; TRL builds the labels from
it (`assistant_masks`). A template for which the prefix property does not hold is refused.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from saudial.errors import ConfigError, DataError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Conversation:
    """One conversation of the data file; `where` names it for error messages ("line 12")."""

    messages: tuple[tuple[str, str], ...]  # (role, content)
    dialect: str = ""
    where: str = ""

    def as_dicts(self, upto: int | None = None) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages[:upto]]

    @property
    def first_user(self) -> str:
        return next((content for role, content in self.messages if role == "user"), self.messages[0][1])


def parse_messages(value: Any, where: str) -> list[tuple[str, str]]:
    """A `messages` cell -> (role, content) pairs; DataError naming `where` for anything else."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise DataError(f"{where}: 'messages' is text that is not a JSON list of messages") from None
    if hasattr(value, "tolist"):  # a parquet list column arrives as a numpy array
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
    messages: list[tuple[str, str]] = []
    for number, message in enumerate(value, start=1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"{where}, message {number}: needs 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            shown = role if isinstance(role, str) and role.isidentifier() and len(role) <= 20 else "?"
            raise DataError(f"{where}, message {number}: role {shown!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise DataError(f"{where}, message {number}: content must be text, not {type(content).__name__}")
        if not content.strip():
            raise DataError(f"{where}, message {number}: empty {role} content")
        if role == "system" and number != 1:
            raise DataError(f"{where}, message {number}: a system message may only come first")
        messages.append((role, content.strip()))
    if not any(role == "assistant" for role, _ in messages):
        raise DataError(f"{where}: no assistant message (nothing to learn from)")
    return messages


def split(
    conversations: list[Conversation], eval_size: float, seed: int
) -> tuple[list[Conversation], list[Conversation]]:
    """Deterministic split that keeps each conversation whole and conversations that open with the same user
    message on one side (stratified by dialect where the data has one), like the workbook's split."""
    if eval_size <= 0:
        return list(conversations), []
    groups: dict[str, list[int]] = defaultdict(list)
    for index, conversation in enumerate(conversations):
        groups[conversation.first_user.casefold()].append(index)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    totals = Counter(c.dialect for c in conversations)
    target = {d: max(1, round(n * eval_size)) if n >= 2 else 0 for d, n in totals.items()}
    taken: Counter[str] = Counter()
    held: set[int] = set()
    for key in order:
        need = Counter(conversations[i].dialect for i in groups[key])
        if all(taken[d] + n <= target[d] for d, n in need.items()):
            held.update(groups[key])
            taken.update(need)
    train = [c for i, c in enumerate(conversations) if i not in held]
    return train, [c for i, c in enumerate(conversations) if i in held]


def check_template(tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"the tokenizer of {name} has no chat template, which chat data needs: use a chat model's tokenizer "
            "(SAUDIAL_TOKENIZER_NAME_OR_PATH), or train on translation data (SAUDIAL_TASK=translate)"
        )
    if not tokenizer.is_fast:
        raise ConfigError(f"the tokenizer of {name} is not a fast tokenizer: chat data needs its offsets")


def render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    assert isinstance(text, str)
    return text


def assistant_spans(tokenizer: PreTrainedTokenizerBase, conversation: Conversation) -> tuple[str, list[range]]:
    """The rendered conversation and the character spans of its assistant turns (content + end-of-turn)."""
    full = render(tokenizer, conversation.as_dicts(), generation_prompt=False)
    eos = tokenizer.eos_token or ""
    spans: list[range] = []
    for i, (role, _content) in enumerate(conversation.messages):
        if role != "assistant":
            continue
        before = render(tokenizer, conversation.as_dicts(i), generation_prompt=True)
        upto = render(tokenizer, conversation.as_dicts(i + 1), generation_prompt=False)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise ConfigError(
                f"{conversation.where}: the tokenizer's chat template does not render a conversation as the "
                "sum of its turns, so the assistant tokens cannot be found exactly: use a ChatML-like template"
            )
        end = upto.rfind(eos, len(before)) + len(eos) if eos and eos in upto[len(before) :] else len(upto)
        spans.append(range(len(before), end))
    return full, spans


def tokenize(tokenizer: PreTrainedTokenizerBase, conversation: Conversation) -> dict[str, list[int]]:
    """`input_ids` of the rendered conversation and `assistant_masks` (1 on assistant tokens) for TRL."""
    text, spans = assistant_spans(tokenizer, conversation)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(start in span for span in spans)) for start, _end in encoded["offset_mapping"]]
    return {"input_ids": list(encoded["input_ids"]), "assistant_masks": mask}

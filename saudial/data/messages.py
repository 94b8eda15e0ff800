"""Chat data: conversations in TRL's conversational format -> token ids with a loss on assistant tokens only.

A data row is one conversation: a `messages` list of {"role": "system" | "user" | "assistant", "content":
str} (TRL's, Axolotl's and LLaMA-Factory's standard format), or a conversational prompt/completion pair
(`prompt` and `completion` both message lists, joined; only the completion's assistant turns are learned,
as TRL does). It is formatted with the tokenizer's own chat template (LFM2's is ChatML-like:
`<|im_start|>role\\n...<|im_end|>\\n`, the system prompt first).

Which tokens carry the loss. A template with `{% generation %}` markers (LiquidAI's LEAP templates for
LFM2/LFM2.5 have them) says which tokens are the assistant's: `tokenize` asks it the way TRL's
`assistant_only_loss` does (`apply_chat_template(..., return_assistant_tokens_mask=True)`), and
`check_template` refuses one whose mask leaves out the end-of-turn token (TRL's
`is_chat_template_stop_token_trained`: the model would never learn to stop). Such a template may render a
turn differently once later turns follow (LFM2.5's drops earlier turns' `<think>` blocks), which the
markers handle and the prefix rule below cannot. LFM2's template has no markers, so TRL's
`assistant_only_loss` cannot find the assistant tokens by itself. `tokenize` then finds them exactly, from
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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from saudial.data.text import kind_of, strip_controls
from saudial.errors import ConfigError, DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant")
MESSAGES, PROMPT, COMPLETION = "messages", "prompt", "completion"  # TRL's column names


@dataclass(frozen=True)
class Conversation:
    """One conversation of the data file; `where` names it for error messages ("line 12")."""

    messages: tuple[tuple[str, str], ...]  # (role, content)
    dialect: str = ""
    where: str = ""
    learn_from: int = 0  # assistant turns before this message carry no loss (a prompt/completion row's prompt)

    def as_dicts(self, upto: int | None = None) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages[:upto]]

    @property
    def first_user(self) -> str:
        return next((content for role, content in self.messages if role == "user"), self.messages[0][1])

    @property
    def last_assistant(self) -> int:
        """The index of the last assistant turn: what evaluation asks the model to write."""
        return max(i for i, (role, _) in enumerate(self.messages) if role == "assistant")


def is_conversations(columns: Iterable[object], first: Mapping[Any, Any] | None = None) -> bool:
    """Do these columns hold conversations: a `messages` column, or `prompt` and `completion` whose first
    value (`first`, where given) is a list of messages rather than text?"""
    names = {str(c) for c in columns}
    if MESSAGES in names:
        return True
    if not {PROMPT, COMPLETION} <= names:
        return False
    value = (first or {}).get(PROMPT)
    return first is None or kind_of(value) == "a list"


def parse_messages(value: Any, where: str, require_assistant: bool = True) -> tuple[list[tuple[str, str]], int]:
    """A `messages` cell -> (role, content) pairs and the invisible control characters removed from the
    contents (data/text.CONTROL); a DataError naming `where` for anything else. Without `require_assistant`
    (conversations to reply to), no assistant turn is needed."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise DataError(f"{where}: the messages are text that is not a JSON list of messages") from None
    if hasattr(value, "tolist"):  # a parquet list column arrives as a numpy array
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: the messages must be a non-empty list of {{'role', 'content'}} objects")
    messages: list[tuple[str, str]] = []
    removed = 0
    for number, message in enumerate(value, start=1):
        if not isinstance(message, dict) or message.get("role") is None or message.get("content") is None:
            raise DataError(f"{where}, message {number}: needs 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            shown = role if isinstance(role, str) and role.isidentifier() and len(role) <= 20 else "?"
            raise DataError(f"{where}, message {number}: role {shown!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise DataError(f"{where}, message {number}: the content is {kind_of(content)}, not text")
        content, count = strip_controls(content)
        removed += count
        if not content.strip():
            raise DataError(f"{where}, message {number}: empty {role} content")
        if role == "system" and number != 1:
            raise DataError(f"{where}, message {number}: a system message may only come first")
        messages.append((role, content.strip()))
    if require_assistant and not any(role == "assistant" for role, _ in messages):
        raise DataError(f"{where}: no assistant message (nothing to learn from)")
    return messages, removed


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
    if has_markers(tokenizer):
        from trl.chat_template_utils import is_chat_template_stop_token_trained

        if not is_chat_template_stop_token_trained(tokenizer):
            raise ConfigError(
                f"the chat template of {name} marks the assistant's turns ({{% generation %}}) without its "
                "end-of-turn token, so the model would never learn to stop: move the end-of-turn token inside "
                "{% generation %}...{% endgeneration %}, or use a template without the markers"
            )


def has_markers(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Does the tokenizer's chat template mark the assistant's tokens (TRL's test for `{% generation %}`)?"""
    from trl.chat_template_utils import has_generation_markers

    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, (str, dict)) and bool(template) and has_generation_markers(template)


def render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    assert isinstance(text, str)
    return text


def assistant_spans(
    tokenizer: PreTrainedTokenizerBase, conversation: Conversation, stop_at: int | None = None
) -> tuple[str, list[range]]:
    """The rendered conversation and the character spans of its assistant turns (content + end-of-turn).
    Turns that start at or after character `stop_at` (past what training keeps) are not looked for."""
    full = render(tokenizer, conversation.as_dicts(), generation_prompt=False)
    eos = tokenizer.eos_token or ""
    spans: list[range] = []
    for i, (role, _content) in enumerate(conversation.messages):
        if role != "assistant" or i < conversation.learn_from:
            continue
        before = render(tokenizer, conversation.as_dicts(i), generation_prompt=True)
        if stop_at is not None and len(before) >= stop_at:
            break
        upto = render(tokenizer, conversation.as_dicts(i + 1), generation_prompt=False)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise ConfigError(
                f"{conversation.where}: the tokenizer's chat template does not render a conversation as the "
                "sum of its turns, so the assistant tokens cannot be found exactly: use a ChatML-like template"
            )
        end = upto.rfind(eos, len(before)) + len(eos) if eos and eos in upto[len(before) :] else len(upto)
        spans.append(range(len(before), end))
    return full, spans


def tokenize(
    tokenizer: PreTrainedTokenizerBase, conversation: Conversation, max_length: int | None = None
) -> dict[str, list[int]]:
    """`input_ids` of the rendered conversation and `assistant_masks` (1 on assistant tokens) for TRL, whole
    (TRL cuts them to max_length); with `max_length`, the mask past that many tokens is left 0 unlooked-at, so
    a conversation of thousands of turns costs what its first max_length tokens cost."""
    if has_markers(tokenizer):
        return marked(tokenizer, conversation)
    return prefix_masks(tokenizer, conversation, max_length)


def prefix_masks(
    tokenizer: PreTrainedTokenizerBase, conversation: Conversation, max_length: int | None = None
) -> dict[str, list[int]]:
    """`tokenize` by saudial's own rule (the template's turn prefixes), for a template without markers."""
    text = render(tokenizer, conversation.as_dicts(), generation_prompt=False)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    stop_at = offsets[max_length][0] if max_length is not None and len(offsets) > max_length else None
    _, spans = assistant_spans(tokenizer, conversation, stop_at)
    mask = [int(any(start in span for span in spans)) for start, _end in offsets]
    return {"input_ids": list(encoded["input_ids"]), "assistant_masks": mask}


def marked(tokenizer: PreTrainedTokenizerBase, conversation: Conversation) -> dict[str, list[int]]:
    """`input_ids` and `assistant_masks` from the template's `{% generation %}` markers, the call TRL's
    `assistant_only_loss` makes; a prompt/completion row's prompt turns (before `learn_from`) carry no loss."""
    out: Any = tokenizer.apply_chat_template(
        conversation.as_dicts(), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    if conversation.learn_from:
        before: Any = tokenizer.apply_chat_template(
            conversation.as_dicts(conversation.learn_from), tokenize=True, add_generation_prompt=True, return_dict=True
        )
        prompt = list(before["input_ids"])
        differ = (i for i, (a, b) in enumerate(zip(prompt, ids, strict=False)) if a != b)
        shared = next(differ, min(len(prompt), len(ids)))
        mask[:shared] = [0] * shared
    return {"input_ids": ids, "assistant_masks": mask}


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], max_length: int
) -> tuple[list[int], bool]:
    """Token ids of `messages` with the generation prompt (what the model answers), at most `max_length` of
    them, and whether anything was left out: the oldest turns after the system prompt go first; a last
    message that alone is too long is cut, keeping its end of turn and the generation prompt."""
    system = messages[:1] if messages[0]["role"] == "system" else []
    rest = messages[len(system) :]

    def ids(turns: list[dict[str, str]]) -> list[int]:
        return list(tokenizer(render(tokenizer, system + turns, True), add_special_tokens=False)["input_ids"])

    whole = ids(rest)
    if len(whole) <= max_length:
        return whole, False
    low, high = 1, len(rest) - 1  # the fewest oldest turns to leave out so that the rest fits (binary search)
    while low <= high:
        middle = (low + high) // 2
        if len(ids(rest[middle:])) <= max_length:
            high = middle - 1
        else:
            low = middle + 1
    if low < len(rest):
        return ids(rest[low:]), True
    text = render(tokenizer, system + rest[-1:], True)
    content = rest[-1]["content"]
    end = text.rfind(content) + len(content) if content in text else len(text)
    tail = list(tokenizer(text[end:], add_special_tokens=False)["input_ids"])
    head = list(tokenizer(text[:end], add_special_tokens=False)["input_ids"])
    return [*head[: max(max_length - len(tail), 1)], *tail], True

"""Conversations -> what the trainer sees: token ids and assistant masks, and what they look like in tokens.

`to_examples` tokenizes every conversation with the tokenizer's chat template (`messages.tokenize`): TRL takes
the pre-tokenized `input_ids` and `assistant_masks`, builds the labels from the masks and cuts each example
to max_length (dropping one left without an assistant token). `summarize` counts conversations, turns and
roles, conversations per dialect and split, and tokens per conversation as trained, including how many
max_length truncates and how many it leaves without any token to learn from.
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import datasets
import pandas as pd

from saudial.data import messages
from saudial.data.examples import arrow_dataset, split_table
from saudial.data.messages import Conversation
from saudial.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from saudial.data.conversations import ChatData

log = logging.getLogger(__name__)

FEATURES = datasets.Features(
    {
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "assistant_masks": datasets.Sequence(datasets.Value("int8")),
    }
)
CONVERSATION = "conversation"  # the column of the held-out frame that holds each Conversation


@dataclass
class ChatSplit:
    train: list[Conversation]
    eval: list[Conversation]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # dialect -> {"train": n, "eval": n}


def split(data: ChatData, eval_size: float, seed: int) -> ChatSplit:
    """`messages.split`: each conversation whole, those opening with the same user message on one side."""
    train, held = messages.split(data.conversations, eval_size, seed)
    train_counts, eval_counts = Counter(c.dialect for c in train), Counter(c.dialect for c in held)
    dialects = sorted(d for d in set(train_counts) | set(eval_counts) if d)
    return ChatSplit(train, held, {d: {"train": train_counts[d], "eval": eval_counts[d]} for d in dialects})


def held_out_frame(conversations: list[Conversation]) -> pd.DataFrame:
    """The held-out conversations as evaluation takes them: a dialect column ("" for none) and the conversation."""
    return pd.DataFrame(
        {"dialect": [c.dialect for c in conversations], CONVERSATION: conversations},
        columns=["dialect", CONVERSATION],
    )


def prepare(
    data: ChatData, split: ChatSplit, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> tuple[datasets.Dataset, datasets.Dataset, dict[str, Any]]:
    """Both sides as token ids with their assistant masks (the tokenizer's chat template, `messages.check_template`
    first), and the summary (logged) of what the trainer will see."""
    messages.check_template(tokenizer, getattr(tokenizer, "name_or_path", "") or "the base model")
    train_ds = to_examples(split.train, tokenizer, max_length)
    eval_ds = to_examples(split.eval, tokenizer, max_length, learnable_only=True)
    summary = summarize(data, split, max_length, train_ds)
    # Where the assistant tokens come from (data/messages.py): the template's markers, or saudial's turn prefixes.
    summary["assistant_tokens_from"] = "generation markers" if messages.has_markers(tokenizer) else "turn prefixes"
    log_summary(summary)
    return train_ds, eval_ds, summary


def to_examples(
    conversations: list[Conversation], tokenizer: PreTrainedTokenizerBase, max_length: int, learnable_only: bool = False
) -> datasets.Dataset:
    """Each conversation as `input_ids` + `assistant_masks`, whole (TRL cuts them to max_length and leaves out
    those without an assistant token within it; `learnable_only` leaves them out here already)."""
    records = [messages.tokenize(tokenizer, c, max_length) for c in conversations]
    if learnable_only:
        records = [r for r in records if any(r["assistant_masks"][:max_length])]
    # Columns, not a list of records: an empty held-out side is an empty data set that still has its columns.
    return arrow_dataset({key: [r[key] for r in records] for key in FEATURES}, FEATURES)


def summarize(data: ChatData, split: ChatSplit, max_length: int, train_ds: datasets.Dataset) -> dict[str, Any]:
    lengths = [len(ids) for ids in train_ds["input_ids"]]
    masks = train_ds["assistant_masks"]
    without_loss = sum(1 for mask in masks if not any(mask[:max_length]))
    if train_ds.num_rows and without_loss == train_ds.num_rows:
        raise ConfigError(
            f"no training conversation has an assistant token within SAUDIAL_MAX_LENGTH={max_length} tokens "
            "(the system prompt and first user turns fill it): raise SAUDIAL_MAX_LENGTH"
        )
    ordered = sorted(lengths)
    roles = Counter(role for c in data.conversations for role, _ in c.messages)
    turns = sum(roles.values())
    return {
        "task": "chat",
        "file": str(data.path),
        "sha256": data.sha256,
        "rows_read": data.rows_read,
        "duplicates_removed": data.duplicates_removed,
        "control_chars_removed": data.control_chars_removed,
        "rows_used": len(data.conversations),
        "train_rows": len(split.train),
        "eval_rows": len(split.eval),
        "per_dialect": split.counts,
        "turns": {
            "total": turns,
            "per_conversation": round(turns / max(len(data.conversations), 1), 2),
            "roles": {role: roles[role] for role in messages.ROLES},
        },
        "train_tokens": {
            "mean": round(statistics.fmean(lengths), 1) if lengths else 0,
            "median": statistics.median(lengths) if lengths else 0,
            "p90": ordered[int(0.9 * (len(ordered) - 1))] if ordered else 0,
            "max": ordered[-1] if ordered else 0,
            "total": sum(lengths),
            "trained": sum(min(n, max_length) for n in lengths),  # what TRL keeps of them
            "assistant": sum(sum(mask[:max_length]) for mask in masks),  # of those, the ones with a loss
            "truncated_at_max_length": sum(1 for n in lengths if n > max_length),
            "without_loss_at_max_length": without_loss,
            "max_length": max_length,
        },
    }


def log_summary(summary: dict[str, Any]) -> None:
    turns, roles = summary["turns"], summary["turns"]["roles"]
    lines = [
        f"data: {summary['file']} (sha256 {summary['sha256'][:12]}), conversations",
        f"  conversations read {summary['rows_read']}, exact duplicates removed {summary['duplicates_removed']}, "
        f"used {summary['rows_used']}; invisible control characters removed {summary['control_chars_removed']}",
        f"  turns {turns['total']} ({', '.join(f'{r} {n}' for r, n in roles.items())}), "
        f"{turns['per_conversation']} per conversation",
        *split_table(summary),
    ]
    t = summary["train_tokens"]
    dropped = t["without_loss_at_max_length"]
    found = (
        "the chat template's {% generation %} markers, as TRL's assistant_only_loss does"
        if summary.get("assistant_tokens_from") == "generation markers"
        else "the chat template's turn prefixes"
    )
    lines.append(
        f"  train tokens/conversation: mean {t['mean']}, median {t['median']}, p90 {t['p90']}, max {t['max']}; "
        f"{t['assistant']} of the {t['trained']} tokens trained on are the assistant's (the loss; found by {found}); "
        f"{t['truncated_at_max_length']} conversation(s) longer than max_length={t['max_length']} will be truncated"
        + (f", {dropped} of them left out (no assistant token within it)" if dropped else "")
    )
    log.info("\n".join(lines))

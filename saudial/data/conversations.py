"""Chat data files -> conversations, and which reading SAUDIAL_TASK asks for.

A `.jsonl` or `.parquet` file with a `messages` column (TRL's conversational format), or with `prompt` and
`completion` message lists, holds one conversation per line or row. It is read by the workbook's rules:
only a regular file within SAUDIAL_MAX_DATA_FILE_MB (`files.py`), JSON line by line so that a bad line is
named (`formats.py`), invisible control characters removed from every content and counted (`text.py`),
an optional `dialect` field that must be text and look like a name, exact duplicates kept once, the
dialect filter. Every message must be valid (`messages.parse_messages`): a bad one is one DataError naming
the file, the line and the message, never quoting it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from saudial.data import workbook
from saudial.data.files import DATA_SETTING
from saudial.data.messages import COMPLETION, MESSAGES, PROMPT, Conversation, parse_messages
from saudial.data.text import describe_names, is_missing
from saudial.data.workbook import Dataset, Table, read_table
from saudial.errors import DataError, printable

if TYPE_CHECKING:
    from saudial.config.settings import Settings

log = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".parquet")
DIALECT = "dialect"


@dataclass
class ChatData:
    """Validated conversations of a chat data file, and what reading it did."""

    conversations: list[Conversation]
    path: Path
    sha256: str
    rows_read: int
    duplicates_removed: int
    control_chars_removed: int = 0
    dialect_filter: list[str] | None = None
    task: ClassVar[str] = "chat"  # the SAUDIAL_TASK this data is for (workbook.Dataset: "translate")


def load_configured_data(settings: Settings) -> Dataset | ChatData:
    """The data file SAUDIAL_DATA names, read for SAUDIAL_TASK: translation rows (the workbook) or
    conversations; with `auto`, conversations where a .jsonl/.parquet file holds them, said in the log."""
    if settings.task == "translate" or settings.data is None:
        return workbook.load_configured(settings)
    path = settings.data
    if settings.task == "chat" and path.suffix.lower() not in SUFFIXES:
        raise DataError(
            f"SAUDIAL_TASK=chat reads conversations from a .jsonl or .parquet file, not {printable(path.name)}: "
            'write them as JSON lines ({"messages": [...]}), or set SAUDIAL_TASK=translate for SauDial rows'
        )
    table = read_table(path, settings.sheet_name, settings.max_data_file_mb, setting=DATA_SETTING)
    if settings.task == "auto":
        chat = workbook.holds_conversations(table)
        found = "holds conversations ('messages')" if chat else "holds no 'messages' column"
        log.info("SAUDIAL_TASK=auto: %s %s: task %s", table.shown, found, "chat" if chat else "translate")
        if not chat:
            return workbook.from_table(table, path, settings.dialects)
    return from_table(table, path, settings.dialects)


def dialects_of(table: Table) -> list[str]:
    """The `dialect` field of every row, checked like the workbook's Dialect column ("" where there is none),
    and the control characters removed from it (counted by the caller)."""
    column = workbook.find_column(table.frame, DIALECT, table.shown)
    if column is None:
        return [""] * len(table.frame)
    frame = column.to_frame(DIALECT)
    workbook.check_text(table, frame, {DIALECT: DIALECT})
    frame, removed = workbook.clean_columns(frame)
    workbook.check_dialects(table, frame[DIALECT])
    if removed:
        log.warning("removed %d invisible control character(s) from the dialect field", removed)
    return [str(d) for d in frame[DIALECT]]


def row_conversation(record: Mapping[Any, Any], where: str, to_reply: bool = False) -> tuple[Conversation, int]:
    """One row -> a conversation and the control characters removed; a DataError naming `where` if it is not one.
    `to_reply`: a conversation to answer (its last message is the user's; no assistant turn needed)."""
    messages, prompt, completion = (record.get(k) for k in (MESSAGES, PROMPT, COMPLETION))
    has_messages, has_pair = not is_missing(messages), not is_missing(prompt) and not is_missing(completion)
    if to_reply and not has_messages and not is_missing(prompt):
        messages, has_messages, has_pair = prompt, True, False  # the prompt is answered (a completion stays as is)
    if has_messages and has_pair:
        raise DataError(f"{where} has both 'messages' and 'prompt'/'completion': keep one of them")
    if has_messages:
        parsed, removed = parse_messages(messages, where, require_assistant=not to_reply)
        conversation = Conversation(tuple(parsed), where=where)
    elif has_pair and not to_reply:
        asked, removed = parse_messages(prompt, f"{where}, prompt", require_assistant=False)
        answered, more = parse_messages(completion, f"{where}, completion")
        if any(role == "system" for role, _ in answered):
            raise DataError(f"{where}, completion: a system message belongs in the prompt")
        conversation = Conversation(tuple(asked + answered), where=where, learn_from=len(asked))
        removed += more
    else:
        wanted = "'messages' (or 'prompt')" if to_reply else "'messages' (or 'prompt' and 'completion')"
        raise DataError(f"{where} has no conversation: it needs {wanted} as a list of messages")
    if to_reply and conversation.messages[-1][0] != "user":
        raise DataError(
            f"{where}: the last message is the {conversation.messages[-1][0]}'s: a conversation to reply to ends "
            "with the user's message"
        )
    return conversation, removed


def read_conversations(table: Table, to_reply: bool = False) -> tuple[list[Conversation], int]:
    """Every row of `table` as a conversation (dialect included), and the control characters removed."""
    wanted = "a 'messages' (or 'prompt') column" if to_reply else "a 'messages' column (or 'prompt' and 'completion')"
    names = {str(c) for c in table.frame.columns}
    if MESSAGES not in names and not (PROMPT in names and (to_reply or COMPLETION in names)):
        raise DataError(
            f"{table.shown} holds no conversations: chat data needs {wanted} of messages, found "
            f"{describe_names(table.frame.columns)}"
            + ("" if to_reply else "; for SauDial rows set SAUDIAL_TASK=translate")
        )
    dialects = dialects_of(table)
    conversations: list[Conversation] = []
    removed = 0
    records = table.frame.to_dict("records")
    for number, record, dialect in zip(table.frame.index, records, dialects, strict=True):
        where = f"{table.shown} {table.row_word} {number}"
        conversation, count = row_conversation(record, where, to_reply)
        conversations.append(Conversation(conversation.messages, dialect, where, conversation.learn_from))
        removed += count
    return conversations, removed


def from_table(table: Table, path: Path, dialects: list[str] | None = None) -> ChatData:
    """The conversations of a file as read (`read_table`): validated, de-duplicated, dialects filtered."""
    conversations, removed = read_conversations(table)
    if removed:
        log.warning("removed %d invisible control character(s) (NUL, bidi, zero-width, ...) from the messages", removed)
    read = len(conversations)
    if dialects:
        wanted = workbook.chosen_dialects(dialects, {c.dialect for c in conversations}, table.shown)
        conversations = [c for c in conversations if c.dialect in wanted]
    seen: set[tuple[Any, ...]] = set()
    unique = []
    for c in conversations:
        key = (c.dialect, c.messages, c.learn_from)
        if key not in seen:
            seen.add(key)
            unique.append(c)
    if not unique:
        raise DataError(f"{table.shown} has no conversations: it needs one JSON object with 'messages' per line")
    if len(unique) < len(conversations):
        log.warning("kept %d exact duplicate conversation(s) once", len(conversations) - len(unique))
    return ChatData(unique, path, table.sha256, read, len(conversations) - len(unique), removed, dialects)

"""`saudial chat`: a user message, or a whole file of conversations, through a trained chat adapter.

One MESSAGE (with `--system`, after that system prompt) is answered and the reply printed. A .jsonl or
.parquet file of conversations whose last message is the user's (`messages`, or TRL's prompt-only
`prompt`) is answered row by row and written next to it as NAME.replies.EXT: every row as it was, plus
its `reply`, never over an existing file (the output rules of `translate --output`: its folder is created
where missing and checked writable before any model is loaded). The file is read and
checked by the rules of the training data (data/conversations.py) before any model is looked at.
Generation is bounded as translation's is: each prompt at most SAUDIAL_MAX_LENGTH tokens (the oldest
turns are left out first), each reply at most SAUDIAL_MAX_NEW_TOKENS.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from saudial.config.settings import Settings
from saudial.data import conversations
from saudial.data.messages import check_template
from saudial.data.text import strip_controls
from saudial.data.workbook import read_table
from saudial.errors import ConfigError
from saudial.jobs.result_files import check_output_folder, deliver, output_path_for
from saudial.jobs.translate import Asked, text_or_file
from saudial.process.collector import long_lived_imports
from saudial.rundir.record import trained_task

log = logging.getLogger(__name__)

REPLY_COLUMN = "reply"
Messages = list[dict[str, str]]


def output_path(input_path: Path, output: Path | None) -> Path:
    """`name.replies.ext` next to the input, unless given: a .jsonl or .parquet file that does not exist yet."""
    check_input_type(input_path)  # before a name is made from it
    target = output or input_path.with_name(f"{input_path.stem}.replies{input_path.suffix}")
    if target.suffix.lower() not in conversations.SUFFIXES:
        raise ConfigError(f"--output {target} has an unsupported type: name it .jsonl or .parquet")
    return output_path_for(input_path, target)


def with_system(messages: Messages, system: str | None) -> Messages:
    """`messages` after the system prompt `system` (replacing theirs), or as they are without one."""
    if system is None:
        return messages
    rest = messages[1:] if messages[0]["role"] == "system" else messages
    return [{"role": "system", "content": system}, *rest]


def cleaned(text: str, what: str) -> str:
    """A command-line text without invisible control characters; an empty one is refused."""
    kept = strip_controls(text)[0].strip()
    if not kept:
        raise ConfigError(f"{what} is empty: write the text the model should read")
    return kept


def check_input_type(path: Path) -> None:
    if path.suffix.lower() not in conversations.SUFFIXES:
        raise ConfigError(
            f'--input {path.name!r} is not a .jsonl or .parquet file of conversations ({{"messages": [...]}} per '
            "line, the last message the user's)"
        )


def read_inputs(path: Path, max_mb: int, system: str | None) -> tuple[pd.DataFrame, list[Messages]]:
    """The rows of a conversations file and each one's messages (with `system`, after it)."""
    check_input_type(path)
    table = read_table(path, max_mb=max_mb, setting="--input")
    found, removed = conversations.read_conversations(table, to_reply=True)
    if removed:
        log.warning(
            "removed %d invisible control character(s) (NUL, bidi, zero-width, ...) from %s", removed, table.shown
        )
    return table.frame, [with_system(c.as_dicts(), system) for c in found]


def check_chat(
    settings: Settings,
    adapter_dir: Path,
    message: str | None,
    system: str | None,
    input_path: Path | None,
    output: Path | None = None,
) -> Asked:
    """Everything that can be wrong with the arguments, the adapter's record or the input file, said before
    torch and the model libraries are imported (they take seconds)."""
    text_or_file("chat", "a MESSAGE", message, input_path)
    if trained_task(adapter_dir) not in (None, "chat"):  # an adapter without saudial's record is taken as it is
        raise ConfigError(
            f"--adapter {adapter_dir} was trained to translate SauDial rows, not on conversations: use "
            "`saudial translate`, or train a chat adapter (SAUDIAL_TASK=chat)"
        )
    system = cleaned(system, "--system") if system is not None else None
    if input_path is None:
        return Asked([with_system([{"role": "user", "content": cleaned(str(message), "MESSAGE")}], system)], None, None)
    target = output_path(input_path, output)  # the file first: a broken one fails before any model is looked at
    frame, prompts = read_inputs(input_path, settings.max_data_file_mb, system)
    check_output_folder(target)  # last: a command refused by any other check writes nothing
    return Asked(prompts, frame, target)


def run_chat(
    settings: Settings,
    adapter_dir: Path,
    message: str | None,
    system: str | None,
    input_path: Path | None,
    output: Path | None = None,
    asked: Asked | None = None,
) -> list[str]:
    """`saudial chat`: one reply to stdout, or a whole file of conversations to `name.replies.ext`.
    `asked`: what `check_chat` returned for these arguments (checked here when not given)."""
    asked = asked or check_chat(settings, adapter_dir, message, system, input_path, output)
    with long_lived_imports():  # torch, transformers, PEFT (process/collector.py)
        from saudial.inference.generate import chat_replies, load_for_inference, settings_for_adapter

    settings = settings_for_adapter(settings, adapter_dir)
    model, tokenizer = load_for_inference(settings, adapter_dir)
    check_template(tokenizer, str(adapter_dir))
    replies = chat_replies(model, tokenizer, asked.requests, settings, progress=asked.frame is not None)
    deliver(replies, asked.frame, REPLY_COLUMN, asked.target, ("reply", "replies", "more conversations"))
    return replies

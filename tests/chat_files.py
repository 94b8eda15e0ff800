"""Chat data for the tests: conversations in TRL's `messages` format, written as JSON lines (not a test module).

Built from the synthetic SauDial rows (the tiny tokenizer was trained on their text) by
`saudial.devtools.synthetic.make_conversations`: one or two exchanges per conversation, every fifth line a
conversational prompt/completion pair instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saudial.devtools import synthetic


def conversations(n: int = 48, seed: int = 0) -> list[dict[str, Any]]:
    return synthetic.make_conversations(n, seed)


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    return synthetic.write_jsonl(path, lines)

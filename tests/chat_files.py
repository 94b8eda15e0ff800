"""Chat data for the tests: conversations in TRL's `messages` format, written as JSON lines (not a test module).

Built from the synthetic SauDial rows (the tiny tokenizer was trained on their text): a system prompt naming
the dialect, the English line as the user's turn and its dialect translation as the assistant's, one or two
exchanges per conversation; every fifth line is a conversational prompt/completion pair instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from saudial.data.text import clean_text
from saudial.devtools import synthetic


def conversations(n: int = 48, seed: int = 0) -> list[dict[str, Any]]:
    frame = synthetic.make_rows(max(2 * n, 20), seed)
    rows = [
        (str(d), clean_text(e), clean_text(t))
        for d, e, t in zip(frame["Dialect"], frame["English Text"], frame["Dialect Translation"], strict=True)
    ]
    lines: list[dict[str, Any]] = []
    for i in range(n):
        dialect, english, reply = rows[2 * i]
        _, english2, reply2 = rows[2 * i + 1]
        system = {"role": "system", "content": f"Answer in {dialect} Arabic."}
        turns = [{"role": "user", "content": english}, {"role": "assistant", "content": reply}]
        if i % 2:
            turns += [{"role": "user", "content": english2}, {"role": "assistant", "content": reply2}]
        if i % 5 == 4:
            lines.append({"prompt": [system, *turns[:-1]], "completion": turns[-1:], "dialect": dialect})
        else:
            lines.append({"messages": [system, *turns], "dialect": dialect})
    return lines


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return path

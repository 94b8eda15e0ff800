"""The one prompt format, shared by training, evaluation and translation.

It is the original recipe's prompt (recipes/seed.yaml) character for character. Training gives TRL a
prompt/completion pair, so the loss covers the response (and the EOS that TRL appends) only; inference sends the
same prompt with an empty response and reads what the model writes after it.
"""

from __future__ import annotations

RESPONSE_MARKER = "### Response:\n"


def build_prompt(dialect: str, english: str, context: str | None = None) -> str:
    """Everything the model sees before the translation. A missing context leaves out its line."""
    lines = ["### Instruction:", f"Translate the following English text to Saudi Dialect ({dialect})."]
    if context:
        lines.append(f"Context: {context}")
    lines += ["", "### Input:", english, "", RESPONSE_MARKER]
    return "\n".join(lines)


def build_example(dialect: str, english: str, translation: str, context: str | None = None) -> dict[str, str]:
    """A TRL prompt/completion record for one row."""
    return {"prompt": build_prompt(dialect, english, context), "completion": translation}

"""One cell of a data file -> clean text: the same rules for training rows, references and inputs."""

from __future__ import annotations

import pandas as pd

QUOTE_PAIRS = {'"': '"', "\u201c": "\u201d", "\u00ab": "\u00bb"}  # "...", “...”, «...»


def clean_text(value: object) -> str:
    """Cell -> text: NaN/None -> '', whitespace trimmed, one pair of wrapping quotes removed."""
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return ""
    text = str(value).strip()
    if len(text) >= 2 and QUOTE_PAIRS.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text

"""One cell of a data file -> clean text: the same rules for training rows, references and inputs.

A cell must hold text (or nothing): `kind_of` names what else it holds, so the loader can refuse a
number, bytes, a list or a date in a text column instead of training on its Python repr. Invisible
control characters are removed before anything else looks at the text (they would hide inside the
prompt and defeat the quote stripping); `clean_cell` says how many it removed.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Mapping
from numbers import Number

QUOTE_PAIRS = {'"': '"', "\u201c": "\u201d", "\u00ab": "\u00bb"}  # "...", “...”, «...»

# Removed from every cell: C0 controls but newline and tab (NUL, ESC, ...), DEL, C1 controls, the bidi
# embeddings/overrides/isolates and marks (LRE..RLO, LRI..PDI, LRM/RLM and the Arabic letter mark), the
# zero-width space/joiners and the BOM. A carriage return is a line break: CRLF and CR become LF first.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
NEWLINES = re.compile(r"\r\n?")

# devtools/synthetic.py starts every row's Scenario with this word: a file where all rows do is its synthetic
# sample (or another file it wrote), not SauDial (workbook.is_synthetic), and the data summary and the model
# card say so, in these words.
SYNTHETIC_MARK = "SYNTHETIC "
SYNTHETIC = "synthetic sample (not SauDial)"


def strip_controls(text: str) -> tuple[str, int]:
    """`text` without the invisible control characters of CONTROL, and how many were removed."""
    text = NEWLINES.sub("\n", text)
    return CONTROL.subn("", text)


def is_missing(value: object) -> bool:
    """An empty cell as the readers give it: None, a NaN (float, numpy, Decimal), pandas' NA and NaT."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return True
    if isinstance(value, Number) or type(value).__name__ == "datetime64":
        return bool(value != value)  # NaN and NaT are the values not equal to themselves
    return False


def kind_of(value: object) -> str | None:
    """None for text or an empty cell; otherwise what the cell holds, in words ("a number", "bytes", ...)."""
    if isinstance(value, str) or is_missing(value):
        return None
    if isinstance(value, bool) or type(value).__name__ in ("bool", "bool_"):  # numpy 2 names its bool `bool`
        return "a true/false value"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes"
    if isinstance(value, (dt.date, dt.time, dt.timedelta)) or type(value).__name__ in ("datetime64", "timedelta64"):
        return "a date or time"
    if isinstance(value, Number):
        return "a number"
    if isinstance(value, Mapping):
        return "a mapping (JSON object)"
    if isinstance(value, (list, tuple, set, frozenset)) or type(value).__name__ == "ndarray":
        return "a list"
    return f"a {type(value).__name__} value"


def clean_cell(value: object) -> tuple[str, int]:
    """Cell -> (text, control characters removed): NaN/None -> '', controls removed, whitespace trimmed,
    one pair of wrapping quotes removed. A non-text value is turned into text here; callers that care
    check `kind_of` first."""
    if is_missing(value):
        return "", 0
    text, removed = strip_controls(str(value))
    text = text.strip()
    if len(text) >= 2 and QUOTE_PAIRS.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text, removed


def clean_text(value: object) -> str:
    """Cell -> text by the rules of `clean_cell`."""
    return clean_cell(value)[0]


NAME_PUNCTUATION = " -'"
MAX_NAME = 48


def name_problem(text: str) -> str | None:
    """None if `text` looks like a dialect name (letters incl. Arabic, spaces, hyphens); else what is wrong."""
    if len(text) > MAX_NAME:
        return f"it is {len(text)} characters long (a name has at most {MAX_NAME})"
    if not any(ch.isalpha() for ch in text):
        return "it has no letters"
    for ch in text:
        if ch.isalpha() or ch in NAME_PUNCTUATION or unicodedata.category(ch).startswith("M"):
            continue
        what = "a digit" if ch.isdigit() else "a line break or tab" if ch in "\n\t" else "punctuation or a symbol"
        return f"it contains {what}"
    return None


# A column or sheet name is shown in a message only if it looks like a name: letters, digits, spaces and
# a little punctuation, cut at 40 characters (the longest published header). Anything else stays unshown.
PLAIN_NAME = re.compile(r"[^\W_][\w .,&'()\-]*")
SHOWN_CHARS = 40


def plain_names(names: object, limit: int = 16) -> tuple[list[str], int]:
    """Names fit to print (at most `limit`, each cut short) and how many others were left out."""
    items = [str(n).strip() for n in names]  # type: ignore[attr-defined]
    shown = [n if len(n) <= SHOWN_CHARS else n[: SHOWN_CHARS - 1] + "…" for n in items if PLAIN_NAME.fullmatch(n)]
    return shown[:limit], len(items) - len(shown[:limit])


def describe_names(names: object) -> str:
    """ "['Dialect', 'English Text']", with "and N more not shown" for names that do not look like names."""
    shown, hidden = plain_names(names)
    return repr(shown) + (f" and {hidden} more not shown (not plain names)" if hidden else "")

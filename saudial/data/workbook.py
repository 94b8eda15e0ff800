"""The SauDial workbook as published -> clean translation rows.

The loader takes the published file unchanged (the quirks are listed in `devtools/synthetic.py`): it
finds the columns by their published headers, strips the literal quotes around English and dialect
cells, treats the one empty context as "no context", and keeps exact duplicates once and alternative
translations all. The columns it reads must hold text: a number, bytes, a list or a date there is
refused with the column and first row named (other columns, e.g. the integer Localization Difficulty,
are never read); a dialect must look like a name. `read_table` reads any supported file: the bytes
(`files.py`), then the format's reader (`formats.py`); one cell is `text.py`; the split is `examples.split`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import pandas as pd

from saudial.data import files, formats
from saudial.data.files import DATA_SETTING, DEFAULT_MAX_MB, read_bytes
from saudial.data.messages import is_conversations
from saudial.data.text import SYNTHETIC_MARK, clean_cell, describe_names, kind_of, name_problem, strip_controls
from saudial.errors import ConfigError, DataError

if TYPE_CHECKING:
    from saudial.config.settings import Settings

log = logging.getLogger(__name__)

# Canonical column -> the published header. Matching forgives case and surrounding spaces.
REQUIRED_COLUMNS = {
    "dialect": "Dialect",
    "english": "English Text",
    "translation": "Dialect Translation",
}
OPTIONAL_COLUMNS = {
    "context": "In-Game Context",
    "msa": "Modern Standard Arabic (MSA) Translation",
}


def is_synthetic(frame: pd.DataFrame) -> bool:
    """Whether every row of the file as read carries devtools/synthetic.py's mark in its Scenario column."""
    column = next((c for c in frame.columns if header_key(c) == "scenario"), None)
    return (
        column is not None and len(frame) > 0 and bool(frame[column].astype(str).str.startswith(SYNTHETIC_MARK).all())
    )


@dataclass(frozen=True)
class Table:
    """A data file as read: its cells (index: the row or line number the user sees), and where it came from."""

    frame: pd.DataFrame
    shown: str  # how messages name the file: the path the user gave, escaped (never where a symlink points)
    sha256: str  # of exactly the bytes parsed
    row_word: str  # "row" (a spreadsheet row, counting the header) or "line" (of a JSONL file)
    suffix: str


# How to store a cell as text, per format (a CSV holds nothing but text).
TEXT_HINT = {
    ".xlsx": "format the column as Text in Excel and type it again",
    ".xlsm": "format the column as Text in Excel and type it again",
    ".jsonl": "write it as a JSON string, in quotes",
    ".parquet": "write the column as strings",
}


def read_table(
    path: Path, sheet_name: str | None = None, max_mb: int = DEFAULT_MAX_MB, setting: str = DATA_SETTING
) -> Table:
    """Read any supported file as it is; `setting` is what the user set to name it (for the messages)."""
    data, shown = read_bytes(path, max_mb, setting)
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xlsm"):
        frame = formats.read_excel(data, shown, sheet_name, max_mb * files.MB)
    elif sheet_name is not None:
        raise DataError(f"SAUDIAL_SHEET_NAME={sheet_name!r} applies to Excel files only, not {shown}: unset it")
    elif suffix == ".csv":
        frame = formats.read_csv(data, shown)
    elif suffix == ".jsonl":
        frame = formats.read_jsonl(data, shown)
    else:
        frame = formats.read_parquet(data, shown, max_mb * files.MB)
    return Table(frame, shown, hashlib.sha256(data).hexdigest(), "line" if suffix == ".jsonl" else "row", suffix)


def holds_conversations(table: Table) -> bool:
    """A .jsonl/.parquet file of conversations (TRL's `messages`, or `prompt`/`completion` message lists)?"""
    first = table.frame.iloc[0].to_dict() if len(table.frame) else None
    return table.suffix in (".jsonl", ".parquet") and is_conversations(table.frame.columns, first)


class Row(NamedTuple):
    """One cleaned example; `context` and `msa` are "" where the file has none."""

    dialect: str
    english: str
    translation: str
    context: str
    msa: str


def iter_rows(rows: pd.DataFrame) -> list[Row]:
    """The cleaned rows as typed tuples (columns as `load` leaves them)."""
    return [Row(*map(str, values)) for values in rows[list(Row._fields)].itertuples(index=False, name=None)]


@dataclass
class Dataset:
    """Cleaned rows (columns dialect, english, translation, context, msa) and what cleaning did."""

    rows: pd.DataFrame
    path: Path
    sha256: str
    rows_read: int
    dropped_empty: int
    duplicates_removed: int
    dialect_filter: list[str] | None = None
    control_chars_removed: int = 0  # invisible control characters stripped from the cells (text.CONTROL)
    synthetic: bool = False  # written by saudial.devtools.synthetic (the bundled sample): not SauDial (`is_synthetic`)
    task: ClassVar[str] = "translate"  # the SAUDIAL_TASK this data is for (conversations.ChatData: "chat")


def header_key(column: object) -> str:
    """How a header is matched: case, surrounding spaces and invisible control characters forgiven."""
    return strip_controls(str(column))[0].strip().casefold()


def find_column(frame: pd.DataFrame, header: str, shown: str) -> pd.Series | None:
    """The column whose header reads as `header` (see `header_key`), None if there is none; two is an error."""
    keys = [header_key(col) for col in frame.columns]
    if keys.count(header.casefold()) > 1:
        raise DataError(f"{shown} has more than one {header!r} column: keep one, or rename the others")
    return frame.iloc[:, keys.index(header.casefold())] if header.casefold() in keys else None


def _match_columns(frame: pd.DataFrame, shown: str) -> pd.DataFrame:
    """The published columns under canonical names, forgiving case, surrounding spaces and controls."""
    columns, missing = {}, []
    for canonical, header in (REQUIRED_COLUMNS | OPTIONAL_COLUMNS).items():
        found = find_column(frame, header, shown)
        if found is not None:
            columns[canonical] = found
        elif canonical in REQUIRED_COLUMNS:
            missing.append(header)
    if missing:
        raise DataError(
            f"{shown} lacks column(s) {missing}: expected {list(REQUIRED_COLUMNS.values())} "
            f"(plus optional {list(OPTIONAL_COLUMNS.values())}), found {describe_names(frame.columns)}"
        )
    matched = pd.DataFrame(columns, index=frame.index)
    for canonical in OPTIONAL_COLUMNS:
        if canonical not in matched.columns:
            matched[canonical] = None
    return matched[list(REQUIRED_COLUMNS) + list(OPTIONAL_COLUMNS)]


def chosen_dialects(dialects: list[str], present: set[str], shown: str) -> set[str]:
    """SAUDIAL_DIALECTS matched to the names in the file, case-insensitively ('najdi' -> 'Najdi')."""
    by_key = {d.casefold(): d for d in sorted(present) if d}
    unknown = [d for d in dialects if d.casefold() not in by_key]
    if unknown:
        names = ", ".join(sorted(by_key.values())) or "none"
        raise DataError(f"SAUDIAL_DIALECTS names {unknown}, not in {shown} (its dialects: {names})")
    return {by_key[d.casefold()] for d in dialects}


def load_configured(settings: Settings) -> Dataset:
    """The data file the settings name (SAUDIAL_DATA), loaded; the one place a missing setting is caught."""
    if settings.data is None:
        raise ConfigError("no data file: set SAUDIAL_DATA (or --data) to the SauDial .xlsx, .csv, .jsonl or .parquet")
    return load(settings.data, settings.sheet_name, settings.dialects, settings.max_data_file_mb)


def check_text(table: Table, frame: pd.DataFrame, headers: dict[str, str]) -> None:
    """Every cell of these columns (canonical name -> header as shown) is text or empty, else a DataError."""
    for column, header in headers.items():
        for number, value in frame[column].items():
            kind = kind_of(value)
            if kind is not None:
                raise DataError(
                    f"{table.shown} {table.row_word} {number}: the {header} cell is {kind}, not text: "
                    f"{TEXT_HINT.get(table.suffix, 'store it as text')}, or empty the cell"
                )


def clean_columns(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Every cell through `text.clean_cell`; the number of control characters removed in all."""
    removed = 0
    for column in frame.columns:
        cells = [clean_cell(v) for v in frame[column]]
        frame[column] = [text for text, _ in cells]
        removed += sum(n for _, n in cells)
    return frame, removed


def check_dialects(table: Table, dialects: pd.Series) -> None:
    """Each non-empty dialect looks like a name; the message names the row and what is wrong, not the value."""
    for number, dialect in dialects.items():
        problem = name_problem(dialect) if dialect else None
        if problem:
            raise DataError(
                f"{table.shown} {table.row_word} {number}: the Dialect value is not a dialect name ({problem}; "
                "a name has letters, spaces and hyphens): fix the cell"
            )


def load(
    path: Path,
    sheet_name: str | None = None,
    dialects: list[str] | None = None,
    max_mb: int = DEFAULT_MAX_MB,
) -> Dataset:
    """Read, normalise and de-duplicate the data; filter dialects. Raises DataError on bad input."""
    return from_table(read_table(path, sheet_name, max_mb, setting=DATA_SETTING), path, dialects)


def from_table(table: Table, path: Path, dialects: list[str] | None = None) -> Dataset:
    """The translation rows of a file as read (`read_table`): cleaned, de-duplicated, dialects filtered."""
    try:
        frame = _match_columns(table.frame, table.shown)
    except DataError:
        if holds_conversations(table):
            raise DataError(
                f"{table.shown} holds conversations (TRL's 'messages' format), not translation rows: set "
                "SAUDIAL_TASK=chat (or auto) to train a chat adapter on them"
            ) from None
        raise
    rows_read = len(frame)
    check_text(table, frame, REQUIRED_COLUMNS | OPTIONAL_COLUMNS)
    frame, control_chars = clean_columns(frame)
    if control_chars:
        log.warning(
            "removed %d invisible control character(s) (NUL, bidi, zero-width, ...) from the cells", control_chars
        )
    check_dialects(table, frame["dialect"])

    empty = (frame["english"] == "") | (frame["translation"] == "") | (frame["dialect"] == "")
    dropped = int(empty.sum())
    frame = frame[~empty]
    if dropped:
        log.warning("dropped %d row(s) with an empty dialect, English text or translation", dropped)

    if dialects:
        frame = frame[frame["dialect"].isin(chosen_dialects(dialects, set(frame["dialect"]), table.shown))]

    key = ["dialect", "english", "translation", "context"]
    duplicated = frame.duplicated(subset=key, keep="first")
    duplicates = int(duplicated.sum())
    frame = frame[~duplicated].reset_index(drop=True)
    if frame.empty:
        raise DataError(
            f"{table.shown} has no usable rows (read {rows_read}, {dropped} without English text or translation): "
            "check that it is the SauDial file and that the dialect filter matches"
        )
    return Dataset(
        rows=frame,
        path=path,
        sha256=table.sha256,
        rows_read=rows_read,
        dropped_empty=dropped,
        duplicates_removed=duplicates,
        dialect_filter=dialects,
        control_chars_removed=control_chars,
        synthetic=is_synthetic(table.frame),
    )

"""The SauDial workbook as published -> clean translation rows.

The loader takes the published file unchanged (the quirks are listed in `devtools/synthetic.py`): it
finds the columns by their published headers, strips the literal quotes around English and dialect
cells, treats the one empty context as "no context", and keeps exact duplicates once and alternative
translations all. Reading the file itself is `files.py`; the split is `split.py`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pandas as pd

from saudial.data.files import read_table, sha256_of
from saudial.data.text import clean_text
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


def _match_columns(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Rename the published headers to canonical names, forgiving case and surrounding spaces."""
    by_key = {str(col).strip().casefold(): col for col in frame.columns}
    renames, missing = {}, []
    for canonical, header in (REQUIRED_COLUMNS | OPTIONAL_COLUMNS).items():
        found = by_key.get(header.casefold())
        if found is not None:
            renames[found] = canonical
        elif canonical in REQUIRED_COLUMNS:
            missing.append(header)
    if missing:
        raise DataError(
            f"{path.name} lacks column(s) {missing}: expected {list(REQUIRED_COLUMNS.values())} "
            f"(plus optional {list(OPTIONAL_COLUMNS.values())}), found {[str(c) for c in frame.columns]}"
        )
    frame = frame.rename(columns=renames)
    for canonical in OPTIONAL_COLUMNS:
        if canonical not in frame.columns:
            frame[canonical] = None
    return frame[list(REQUIRED_COLUMNS) + list(OPTIONAL_COLUMNS)]


def load_configured(settings: Settings) -> Dataset:
    """The data file the settings name (SAUDIAL_DATA), loaded; the one place a missing setting is caught."""
    if settings.data is None:
        raise ConfigError("no data file: set SAUDIAL_DATA (or --data) to the SauDial .xlsx, .csv, .jsonl or .parquet")
    return load(settings.data, settings.sheet_name, settings.dialects)


def load(path: Path, sheet_name: str | None = None, dialects: list[str] | None = None) -> Dataset:
    """Read, normalise and de-duplicate the data; filter dialects. Raises DataError on bad input."""
    raw = read_table(path, sheet_name)
    frame = _match_columns(raw, path)
    rows_read = len(frame)
    for column in frame.columns:
        frame[column] = [clean_text(v) for v in frame[column]]

    empty = (frame["english"] == "") | (frame["translation"] == "") | (frame["dialect"] == "")
    dropped = int(empty.sum())
    frame = frame[~empty]
    if dropped:
        log.warning("dropped %d row(s) with an empty dialect, English text or translation", dropped)

    # Dialect names as in the file, matched case-insensitively (e.g. 'najdi' -> 'Najdi').
    present = sorted(set(frame["dialect"]))
    if dialects:
        by_key = {d.casefold(): d for d in present}
        unknown = [d for d in dialects if d.casefold() not in by_key]
        if unknown:
            raise DataError(
                f"SAUDIAL_DIALECTS names {unknown}, not in {path.name} (its dialects: {', '.join(present)})"
            )
        wanted = {by_key[d.casefold()] for d in dialects}
        frame = frame[frame["dialect"].isin(wanted)]

    key = ["dialect", "english", "translation", "context"]
    duplicated = frame.duplicated(subset=key, keep="first")
    duplicates = int(duplicated.sum())
    frame = frame[~duplicated].reset_index(drop=True)
    if frame.empty:
        raise DataError(
            f"{path} has no usable rows (read {rows_read}, {dropped} without English text or translation): "
            "check that it is the SauDial file and that the dialect filter matches"
        )
    return Dataset(
        rows=frame,
        path=path,
        sha256=sha256_of(path),
        rows_read=rows_read,
        dropped_empty=dropped,
        duplicates_removed=duplicates,
        dialect_filter=dialects,
    )

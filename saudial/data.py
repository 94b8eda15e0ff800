"""Read the SauDial workbook as published, clean it, and split it into train and eval.

The loader takes the published file unchanged (see the quirks listed in `synthetic.py`): it strips
the literal quotes around English and dialect cells, treats the one empty context as "no context",
keeps exact duplicates once and alternative translations all, and never lets one English sentence
land on both sides of the split.
"""

from __future__ import annotations

import hashlib
import logging
import random
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from saudial.errors import DataError

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
DEFAULT_SHEET = "SADGLD"
SUFFIXES = (".xlsx", ".xlsm", ".csv", ".jsonl", ".parquet")
QUOTE_PAIRS = {'"': '"', "\u201c": "\u201d", "\u00ab": "\u00bb"}  # "...", “...”, «...»


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


@dataclass
class Split:
    train: pd.DataFrame
    eval: pd.DataFrame
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # dialect -> {"train": n, "eval": n}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_table(path: Path, sheet_name: str | None = None) -> pd.DataFrame:
    """Read any supported file as strings; errors name the file and what to do."""
    if not path.exists():
        raise DataError(f"data file not found: {path} (set SAUDIAL_DATA / --data to an existing file)")
    if path.is_dir():
        raise DataError(f"data path is a directory, not a file: {path} (point SAUDIAL_DATA at the .xlsx file)")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"unsupported data file type {suffix!r}: {path} (use one of {', '.join(SUFFIXES)})")
    try:
        if suffix in (".xlsx", ".xlsm"):
            return _read_excel(path, sheet_name)
        if sheet_name is not None:
            raise DataError(f"SAUDIAL_SHEET_NAME={sheet_name!r} applies to Excel files only, not {path.name}")
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=True)
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        return pd.read_parquet(path)
    except DataError:
        raise
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read {path} as {suffix}: {first_line} (is the file complete and valid?)") from None


def _read_excel(path: Path, sheet_name: str | None) -> pd.DataFrame:
    # An .xlsx file is a zip archive; say so plainly when a CSV or HTML page was saved under that name.
    if not zipfile.is_zipfile(path):
        with path.open("rb") as handle:
            head = handle.read(16)
        raise DataError(
            f"{path} is not an Excel workbook (an .xlsx file is a zip archive; this one starts with {head!r}): "
            "download the original file again, or give CSV data a .csv name"
        )
    try:
        with pd.ExcelFile(path, engine="openpyxl") as book:
            sheets = [str(name) for name in book.sheet_names]
            if sheet_name is None:
                sheet_name = DEFAULT_SHEET if DEFAULT_SHEET in sheets else sheets[0]
            elif sheet_name not in sheets:
                raise DataError(
                    f"SAUDIAL_SHEET_NAME={sheet_name!r} is not a sheet of {path.name} "
                    f"(sheets: {', '.join(sheets)}): fix the name or unset it"
                )
            frame = book.parse(sheet_name)
            assert isinstance(frame, pd.DataFrame)  # one sheet name in, one frame out
            return frame
    except (zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"{path} is a corrupt Excel workbook ({exc}): download the original file again") from None


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


def clean_text(value: object) -> str:
    """Cell -> text: NaN/None -> '', whitespace trimmed, one pair of wrapping quotes removed."""
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return ""
    text = str(value).strip()
    if len(text) >= 2 and QUOTE_PAIRS.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text


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


def split(rows: pd.DataFrame, eval_size: float, seed: int) -> Split:
    """Deterministic, dialect-stratified split that keeps each English text on one side.

    Rows sharing an English text (the same sentence in several dialects, or alternative
    translations) form one group; groups are visited in a seeded order and go to eval while no
    dialect would exceed its share. So eval never scores a sentence the model trained on.
    """
    if eval_size <= 0:
        return Split(train=rows.reset_index(drop=True), eval=rows.iloc[0:0], counts=_counts(rows, rows.iloc[0:0]))
    groups: dict[str, list[int]] = defaultdict(list)
    for index, english in zip(rows.index, rows["english"], strict=True):
        groups[english.casefold()].append(index)
    order = sorted(groups)
    random.Random(seed).shuffle(order)

    totals = Counter(rows["dialect"])
    target = {d: max(1, round(n * eval_size)) if n >= 2 else 0 for d, n in totals.items()}
    taken: Counter[str] = Counter()
    eval_index: list[int] = []
    for key in order:
        members = groups[key]
        need = Counter(rows.loc[members, "dialect"])
        if all(taken[d] + n <= target[d] for d, n in need.items()):
            eval_index += members
            taken.update(need)
    eval_rows = rows.loc[sorted(eval_index)].reset_index(drop=True)
    train_rows = rows.drop(index=eval_index).reset_index(drop=True)
    return Split(train=train_rows, eval=eval_rows, counts=_counts(train_rows, eval_rows))


def _counts(train: pd.DataFrame, eval_rows: pd.DataFrame) -> dict[str, dict[str, int]]:
    dialects = sorted(set(train["dialect"]) | set(eval_rows["dialect"]))
    train_counts, eval_counts = Counter(train["dialect"]), Counter(eval_rows["dialect"])
    return {d: {"train": train_counts[d], "eval": eval_counts[d]} for d in dialects}

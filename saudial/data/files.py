"""Reading a data file into a table of strings: which formats, and what a bad file says.

`.xlsx` as published (and `.xlsm`), `.csv`, `.jsonl`, `.parquet`. Every failure is a `DataError` that
names the file and what to do; `sha256_of` identifies the exact file a run trained on.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pandas as pd

from saudial.errors import DataError

DEFAULT_SHEET = "SADGLD"
SUFFIXES = (".xlsx", ".xlsm", ".csv", ".jsonl", ".parquet")


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

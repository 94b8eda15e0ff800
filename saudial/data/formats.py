"""The bytes of a data file -> a table of its cells, one reader per format, each failure one DataError.

The readers are pandas', openpyxl's and pyarrow's, fed bytes that may be anything: whatever they raise
on those bytes is a property of the file, so each call is wrapped whole and its failure described by
kind and position (line, part), never by the library's message, which can quote the file. The frame's
index is the row number the user sees: the spreadsheet row (the header is row 1), the JSONL line, the
Parquet row.

An .xlsx is checked before openpyxl parses it: the unpacked size of its parts (a zip bomb), their
compression ratios and their checksums; then the extent of the sheet as its rows are read (a tiny file can
declare a cell at row 1,048,576, column XFD, which pandas would pad into billions of cells). That one pass
keeps the cells as `pd.read_excel` reads them, and pandas' TextParser makes the frame from them, as
`pd.read_excel` does after reading the sheet itself.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
import zipfile
from typing import Any

import pandas as pd

from saudial.config.settings import env_name
from saudial.data.text import describe_names
from saudial.errors import DataError

CAP_SETTING = env_name("max_data_file_mb")

DEFAULT_SHEET = "SADGLD"
EXCEL_MAX_ROWS = 1_048_576  # Excel's own limit: a sheet claiming more rows was not made by a spreadsheet
MAX_RATIO = 200  # a real workbook's XML packs 5-30x; a part that unpacks 200x (and over 1 MB) is a bomb
RATIO_FLOOR = 1 << 20
BYTES_PER_CELL = 8  # the cells of a sheet are bounded by the unpacked-size cap: at most cap / 8 of them


def reason(exc: BaseException) -> str:
    """What went wrong, in words that quote nothing from the file."""
    line = getattr(exc, "lineno", None) or (getattr(exc, "position", None) or (None,))[0]
    name = type(exc).__name__
    if name in ("ParseError", "XMLSyntaxError", "ExpatError"):
        return f"broken XML{f' at line {line}' if line else ''}"
    if isinstance(exc, (zipfile.BadZipFile, EOFError)) or name == "error":  # zlib.error is named `error`
        return "a damaged compressed part"
    if isinstance(exc, KeyError):
        return "a part it needs is missing"
    if isinstance(exc, MemoryError):
        return "it needs more memory than this machine has"
    if isinstance(exc, RecursionError):
        return "it is nested too deeply"
    return f"the reader failed with {name}"


def read_excel(data: bytes, shown: str, sheet_name: str | None, max_bytes: int) -> pd.DataFrame:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise DataError(
            f"{shown} is not an Excel workbook (an .xlsx file is a zip archive; this one {_looks_like(data)}): "
            "download the original file again, or give CSV data a .csv name"
        )
    _check_zip(data, shown, max_bytes)
    with warnings.catch_warnings():
        # openpyxl warns about workbook features it drops on reading (data validation, conditional formats,
        # odd styles): none of them changes a cell's text, and each would add lines to the run's output.
        warnings.filterwarnings("ignore", category=UserWarning, module="openpyxl")
        return _parse_workbook(data, shown, sheet_name, max_bytes)


def _parse_workbook(data: bytes, shown: str, sheet_name: str | None, max_bytes: int) -> pd.DataFrame:
    from openpyxl import load_workbook

    try:
        book = load_workbook(io.BytesIO(data), read_only=True, data_only=True, keep_links=False)
    except Exception as exc:  # openpyxl on untrusted bytes (see the module docstring)
        raise corrupt(shown, exc) from None
    try:
        sheets = [str(name) for name in book.sheetnames]
        if not sheets:
            raise DataError(f"{shown} has no sheets: download the original file again or re-save it in Excel")
        if sheet_name is None:
            sheet_name = DEFAULT_SHEET if DEFAULT_SHEET in sheets else sheets[0]
        elif sheet_name not in sheets:
            names = describe_names(sheets).strip("[]").replace("'", "")
            raise DataError(
                f"SAUDIAL_SHEET_NAME={sheet_name!r} is not a sheet of {shown} (sheets: {names}): "
                "fix the name or unset it"
            )
        try:
            cells, rows = _sheet_cells(book[sheet_name], shown, max_bytes // BYTES_PER_CELL)
            frame = _frame(cells)
        except DataError:
            raise
        except Exception as exc:  # as above
            raise corrupt(shown, exc) from None
    finally:
        book.close()
    # Number the rows by their place in the sheet: blank rows before the last one with data are kept (all
    # missing), so the frame's rows follow the sheet's from row 2, unless blank rows came before the header.
    frame.index = pd.Index(rows[1:] if len(rows) == len(frame) + 1 else range(2, len(frame) + 2))
    return frame


def unpacks_too_big(shown: str, size: int, max_bytes: int) -> DataError:
    return DataError(
        f"{shown} unpacks to {size / (1 << 20):,.0f} MB, over {CAP_SETTING}={max_bytes >> 20}: check that it is "
        f"the right file, or raise {CAP_SETTING}"
    )


def corrupt(shown: str, exc: BaseException) -> DataError:
    return DataError(
        f"{shown} is a corrupt Excel workbook ({reason(exc)}): download the original file again or re-save it in Excel"
    )


def _looks_like(data: bytes) -> str:
    head = data[:512].lstrip().lower()
    if not data:
        return "is empty"
    if data.startswith(b"\xd0\xcf\x11\xe0"):
        return "is an Excel 97-2003 .xls or a password-protected workbook: save it as .xlsx without a password"
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "looks like an HTML page, e.g. a sign-in page saved instead of the file"
    if data.startswith(b"PK"):
        return "starts like a zip archive but is cut short or damaged"
    try:
        data[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return "is binary data of another kind"
    return "looks like plain text"


def _check_zip(data: bytes, shown: str, max_bytes: int) -> None:
    """The zip's directory and every part's checksum, before any XML is parsed."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            parts = archive.infolist()
            unpacked = sum(part.file_size for part in parts)
            if unpacked > max_bytes:
                raise unpacks_too_big(shown, unpacked, max_bytes)
            for part in parts:
                if part.file_size > RATIO_FLOOR and part.file_size > MAX_RATIO * max(part.compress_size, 1):
                    raise DataError(
                        f"{shown} has a part that unpacks {part.file_size // max(part.compress_size, 1):,}x "
                        f"(over {MAX_RATIO}x): it is not a normal workbook; re-save it in Excel"
                    )
            for part in parts:  # read each part once: its size is bounded by the directory checked above
                with archive.open(part) as stream:
                    while stream.read(1 << 20):
                        pass
    except DataError:
        raise
    except RuntimeError:  # zipfile: "File ... is encrypted, password required"
        raise DataError(f"{shown} has encrypted parts: save it again without a password") from None
    except Exception as exc:  # zipfile/zlib on untrusted bytes
        raise corrupt(shown, exc) from None


def _sheet_cells(sheet: Any, shown: str, max_cells: int) -> tuple[list[list[Any]], list[int]]:
    """The sheet's cells as `pd.read_excel(engine="openpyxl")` reads them (pandas' `get_sheet_data`), and the rows
    that hold something (the first is the header), in one pass that refuses a sheet too big to read. pandas' own
    call would read the sheet again: half of a large workbook's reading time. tests/test_data.py checks the
    frames against pandas' own."""
    sheet.reset_dimensions()  # as pandas does: the declared dimensions may be wrong
    data: list[list[Any]] = []
    rows: list[int] = []
    width = 0
    for number, row in enumerate(sheet.rows, 1):
        if number > EXCEL_MAX_ROWS:
            raise DataError(f"{shown} has a sheet with rows past Excel's {EXCEL_MAX_ROWS:,}: re-save it in Excel")
        values = [_cell_value(cell) for cell in row]
        while values and values[-1] == "":
            values.pop()
        data.append(values)
        if values:
            rows.append(number)
            width = max(width, len(values))
            if number * width > max_cells:
                raise DataError(
                    f"{shown} has a sheet spanning {number:,} rows x {width:,} columns, over what "
                    f"{CAP_SETTING} allows: check that it is the right file, or raise {CAP_SETTING}"
                )
    del data[rows[-1] if rows else 0 :]  # trailing empty rows; the others padded to one width
    return [values + [""] * (width - len(values)) for values in data], rows


def _cell_value(cell: Any) -> Any:
    """A cell's value as pandas' openpyxl reader gives it (`_convert_cell`): "" for none, NaN for an error
    (#REF!, ...), an int for a whole number."""
    if cell.value is None or cell.data_type == "e":
        return "" if cell.value is None else float("nan")
    if cell.data_type == "n":
        return int(cell.value) if int(cell.value) == cell.value else float(cell.value)
    return cell.value


def _frame(cells: list[list[Any]]) -> pd.DataFrame:
    """The rows as a frame, as `pd.read_excel` makes one (the header row first; blank rows kept)."""
    from pandas.io.parsers import TextParser  # type: ignore[attr-defined]  # pandas exports it; its stubs do not

    try:
        return TextParser(cells, header=0, skip_blank_lines=False).read()
    except pd.errors.EmptyDataError:  # no cells
        return pd.DataFrame()


def decode(data: bytes, shown: str, kind: str) -> str:
    """UTF-8 text (a BOM is fine); anything else says where the first bad byte is."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{shown} is not UTF-8 text (first bad byte on line {line}): save it as {kind} in UTF-8 "
            "(Excel: 'CSV UTF-8')"
        ) from None


def read_csv(data: bytes, shown: str) -> pd.DataFrame:
    text = decode(data, shown, "CSV")
    _check_csv(text, shown)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=True, index_col=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{shown} is empty: it needs a header row and data rows") from None
    except Exception as exc:  # pandas' parser on untrusted text
        raise DataError(f"cannot read {shown} as CSV ({reason(exc)}): {CSV_FIX}") from None
    frame.index = pd.Index(range(2, len(frame) + 2))
    return frame


CSV_FIX = "check its quotes and that no row has more fields than the header"


def _check_csv(text: str, shown: str) -> None:
    """Quoting and field counts, by the standard csv module, which knows the line of a bad row. pandas
    itself would take a row with more fields than the header as an index column and shift its cells."""
    csv.field_size_limit(max(len(text), 131_072))  # one cell may be long; the file is within the cap already
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next((row for row in reader if row), None)
        if header is None:
            raise DataError(f"{shown} is empty: it needs a header row and data rows")
        for row in reader:
            if len(row) > len(header):
                raise DataError(
                    f"cannot read {shown} as CSV: line {reader.line_num} has {len(row)} fields, the header "
                    f"{len(header)}: {CSV_FIX}"
                )
    except csv.Error:
        raise DataError(f"cannot read {shown} as CSV: bad quoting at line {reader.line_num}: {CSV_FIX}") from None


def read_jsonl(data: bytes, shown: str) -> pd.DataFrame:
    """One JSON object per line, read line by line so that a bad one is named."""
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    for number, line in enumerate(decode(data, shown, "JSON lines").split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, too many digits, nesting
            column = getattr(exc, "colno", None)
            raise DataError(
                f"{shown} line {number} is not valid JSON{f' (column {column})' if column else ''}: "
                "each line must be one JSON object"
            ) from None
        if not isinstance(record, dict):
            raise DataError(f"{shown} line {number} is not a JSON object: each line must be one {{...}} record")
        records.append(record)
        lines.append(number)
    if not records:
        raise DataError(f"{shown} has no JSON lines: it needs one JSON object per line")
    frame = pd.DataFrame.from_records(records)
    frame.index = pd.Index(lines)
    return frame


def read_parquet(data: bytes, shown: str, max_bytes: int) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        meta = parquet.metadata
        unpacked = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        if unpacked > max_bytes:
            raise unpacks_too_big(shown, unpacked, max_bytes)
        frame = parquet.read().to_pandas()
    except DataError:
        raise
    except Exception as exc:  # pyarrow on untrusted bytes
        raise DataError(
            f"{shown} is not a readable Parquet file ({reason(exc)}): write it again, e.g. with "
            "pandas.DataFrame.to_parquet"
        ) from None
    frame.index = pd.Index(range(1, len(frame) + 1))
    return frame

"""A command's results written next to its input: the output file's name and folder checked before any model
loads, the input's table with the results in a new column, in the input's format, never over an existing file
(`saudial translate` and `saudial chat`).

Spreadsheet outputs (.xlsx, .csv) escape every text cell that a spreadsheet would run as a formula (OWASP's
CSV-injection rule): the model's output and the input's cells are untrusted text. JSONL and Parquet keep the text
as it is.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from pathlib import Path
from typing import Any

import pandas as pd

from saudial.data.files import SUFFIXES
from saudial.data.text import is_missing, strip_controls
from saudial.errors import ConfigError, check_writable
from saudial.rundir.staging import check_can_be_directory

log = logging.getLogger(__name__)

# OWASP: a cell starting with one of these is read as a formula by spreadsheet programs; a leading
# apostrophe makes it text. https://owasp.org/www-community/attacks/CSV_Injection
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def output_path_for(input_path: Path, output: Path | None) -> Path:
    """`name.translated.ext` next to the input, unless given; an existing file is never overwritten."""
    if input_path.suffix.lower() not in SUFFIXES:  # before a name is made from it
        kinds = f"{', '.join(SUFFIXES[:-1])} or {SUFFIXES[-1]}"
        raise ConfigError(f"--input {str(input_path)!r} has an unsupported type: give a {kinds} file")
    target = output or input_path.with_name(f"{input_path.stem}.translated{input_path.suffix}")
    if target.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"--output {target} has an unsupported type: name it .xlsx, .csv, .jsonl or .parquet")
    if os.path.lexists(target):  # a dangling symlink too: it would be followed
        raise ConfigError(f"{target} already exists: remove it or choose another file with --output")
    if target.resolve() == input_path.resolve():
        raise ConfigError("--output must differ from --input")
    return target


def check_output_folder(target: Path) -> None:
    """--output's folder: one that cannot be a folder is exit 2; a missing one is created (as every output
    folder is) and a file written in it and removed (`check_writable`): one that cannot be written is exit 74."""
    check_can_be_directory(target.parent, "the folder of --output", "give --output a file in a folder")
    check_writable(target.parent)


def escape_formula(value: Any) -> Any:
    """'=1+1' -> "'=1+1" for text a spreadsheet would run; anything else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def _excel_value(value: Any) -> Any:
    """A cell for openpyxl: text escaped and without the control characters XML cannot hold."""
    if is_missing(value):
        return None
    if isinstance(value, bool | int | float) or (isinstance(value, numbers.Real) and hasattr(value, "item")):
        number = value.item() if hasattr(value, "item") else value
        return number if not isinstance(number, float) or math.isfinite(number) else str(number)
    text = value if isinstance(value, str) else str(value)
    kept = strip_controls(text)[0]  # XML cannot hold C0 controls; CR becomes LF
    return "'" + kept if text.startswith(FORMULA_START) or kept.startswith(FORMULA_START) else kept


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Write `frame` to a new file `path` (never an existing one) in the format its suffix names."""
    suffix = path.suffix.lower()
    with path.open("xb") as handle:  # "x": fails rather than replace a file (or follow a link) made meanwhile
        try:
            if suffix in (".xlsx", ".xlsm"):
                from openpyxl import Workbook

                book = Workbook(write_only=True)
                sheet = book.create_sheet("translations")
                sheet.append([_excel_value(str(c)) for c in frame.columns])
                for values in frame.itertuples(index=False, name=None):
                    sheet.append([_excel_value(v) for v in values])
                book.save(handle)
            elif suffix == ".csv":
                escaped = frame.rename(columns=lambda c: escape_formula(str(c)))
                escaped.map(escape_formula).to_csv(handle, index=False)
            elif suffix == ".jsonl":
                frame.to_json(handle, orient="records", lines=True, force_ascii=False)
            else:
                frame.to_parquet(handle, index=False)
        except BaseException:
            handle.close()
            path.unlink(missing_ok=True)  # the file this call created, half written
            raise


def deliver(
    results: list[str],
    frame: pd.DataFrame | None,
    column: str,
    target: Path | None,
    what: tuple[str, str, str],
    skipped: int = 0,
) -> None:
    """One result printed, or a file's results written in `column` of `frame` to `target`; empty ones said.
    `what`: the result's name, its plural, and what to train on for better ones; `skipped`: rows left empty
    because they had nothing to answer (said before)."""
    noun, plural, more_data = what
    if frame is None:
        print(results[0], flush=True)
    else:
        frame[column] = results
        assert target is not None
        write_table(frame, target)
        written = len(results) - skipped
        log.info("%d %s written to %s", written, noun if written == 1 else plural, target)
    if empty := sum(not text for text in results) - skipped:
        log.warning(
            "%s: the model wrote only whitespace or its end token. An untrained or barely trained adapter does this "
            "(make demo's tiny random model does): train longer, or on %s",
            f"the {noun} is empty" if frame is None else f"{empty} of {len(results) - skipped} {plural} are empty",
            more_data,
        )

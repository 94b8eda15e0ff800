"""`saudial translate`: English text or a whole file through a trained adapter.

One text is printed; a .csv/.xlsx/.jsonl/.parquet file with an 'English Text' column is translated row
by row and written next to it as NAME.translated.EXT (or to --output FILE), never over an existing file.
The output's folder is created where missing and written to once before any model is loaded: a folder
that cannot be written is exit 74 at once, not after the work.

The input file is read and checked (data/files.py, the cell rules of data/text.py) before the adapter
or any model is looked at, so a broken file fails in a second. Spreadsheet outputs (.xlsx, .csv) escape
every text cell that a spreadsheet would run as a formula (OWASP's CSV-injection rule): the model's
output and the input's cells are untrusted text. JSONL and Parquet keep the text as it is.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from saudial.config.settings import Settings
from saudial.data import workbook
from saudial.data.files import SUFFIXES
from saudial.data.text import describe_names, is_missing, name_problem, strip_controls
from saudial.data.workbook import read_table
from saudial.errors import ConfigError, DataError, check_writable, printable
from saudial.process.collector import long_lived_imports
from saudial.rundir.record import trained_task
from saudial.rundir.staging import check_can_be_directory

log = logging.getLogger(__name__)

TRANSLATION_COLUMN = "Model Translation"
# OWASP: a cell starting with one of these is read as a formula by spreadsheet programs; a leading
# apostrophe makes it text. https://owasp.org/www-community/attacks/CSV_Injection
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class InputRow(NamedTuple):
    """One row of an input file, cleaned: its number as the user sees it, and the texts it gives."""

    number: int
    english: str
    dialect: str
    context: str


def known_dialects(adapter_dir: Path) -> list[str]:
    """The dialects the adapter was trained on, from its manifest (empty when unknown)."""
    from saudial.rundir.record import MANIFEST, read_json

    manifest = read_json(adapter_dir / MANIFEST) or {}
    per_dialect = (manifest.get("data") or {}).get("per_dialect") or {}
    return sorted(per_dialect)


def resolve_dialect(dialect: str | None, known: list[str], where: str = "--dialect") -> str:
    if not dialect:
        raise ConfigError(
            f"{where} is required: one of {', '.join(known) or 'the dialects the adapter was trained on'}"
        )
    if not known:
        problem = name_problem(dialect.strip())
        if problem:
            raise ConfigError(f"{where} is not a dialect name ({problem}): use the name the adapter was trained on")
        return dialect.strip()
    by_key = {d.casefold(): d for d in known}
    if dialect.strip().casefold() not in by_key:
        shown = repr(dialect) if not name_problem(dialect.strip()) else "value"
        raise ConfigError(f"{where} {shown} is not a dialect this adapter was trained on ({', '.join(known)})")
    return by_key[dialect.strip().casefold()]


def text_or_file(command: str, argument: str, given: str | None, input_path: Path | None) -> None:
    """A command answers one ARGUMENT (printed) or every row of --input FILE: exactly one of the two."""
    if (given is None) == (input_path is None):
        raise ConfigError(f"{command} needs either {argument} argument or --input FILE (not both)")


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


def read_inputs(path: Path, max_mb: int) -> tuple[pd.DataFrame, list[InputRow]]:
    """Rows of a .csv/.xlsx/.jsonl/.parquet file: English text (required), dialect and context (optional)."""
    table = read_table(path, max_mb=max_mb, setting="--input")
    frame = table.frame
    headers = workbook.REQUIRED_COLUMNS | workbook.OPTIONAL_COLUMNS
    english = workbook.find_column(frame, headers["english"], table.shown)
    if english is None:
        english = workbook.find_column(frame, "english", table.shown)
    if english is None:
        raise DataError(
            f"{table.shown} has no '{headers['english']}' column "
            f"(found {describe_names(frame.columns)}): name the column of English text so"
        )
    columns = {"english": english}
    for name in ("dialect", "context"):
        found = workbook.find_column(frame, headers[name], table.shown)
        if found is not None:
            columns[name] = found
    used = pd.DataFrame(columns, index=frame.index)
    workbook.check_text(table, used, {name: headers[name] for name in columns})  # named as published
    used, removed = workbook.clean_columns(used)
    if removed:
        log.warning(
            "removed %d invisible control character(s) (NUL, bidi, zero-width, ...) from %s", removed, table.shown
        )
    if "dialect" in used:
        workbook.check_dialects(table, used["dialect"])
    rows = [
        InputRow(int(number), str(row.english), str(getattr(row, "dialect", "")), str(getattr(row, "context", "")))
        for number, row in zip(used.index, used.itertuples(index=False), strict=True)
    ]
    return frame, rows


def requests_for(
    rows: list[InputRow], dialect: str | None, context: str | None, known: list[str], row_word: str, shown: str
) -> list[tuple[str, str, str | None]]:
    """(dialect, English, context) of each row of the file `shown`: what generate.Request takes."""
    requests = []
    header = (workbook.REQUIRED_COLUMNS | workbook.OPTIONAL_COLUMNS)["dialect"]
    for row in rows:
        if not (dialect or row.dialect):
            choices = ", ".join(known) or "the dialects the adapter was trained on"
            raise ConfigError(
                f"{shown} {row_word} {row.number} has no dialect: pass --dialect (one of {choices}) for the whole "
                f"file, or give each row one in a '{header}' column"
            )
        # --dialect / --context win over the file's columns.
        resolved = resolve_dialect(dialect or row.dialect, known, where=f"{row_word} {row.number}: dialect")
        row_context = context if context is not None else row.context
        requests.append((resolved, row.english, row_context or None))
    return requests


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


class Asked(NamedTuple):
    """A checked `translate` or `chat`: what to generate, and where the results go (None: printed)."""

    requests: list[Any]  # (dialect, English, context) for translate; the messages of each prompt for chat
    frame: pd.DataFrame | None  # with --input: the file's table, the results go in a new column
    target: Path | None


def check_translate(
    settings: Settings,
    adapter_dir: Path,
    text: str | None,
    dialect: str | None,
    context: str | None,
    input_path: Path | None,
    output: Path | None = None,
) -> Asked:
    """Everything that can be wrong with the arguments, the adapter's record or the input file, said before
    torch and the model libraries are imported (they take seconds)."""
    text_or_file("translate", "an English TEXT", text, input_path)
    if trained_task(adapter_dir) == "chat":
        raise ConfigError(f"--adapter {adapter_dir} is a chat adapter (trained on conversations): use `saudial chat`")
    known = known_dialects(adapter_dir)
    if input_path is None:
        english = strip_controls(str(text))[0].strip()
        return Asked([(resolve_dialect(dialect, known), english, context or None)], None, None)
    target = output_path_for(input_path, output)  # the file first: a broken one fails before any model is looked at
    frame, rows = read_inputs(input_path, settings.max_data_file_mb)
    row_word = "line" if input_path.suffix.lower() == ".jsonl" else "row"
    requests = requests_for(rows, dialect, context, known, row_word, repr(printable(str(input_path))))
    check_output_folder(target)  # last: a command refused by any other check writes nothing
    return Asked(requests, frame, target)


def run_translate(
    settings: Settings,
    adapter_dir: Path,
    text: str | None,
    dialect: str | None,
    context: str | None,
    input_path: Path | None,
    output: Path | None = None,
    asked: Asked | None = None,
) -> list[str]:
    """`python -m saudial translate`: one text to stdout, or a whole file to `name.translated.ext`.
    `asked`: what `check_translate` returned for these arguments (checked here when not given)."""
    asked = asked or check_translate(settings, adapter_dir, text, dialect, context, input_path, output)
    with long_lived_imports():  # torch, transformers, PEFT (process/collector.py)
        from saudial.inference.generate import Request, load_for_inference, settings_for_adapter, translate

    settings = settings_for_adapter(settings, adapter_dir)
    model, tokenizer = load_for_inference(settings, adapter_dir)
    requests = [Request(*request) for request in asked.requests]
    results = translate(model, tokenizer, requests, settings, progress=asked.frame is not None)
    deliver(
        results, asked.frame, TRANSLATION_COLUMN, asked.target, ("translation", "translations", "the real SauDial data")
    )
    return results


def deliver(
    results: list[str], frame: pd.DataFrame | None, column: str, target: Path | None, what: tuple[str, str, str]
) -> None:
    """One result printed, or a file's results written in `column` of `frame` to `target`; empty ones said.
    `what`: the result's name, its plural, and what to train on for better ones."""
    noun, plural, more_data = what
    if frame is None:
        print(results[0], flush=True)
    else:
        frame[column] = results
        assert target is not None
        write_table(frame, target)
        log.info("%d %s written to %s", len(results), plural, target)
    if empty := sum(not text for text in results):
        log.warning(
            "%s: the model wrote only whitespace or its end token. An untrained or barely trained adapter does this "
            "(make demo's tiny random model does): train longer, or on %s",
            f"the {noun} is empty" if frame is None else f"{empty} of {len(results)} {plural} are empty",
            more_data,
        )

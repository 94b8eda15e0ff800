"""`saudial translate`: English text or a whole file through a trained adapter.

One text is printed; a .csv/.xlsx/.jsonl/.parquet file with an 'English Text' column is translated row
by row and written next to it as NAME.translated.EXT (or to --output FILE), never over an existing file.
The output's folder is created where missing and written to once before any model is loaded: a folder
that cannot be written is exit 74 at once, not after the work.

The input file is read and checked (data/files.py, the cell rules of data/text.py) before the adapter
or any model is looked at, so a broken file fails in a second; a row without English text is left without a
translation. The output file is jobs/result_files.py's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from saudial.config.settings import Settings
from saudial.data import workbook
from saudial.data.text import describe_names, name_problem, strip_controls
from saudial.data.workbook import read_table
from saudial.errors import ConfigError, DataError, printable
from saudial.jobs.result_files import check_output_folder, deliver, output_path_for
from saudial.process.collector import long_lived_imports
from saudial.rundir.record import trained_task

log = logging.getLogger(__name__)

HEADERS = workbook.REQUIRED_COLUMNS | workbook.OPTIONAL_COLUMNS  # the published headers of the columns read here

TRANSLATION_COLUMN = "Model Translation"


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


def read_inputs(path: Path, max_mb: int, sheet_name: str | None = None) -> tuple[pd.DataFrame, list[InputRow]]:
    """Rows of a .csv/.xlsx/.jsonl/.parquet file (of an .xlsx, the sheet `sheet_name`, else the first): English text
    (required), dialect and context (optional)."""
    table = read_table(path, sheet_name, max_mb=max_mb, setting="--input")
    frame = table.frame
    english = workbook.find_column(frame, HEADERS["english"], table.shown)
    if english is None:
        english = workbook.find_column(frame, "english", table.shown)
    if english is None:
        raise DataError(
            f"{table.shown} has no '{HEADERS['english']}' column "
            f"(found {describe_names(frame.columns)}): give the column of English text that header"
            + (", or name the sheet that has it with --sheet-name" if table.suffix in (".xlsx", ".xlsm") else "")
        )
    columns = {"english": english}
    for name in ("dialect", "context"):
        found = workbook.find_column(frame, HEADERS[name], table.shown)
        if found is not None:
            columns[name] = found
    used = pd.DataFrame(columns, index=frame.index)
    workbook.check_text(table, used, {name: HEADERS[name] for name in columns})  # named as published
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
) -> list[tuple[str, str, str | None] | None]:
    """(dialect, English, context) of each row of the file `shown`: what generate.Request takes; None for a row
    without English text, which gets no translation (said here, before any model loads)."""
    requests: list[tuple[str, str, str | None] | None] = []
    if blank := [row.number for row in rows if not row.english.strip()]:
        numbers = ", ".join(map(str, blank[:8])) + (f" and {len(blank) - 8} more" if len(blank) > 8 else "")
        words = f"{row_word}s" if len(blank) > 1 else row_word
        log.warning("%s: %s %s without English text: left without a translation", shown, words, numbers)
    for row in rows:
        if not row.english.strip():
            requests.append(None)
            continue
        if not (dialect or row.dialect):
            choices = ", ".join(known) or "the dialects the adapter was trained on"
            raise ConfigError(
                f"{shown} {row_word} {row.number} has no dialect: pass --dialect (one of {choices}) for the whole "
                f"file, or give each row one in a '{HEADERS['dialect']}' column"
            )
        # --dialect / --context win over the file's columns.
        resolved = resolve_dialect(dialect or row.dialect, known, where=f"{shown} {row_word} {row.number}: dialect")
        row_context = context if context is not None else row.context
        requests.append((resolved, row.english, row_context or None))
    return requests


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
        if not english:
            raise ConfigError("the English TEXT is empty: give the text to translate, or --input FILE")
        return Asked([(resolve_dialect(dialect, known), english, context or None)], None, None)
    target = output_path_for(input_path, output)  # the file first: a broken one fails before any model is looked at
    frame, rows = read_inputs(input_path, settings.max_data_file_mb, settings.sheet_name)
    row_word = "line" if input_path.suffix.lower() == ".jsonl" else "row"
    shown = repr(printable(str(input_path)))
    requests = requests_for(rows, dialect, context, known, row_word, shown)
    if not any(requests):
        raise DataError(f"{shown} has no English text in any {row_word}: fill its '{HEADERS['english']}' column")
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
    wanted = [i for i, request in enumerate(asked.requests) if request is not None]  # rows with English text
    requests = [Request(*asked.requests[i]) for i in wanted]
    results = [""] * len(asked.requests)
    translated = translate(model, tokenizer, requests, settings, progress=asked.frame is not None)
    for i, result in zip(wanted, translated, strict=True):
        results[i] = result
    what = ("translation", "translations", "the real SauDial data")
    deliver(results, asked.frame, TRANSLATION_COLUMN, asked.target, what, skipped=len(results) - len(wanted))
    return results

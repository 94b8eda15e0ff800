"""`saudial translate`: English text or a whole file through a trained adapter.

One text is printed; a .csv/.xlsx/.jsonl/.parquet file with an 'English Text' column is translated row
by row and written next to it as NAME.translated.EXT, never over an existing file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from saudial.config.settings import Settings
from saudial.data import files as data_files
from saudial.data import workbook
from saudial.data.text import clean_text
from saudial.errors import ConfigError
from saudial.inference.generate import Request, load_for_inference, settings_for_adapter, translate
from saudial.run.record import MANIFEST, read_json

log = logging.getLogger(__name__)

TRANSLATION_COLUMN = "Model Translation"


def known_dialects(adapter_dir: Path) -> list[str]:
    """The dialects the adapter was trained on, from its manifest (empty when unknown)."""
    manifest = read_json(adapter_dir / MANIFEST) or {}
    per_dialect = (manifest.get("data") or {}).get("per_dialect") or {}
    return sorted(per_dialect)


def resolve_dialect(dialect: str | None, known: list[str], where: str = "--dialect") -> str:
    if not dialect:
        raise ConfigError(
            f"{where} is required: one of {', '.join(known) or 'the dialects the adapter was trained on'}"
        )
    if not known:
        return dialect
    by_key = {d.casefold(): d for d in known}
    if dialect.strip().casefold() not in by_key:
        raise ConfigError(f"{where} {dialect!r} is not a dialect this adapter was trained on ({', '.join(known)})")
    return by_key[dialect.strip().casefold()]


def output_path_for(input_path: Path, output: Path | None) -> Path:
    """`name.translated.ext` next to the input, unless given; an existing file is never overwritten."""
    target = output or input_path.with_name(f"{input_path.stem}.translated{input_path.suffix}")
    if target.exists():
        raise ConfigError(f"{target} already exists: remove it or choose another file with --output")
    if target.resolve() == input_path.resolve():
        raise ConfigError("--output must differ from --input")
    return target


def read_requests(path: Path, dialect: str | None, context: str | None, known: list[str]) -> tuple[Any, list[Request]]:
    """Rows of a .csv/.xlsx/.jsonl/.parquet file: English text (required), dialect and context (optional)."""
    frame = data_files.read_table(path)
    by_key = {str(c).strip().casefold(): c for c in frame.columns}
    english_col = by_key.get(workbook.REQUIRED_COLUMNS["english"].casefold()) or by_key.get("english")
    if english_col is None:
        raise ConfigError(
            f"{path.name} has no '{workbook.REQUIRED_COLUMNS['english']}' column "
            f"(found {[str(c) for c in frame.columns]})"
        )
    dialect_col = by_key.get(workbook.REQUIRED_COLUMNS["dialect"].casefold())
    context_col = by_key.get(workbook.OPTIONAL_COLUMNS["context"].casefold())
    requests = []
    for i, row in enumerate(frame.to_dict("records")):
        row_dialect = clean_text(row[dialect_col]) if dialect_col is not None else ""
        # --dialect / --context win over the file's columns.
        resolved = resolve_dialect(dialect or row_dialect, known, where=f"row {i + 2}: dialect")
        row_context = context if context is not None else clean_text(row[context_col]) if context_col else ""
        requests.append(Request(resolved, clean_text(row[english_col]), row_context or None))
    return frame, requests


def write_table(frame: Any, path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xlsm"):
        frame.to_excel(path, index=False)
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_parquet(path, index=False)


def run_translate(
    settings: Settings,
    adapter_dir: Path,
    text: str | None,
    dialect: str | None,
    context: str | None,
    input_path: Path | None,
    output: Path | None = None,
) -> list[str]:
    """`python -m saudial translate`: one text to stdout, or a whole file to `name.translated.ext`."""
    if (text is None) == (input_path is None):
        raise ConfigError("translate needs either an English TEXT argument or --input FILE (not both)")
    settings = settings_for_adapter(settings, adapter_dir)
    known = known_dialects(adapter_dir)
    if input_path is not None:
        target = output_path_for(input_path, output)
        frame, requests = read_requests(input_path, dialect, context, known)
    else:
        requests = [Request(resolve_dialect(dialect, known), str(text).strip(), context or None)]
    model, tokenizer = load_for_inference(settings, adapter_dir)
    results = translate(model, tokenizer, requests, settings, progress=input_path is not None)
    if input_path is None:
        print(results[0], flush=True)
    else:
        frame[TRANSLATION_COLUMN] = results
        write_table(frame, target)
        log.info("%d translation(s) written to %s", len(results), target)
    if empty := sum(not text for text in results):
        log.warning(
            "%s: the model wrote only whitespace or its end-of-text token. An untrained or barely trained adapter "
            "does this (make demo's tiny random model does): train longer, or on the real SauDial data",
            "the translation is empty" if input_path is None else f"{empty} of {len(results)} translations are empty",
        )
    return results

"""Which files are read at all, and how much of them: the bytes of a data file, or one line saying why not.

Only a regular file is read (a symlink is followed to one); a directory, device, FIFO or socket is refused
before anything is opened for reading (config/reading.py, which recipe files go through too). The file is
read once, whole, and at most SAUDIAL_MAX_DATA_FILE_MB of it; the readers of `formats.py` parse those bytes
and `workbook.read_table` hashes them, so the sha256 a run records is that of exactly what it trained on.
Messages name the file as the user gave it, escaped (errors.printable), never where a symlink points.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from saudial.config.reading import Unreadable, inspect, read_regular
from saudial.config.settings import Settings, env_name
from saudial.errors import DataError, printable

SUFFIXES = (".xlsx", ".xlsm", ".csv", ".jsonl", ".parquet")
DEFAULT_MAX_MB: int = Settings.model_fields["max_data_file_mb"].default
DATA_SETTING = "SAUDIAL_DATA / --data"
CAP_SETTING = env_name("max_data_file_mb")
MB = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_bytes(path: Path, max_mb: int, setting: str = DATA_SETTING) -> tuple[bytes, str]:
    """The bytes of a regular file of at most `max_mb` MB, and how to name it; anything else is a DataError."""
    shown = printable(str(path))
    try:
        inspect(path)  # what it is, before its name's suffix is looked at
        suffix = path.suffix.lower()
        if suffix not in SUFFIXES:
            kinds = ", ".join(SUFFIXES)
            raise DataError(f"unsupported data file type {printable(suffix)!r}: {shown} (use one of {kinds})")
        return read_regular(path, max_mb * MB), shown
    except Unreadable as why:
        raise _refusal(why, shown, setting, max_mb) from None


def _refusal(why: Unreadable, shown: str, setting: str, max_mb: int) -> DataError:
    if why.why == Unreadable.MISSING:
        return DataError(f"data file not found: {shown} (set {setting} to an existing file)")
    if why.why == Unreadable.DANGLING:
        return DataError(f"{shown} is a symlink that points to nothing: fix the link or set {setting} to the file")
    if why.why == Unreadable.NOT_REGULAR:
        return DataError(
            f"{shown} is {why.detail}, not a data file: set {setting} to the .xlsx, .csv, .jsonl or .parquet file"
        )
    if why.why == Unreadable.TOO_BIG:
        return too_big(shown, why.size, max_mb)
    if why.why == Unreadable.DENIED:
        return DataError(f"cannot read {shown}: {why.detail}")
    return DataError(f"cannot read {shown}: {why.detail} (set {setting} to a readable file)")


def too_big(shown: str, size: int, max_mb: int) -> DataError:
    return DataError(
        f"{shown} is {size / MB:,.0f} MB, over {CAP_SETTING}={max_mb}: check that it is the right file, "
        f"or raise {CAP_SETTING}"
    )

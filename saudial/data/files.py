"""Which files are read at all, and how much of them: the bytes of a data file, or one line saying why not.

Only a regular file is read (a symlink is followed to one, and said so); a directory, device, FIFO or
socket is refused before anything is opened for reading. The file is read once, whole, and at most
SAUDIAL_MAX_DATA_FILE_MB of it; the readers of `formats.py` parse those bytes and `workbook.read_table`
hashes them, so the sha256 a run records is that of exactly what it trained on.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from saudial.config.settings import Settings, env_name
from saudial.errors import DataError

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


def printable(text: str) -> str:
    """`text` with its unprintable characters (control, bidi, ...) escaped, as Python writes them."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def read_bytes(path: Path, max_mb: int, setting: str = DATA_SETTING) -> tuple[bytes, str]:
    """The bytes of a regular file of at most `max_mb` MB, and how to name it; anything else is a DataError."""
    shown, linked = printable(str(path)), False
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):  # where a link points is anyone's choice of name: escaped too
            shown, linked = f"{shown} (a symlink to {printable(os.path.realpath(path))})", True
            info = os.stat(path)  # the target's type, not yet opened
    except FileNotFoundError:
        if linked:
            raise DataError(f"{shown} points to nothing: fix the link or set {setting} to the file itself") from None
        raise DataError(f"data file not found: {shown} (set {setting} to an existing file)") from None
    except OSError as exc:
        raise DataError(f"cannot look at {shown}: {exc.strerror} (set {setting} to a readable file)") from None
    _check_kind(info.st_mode, shown, setting)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"unsupported data file type {suffix!r}: {shown} (use one of {', '.join(SUFFIXES)})")
    limit = max_mb * MB
    if info.st_size > limit:
        raise too_big(shown, info.st_size, max_mb)
    try:
        # O_NONBLOCK: should the path have become a FIFO since the check, opening it must not wait for a
        # writer; the open file's own type is checked again before a byte is read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as handle:
            _check_kind(os.fstat(handle.fileno()).st_mode, shown, setting)
            data = handle.read(limit + 1)  # files that report no size (/proc) are cut here too
    except PermissionError:
        raise DataError(f"cannot read {shown}: permission denied (make it readable by user id {os.getuid()})") from None
    except OSError as exc:
        raise DataError(f"cannot read {shown}: {exc.strerror} (set {setting} to a readable file)") from None
    if len(data) > limit:
        raise too_big(shown, len(data), max_mb)
    return data, shown


def _check_kind(mode: int, shown: str, setting: str) -> None:
    if stat.S_ISREG(mode):
        return
    kinds = {
        stat.S_ISDIR: "a directory",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISFIFO: "a named pipe (FIFO)",
        stat.S_ISSOCK: "a socket",
    }
    kind = next((name for test, name in kinds.items() if test(mode)), "not a regular file")
    raise DataError(
        f"{shown} is {kind}, not a data file: set {setting} to the .xlsx, .csv, .jsonl or .parquet file itself"
    )


def too_big(shown: str, size: int, max_mb: int) -> DataError:
    return DataError(
        f"{shown} is {size / MB:,.0f} MB, over {CAP_SETTING}={max_mb}: check that it is the right file, "
        f"or raise {CAP_SETTING}"
    )

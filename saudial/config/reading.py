"""Reading a file the user named (a data file, a recipe): a regular file only, at most a cap of bytes, at once.

A directory, device, FIFO or socket is refused before anything is opened for reading (a FIFO would wait
for a writer forever, /dev/zero would fill the memory); a symlink is followed to a regular file. The file
is opened without blocking, its type checked again on the open file, and at most `limit + 1` bytes are
read, so a file that reports no size (/proc) is cut at the cap too. Every refusal is an `Unreadable` with
the reason; the caller turns it into its own one-line error (data/files.py, config/sources.py), naming
the path as the user gave it (never where a symlink points: that may be a secret's path).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

KINDS = {
    stat.S_ISDIR: "a directory",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISFIFO: "a named pipe (FIFO)",
    stat.S_ISSOCK: "a socket",
}


class Unreadable(Exception):
    """Why a file is not read: `why` is one of the names below, `detail` says more (a kind, a size, errno text)."""

    MISSING, DANGLING, NOT_REGULAR, TOO_BIG, DENIED, FAILED = "missing", "dangling", "kind", "size", "denied", "failed"

    def __init__(self, why: str, detail: str = "", size: int = 0) -> None:
        super().__init__(f"{why}: {detail}")
        self.why, self.detail, self.size = why, detail, size


def kind_of(mode: int) -> str | None:
    """None for a regular file, else what it is ('a named pipe (FIFO)', ...)."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in KINDS.items() if test(mode)), "not a regular file")


def is_symlink(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def inspect(path: Path) -> os.stat_result:
    """What `path` is (a symlink followed), if it is a regular file; opens nothing."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise Unreadable(Unreadable.DANGLING if is_symlink(path) else Unreadable.MISSING) from None
    except OSError as exc:  # a symlink loop, a name too long, a component that is a file
        raise Unreadable(Unreadable.FAILED, exc.strerror or type(exc).__name__) from None
    if (kind := kind_of(info.st_mode)) is not None:
        raise Unreadable(Unreadable.NOT_REGULAR, kind)
    return info


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of the regular file at `path` (a symlink followed), if it holds at most `limit` bytes."""
    info = inspect(path)
    if info.st_size > limit:
        raise Unreadable(Unreadable.TOO_BIG, size=info.st_size)
    try:
        # O_NONBLOCK: should the path have become a FIFO since the check, opening it must not wait for a
        # writer; the open file's own type is checked again before a byte is read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as handle:
            if (kind := kind_of(os.fstat(handle.fileno()).st_mode)) is not None:
                raise Unreadable(Unreadable.NOT_REGULAR, kind)
            data = handle.read(limit + 1)  # files that report no size (/proc) are cut here too
    except PermissionError:
        raise Unreadable(Unreadable.DENIED, f"permission denied (make it readable by user id {os.getuid()})") from None
    except OSError as exc:
        raise Unreadable(Unreadable.FAILED, exc.strerror or type(exc).__name__) from None
    if len(data) > limit:
        raise Unreadable(Unreadable.TOO_BIG, size=len(data))
    return data

"""Errors the user can act on, each with its own exit code (documented in the README).

A `SaudialError` is printed as one line (``error: ...``) by the entry point, never as a traceback:
it is the user's input that was wrong, or the machine (disk, memory), not our code. `as_user_error`
turns the faults of the machine into one of them wherever they come from: an I/O failure (disk full,
read-only, no permission) into `StorageError`, out of memory into `TrainingError`; `check_writable` raises
that `StorageError` for an output folder before the work that would write there. Anything else is a
bug: one line and exit 1 (the traceback with ``--debug`` or ``SAUDIAL_DEBUG=1``).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Exit codes. 1 is a bug in saudial (an exception nothing here expected).
EXIT_OK = 0
EXIT_BUG = 1  # an unexpected exception: a bug in saudial; --debug / SAUDIAL_DEBUG=1 prints its traceback
EXIT_CONFIG = 2  # bad settings or data: fix the input, retrying will not help
EXIT_TRAINING = 3  # out of memory (training, evaluation, generation, merge), or a diverged loss: change settings
EXIT_PUSH = 4  # the upload to the Hub failed; the adapter is safe on disk, `push` retries it
EXIT_IO = 74  # EX_IOERR: disk full, read-only or not writable output, an I/O error of the device
EXIT_INTERRUPTED = 75  # stopped by SIGTERM/SIGINT after saving its state: restart to resume (EX_TEMPFAIL)


class SaudialError(Exception):
    """Base class: a message for the user and the exit code that goes with it."""

    exit_code = EXIT_CONFIG
    shared = False  # the same error on every rank of a multi-process run: only rank 0 prints it


class ConfigError(SaudialError):
    """A setting (env var or flag) is missing, malformed, out of range or contradicts another (exit 2)."""


class DataError(SaudialError):
    """The data file is missing, unreadable, or has no usable rows (exit 2, as a setting)."""


class TrainingError(SaudialError):
    """Training, evaluation or merging failed for a reason the user can address (memory, hardware, a loss that
    became NaN or infinite)."""

    exit_code = EXIT_TRAINING


class PushError(SaudialError):
    """Uploading to the Hugging Face Hub failed after training succeeded."""

    exit_code = EXIT_PUSH


class StorageError(SaudialError):
    """Writing failed: the disk is full, the output is read-only or not ours to write, the device failed."""

    exit_code = EXIT_IO


class Interrupted(SaudialError):
    """A termination signal stopped training after a checkpoint was written (or evaluation, after training)."""

    exit_code = EXIT_INTERRUPTED


# --- faults of the machine -> errors the user can act on --------------------------------------------

OOM_TRAINING = (
    "lower SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE (raise SAUDIAL_GRADIENT_ACCUMULATION_STEPS to keep the effective "
    "batch), lower SAUDIAL_MAX_LENGTH, or set SAUDIAL_GRADIENT_CHECKPOINTING=true"
)
OOM_INFERENCE = "lower SAUDIAL_PER_DEVICE_EVAL_BATCH_SIZE, SAUDIAL_MAX_NEW_TOKENS or SAUDIAL_MAX_LENGTH"
OOM_ANY = (
    "lower the batch sizes (SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE, SAUDIAL_PER_DEVICE_EVAL_BATCH_SIZE) or "
    "SAUDIAL_MAX_LENGTH, or use more memory"
)

# errno values that mean "this place cannot be written now", not "saudial has a bug".
IO_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}
IO_FIXES = {
    errno.ENOSPC: "free space there or write to a larger disk",
    errno.EDQUOT: "the disk quota is used up: free space there or write to a larger disk",
    errno.EFBIG: "the file system refuses files this large: write to another disk",
    errno.EROFS: "it is mounted read-only: mount it read-write (e.g. drop ':ro' from the volume) or write elsewhere",
    errno.EACCES: "this user may not write there: fix its owner or permissions, or write elsewhere",
    errno.EIO: "the device reported an I/O error: check the disk (dmesg), or write elsewhere",
}
IO_FIXES[errno.EPERM] = IO_FIXES[errno.EACCES]
# How torch and safetensors report a failed write: torch.save's zip writer loses the errno.
_OS_ERROR_CODE = re.compile(r"os error (\d+)")
_WRITER_FAILURE = ("inline_container.cc", "PytorchStreamWriter", "file write failed")
_OOM_TEXT = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "can't allocate memory", "DefaultCPUAllocator")


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA), a RuntimeError that says so (older CUDA paths, the CPU allocator), MemoryError."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in _OOM_TEXT)


def io_errno(exc: BaseException) -> int | None:
    """The errno of a failed write (OSError, safetensors' 'os error 28'); -1 for torch.save's errno-less one."""
    if isinstance(exc, OSError) and exc.errno in IO_ERRNOS:
        return exc.errno
    text = str(exc)
    match = _OS_ERROR_CODE.search(text)
    if match and int(match.group(1)) in IO_ERRNOS:
        return int(match.group(1))
    if isinstance(exc, RuntimeError) and any(marker in text for marker in _WRITER_FAILURE):
        return -1
    return None


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _existing(path: Path) -> Path:
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def free_space(path: Path) -> str:
    """'12.0 MB free of 2.0 GB' for the file system that holds `path` (or its nearest existing parent)."""
    try:
        usage = shutil.disk_usage(_existing(path))
    except OSError:
        return "free space unknown"
    return f"{_size(usage.free)} free of {_size(usage.total)}"


def storage_error(exc: BaseException, path: Path | None, code: int) -> StorageError:
    """One line: what failed, where, the free space there, and the fix."""
    where = Path(getattr(exc, "filename", None) or path or Path.cwd())
    if code == -1:  # torch.save lost the errno: a full disk is by far the most common cause
        try:
            code = errno.ENOSPC if shutil.disk_usage(_existing(where)).free < 1 << 20 else errno.EIO
        except OSError:
            code = errno.EIO
    reason = f"{errno.errorcode.get(code, 'EIO')} ({os.strerror(code)})"
    return StorageError(
        f"cannot write {where}: {reason}; {free_space(where)} there: {IO_FIXES.get(code, IO_FIXES[errno.EIO])}"
    )


def as_user_error(exc: BaseException, path: Path | None = None, oom_advice: str = OOM_TRAINING) -> SaudialError | None:
    """The `SaudialError` a fault of the machine amounts to (None for anything else: a bug).

    `path` is where the failing code was writing, for errors that do not say (torch.save, a write()).
    """
    if isinstance(exc, SaudialError):
        return exc
    if is_out_of_memory(exc):
        device = "CUDA" if type(exc).__name__ == "OutOfMemoryError" or "CUDA" in str(exc) else "host"
        return TrainingError(f"{device} out of memory: {oom_advice}")
    code = io_errno(exc)
    if code is not None:
        return storage_error(exc, path, code)
    return None


@contextmanager
def faults(path: Path | None = None, oom_advice: str = OOM_TRAINING, note: str = "") -> Iterator[None]:
    """Turn an I/O failure or out-of-memory inside the block into a one-line error (where: `path`), plus `note`
    (what state that leaves, what to do next)."""
    try:
        yield
    except SaudialError:
        raise
    except Exception as exc:
        error = as_user_error(exc, path, oom_advice)
        if error is None:
            raise
        if note:
            error.args = (f"{error}; {note}",)
        raise error from exc


def make_dirs(folder: Path) -> None:
    """`folder` and any missing parent, as every output folder is made. A place where the file system makes no
    folder (a pseudo file system such as /proc answers ENOENT) is exit 74 as a read-only one is, named as
    `folder`; the faults of IO_ERRNOS are left to `faults`, a path under a file to the callers' checks."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _no_files_there(exc, folder, "create") from exc


def _no_files_there(exc: OSError, folder: Path, what: str) -> OSError | StorageError:
    """`exc` itself, or exit 74 where the file system makes no files or folders in `folder` (ENOENT in /proc)."""
    if io_errno(exc) is not None or exc.errno not in (errno.ENOENT, errno.EINVAL, errno.EOPNOTSUPP):
        return exc
    reason = f"{errno.errorcode[exc.errno]} ({os.strerror(exc.errno)})"
    return StorageError(
        f"cannot {what} {printable(str(folder))}: {reason}: its file system makes no files or folders there (e.g. "
        "/proc, /sys): write to a folder on a disk"
    )


def check_writable(folder: Path) -> None:
    """Create `folder` (with any missing parent, as every output folder is) and a nameless file in it, gone at
    once: a folder that cannot be written (read-only, not this user's) is exit 74 here, named as `folder`, so
    that a command says so before it loads a model rather than after its work."""
    with faults(folder):
        make_dirs(folder)
        try:
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as exc:  # it may name the temporary file it tried: name the folder
            error = _no_files_there(exc, folder, "write in")
            raise (OSError(exc.errno, exc.strerror, str(folder)) if error is exc else error) from exc


# --- what messages echo ------------------------------------------------------------------------------

# A Hugging Face access token ('hf_' and 30+ letters and digits): never printed, logged or written.
_HF_TOKEN = re.compile(r"hf_[A-Za-z0-9]{20,}")
REDACTED = "hf_***"


def printable(text: str) -> str:
    """`text` with its unprintable characters (control, ANSI escapes, newlines, bidi) escaped as Python writes
    them: what every message does with a name or value the user (or a file) gave, so that it cannot forge
    lines, clear the screen or reorder what is shown."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def redact(text: str) -> str:
    """`text` without the value of HF_TOKEN and without anything shaped like a Hugging Face token: every
    message that carries a server's words (an error body may echo the request's Authorization header) goes
    through this before it is printed, logged or written."""
    token = os.environ.get("HF_TOKEN", "").strip()
    if len(token) >= 8:
        text = text.replace(token, REDACTED)
    return _HF_TOKEN.sub(REDACTED, text)


def one_line(text: str) -> str:
    """A message as the entry point prints it: one line, control characters escaped, tokens redacted."""
    return printable(redact(text))


def unexpected(exc: BaseException) -> str:
    """The one line for a bug: the exception's type and the start of its message (never a whole payload)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= 200 else text[:200] + "..."
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    debug = "run again with --debug (or SAUDIAL_DEBUG=1) for the traceback, and report it"
    return f"unexpected error (a bug in saudial): {detail}; {debug}"

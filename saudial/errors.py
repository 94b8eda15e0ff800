"""Errors the user can act on, each with its own exit code (documented in the README).

A `SaudialError` is printed as one line (``error: ...``) by the entry point, never as a traceback:
it is the user's input that was wrong, not our code. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

# Exit codes. 1 is left to Python itself: an uncaught exception (a bug in saudial) exits with 1.
EXIT_OK = 0
EXIT_CONFIG = 2  # bad settings or data: fix the input, retrying will not help
EXIT_TRAINING = 3  # training failed (e.g. CUDA out of memory): change settings or hardware
EXIT_PUSH = 4  # the upload to the Hub failed; the adapter is safe on disk, `push` retries it
EXIT_INTERRUPTED = 75  # stopped by SIGTERM/SIGINT after saving a checkpoint: restart to resume (EX_TEMPFAIL)


class SaudialError(Exception):
    """Base class: a message for the user and the exit code that goes with it."""

    exit_code = EXIT_CONFIG
    shared = False  # the same error on every rank of a multi-process run: only rank 0 prints it


class ConfigError(SaudialError):
    """A setting (env var or flag) is missing, malformed, out of range or contradicts another."""

    exit_code = EXIT_CONFIG


class DataError(SaudialError):
    """The data file is missing, unreadable, or has no usable rows."""

    exit_code = EXIT_CONFIG


class TrainingError(SaudialError):
    """Training itself failed, for a reason the user can address (memory, hardware)."""

    exit_code = EXIT_TRAINING


class PushError(SaudialError):
    """Uploading to the Hugging Face Hub failed after training succeeded."""

    exit_code = EXIT_PUSH


class Interrupted(SaudialError):
    """A termination signal stopped training after a checkpoint was written."""

    exit_code = EXIT_INTERRUPTED

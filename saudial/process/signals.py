"""Stopping cleanly on SIGTERM/SIGINT: what a job on a preemptible GPU or under `docker stop` needs.

A process that runs as PID 1 in a container ignores SIGTERM unless it has a handler; this is that
handler. During training the run then writes a checkpoint and exits 75 (training/recipe.py raises
`Interrupted`). During evaluation (`interruptible`), generation and the loss loop call `check()` between
batches: it raises `Interrupted` (exit 75); the next start with the same settings finishes the evaluation.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from saudial.errors import Interrupted
from saudial.process import distributed

log = logging.getLogger(__name__)

_installed: list[StopOnSignal] = []  # the handler in place now (at most one)


class StopOnSignal(TrainerCallback):
    """SIGTERM/SIGINT: finish the current optimizer step, save a checkpoint, stop training.

    The handler only sets a flag; the callback acts on it at the end of the step, on every rank at the
    same step (the flag is all-reduced), because ranks that stopped at different steps would wait for
    each other forever. Further signals while stopping are logged and otherwise ignored: the checkpoint
    is being written, and a SIGKILL in the middle of it leaves a folder that the next start skips.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: str | None = None
        self.stopped_at: int | None = None
        self.stopping = "stopping after the current step and saving a checkpoint"  # what the log line says
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        _installed[:] = [self]

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        _installed.clear()

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = name
            log.warning("%s received: %s", name, self.stopping)
        else:
            log.warning(
                "%s received again: already stopping, ignored (a SIGKILL now would leave an incomplete "
                "checkpoint, which the next start skips)",
                name,
            )

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if distributed.any_rank(self.received is not None) and state.global_step < state.max_steps:
            self.received = self.received or "a signal (on another process)"
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control


class _Stop(Exception):
    """Raised by `check` inside `interruptible`, which turns it into `Interrupted` with its message."""


def check() -> None:
    """A place where stopping loses nothing: raise if SIGTERM/SIGINT arrived inside `interruptible`."""
    if _installed and _installed[0].received is not None:
        raise _Stop(_installed[0].received)


@contextmanager
def interruptible(what: str, then: str, received: str | None = None) -> Iterator[None]:
    """SIGTERM/SIGINT inside the block (or `received` before it) stops it at the next `check()`:
    Interrupted (exit 75) "stopped by SIGTERM during <what>; <then>"."""
    stopper = StopOnSignal()
    stopper.received, stopper.stopping = received, f"stopping the {what} after the current batch"
    stopper.install()
    try:
        yield
    except _Stop as stop:
        raise Interrupted(f"stopped by {stop} during {what}; {then}") from None
    finally:
        stopper.restore()

"""Stopping cleanly on SIGTERM/SIGINT: what a job on a preemptible GPU or under `docker stop` needs.

A process that runs as PID 1 in a container ignores SIGTERM unless it has a handler, and any other
process dies of it; `saudial train` has one from the moment its command is known to the moment it exits
(`watching`, installed by cli/main.py before the heavy imports). Handlers nest: the innermost one in
place hears the signal, and passes what it heard outward when it is removed, so no signal is lost
between phases. What each phase does with it:

- before training (imports, data, the output directory, loading the model): nothing is stopped midway;
  training then stops after its first step with a checkpoint (exit 75);
- training: the current optimizer step finishes, a checkpoint is written, exit 75 (training/recipe.py's
  StopOnSignal callback, built on `Stopper`);
- evaluation (`interruptible`): generation and the loss loop call `check()` between batches: exit 75;
  the next start with the same settings finishes the evaluation;
- between the phases after training (`stop_if_received`, jobs/train.py): before the move into place and
  before the upload, exit 75 with what is left; the move itself is never cut short (it is journaled);
- the upload (`interruptible(..., at_once=True)`): stops at once, exit 75: the run is safe on disk.

Every other command (cli/main.py) is `interruptible(..., at_once=True)` from its start: it stops at once, exit
75, "nothing was written"; a file cut short is removed as it stops (translate's and chat's outputs, merge's
staging folder). What must not be cut short (the model card, merge's move into place) runs `deferred`. "At
once" waits for a module being imported to finish (`_importing`): a stop raised inside Python's import machinery
can leave the libraries half imported (a module gone from sys.modules while others hold parts of it); 2 of ~100
Ctrl-Cs during merge's lazy imports then ended in exit 1 (ModuleNotFoundError) instead of 75.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from saudial.errors import Interrupted

log = logging.getLogger(__name__)

_installed: list[Stopper] = []  # the handlers in place, innermost last
RETRY_S = 0.05  # an at-once stop heard during an import looks again this often (SIGALRM) until the import is done
_LOOK = getattr(signal, "SIGALRM", None)  # none on Windows: there the stop comes at once, as before


def _end_looks() -> None:
    if _LOOK is not None:
        signal.setitimer(signal.ITIMER_REAL, 0)


class Stopper:
    """Records SIGTERM/SIGINT (or only `signals`) while installed; `at_once` raises at the signal instead."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, signals: tuple[signal.Signals, ...] | None = None, at_once: bool = False) -> None:
        self.received: str | None = None
        self.stopping = "stopping after the current step and saving a checkpoint"  # what the log line says
        self.again = " (a SIGKILL now would leave an incomplete checkpoint, which the next start skips)"  # training's
        self.signals = signals or self.SIGNALS
        self.at_once = at_once
        self._looking = True  # False once an inner at-once phase stopped for the signal instead (`install`)
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if _installed and self.received is None:  # heard before this phase began: this phase stops at once
            self.received = _installed[-1].received
        if self.at_once and self.received is not None:  # it stops for it now: the outer phases' looks (`_stop`) end,
            _end_looks()  # and one whose SIGALRM came just before runs its handler after this: it looks no more
            for outer in _installed:
                outer._looking = False
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        _installed.append(self)

    def restore(self) -> None:
        if _LOOK in self._previous:  # a stop waiting for an import: the phase out hears of it instead
            _end_looks()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self in _installed:
            _installed.remove(self)
        if self.received is not None and _installed and _installed[-1].received is None:
            _installed[-1].received = self.received  # the next phase out hears of it

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = name
            log.warning("%s received: %s", name, self.stopping)
            if self.at_once:
                self._stop(frame)
        else:
            log.warning("%s received again: already stopping, ignored%s", name, self.again)

    def _stop(self, frame: FrameType | None) -> None:
        """Raise _Stop now, or, while a module is being imported or an inner phase (`deferred`) holds the signal,
        look again in RETRY_S (SIGALRM; where there is none, now)."""
        waiting = _importing(frame) or (bool(_installed) and _installed[-1] is not self)
        if waiting and _LOOK is not None:
            if _LOOK not in self._previous:
                self._previous[_LOOK] = signal.signal(_LOOK, self._look)
            signal.setitimer(signal.ITIMER_REAL, RETRY_S)
            return
        raise _Stop(self.received)

    def _look(self, _signum: int, frame: FrameType | None) -> None:
        if self._looking:
            self._stop(frame)


def _importing(frame: FrameType | None) -> bool:
    """Whether `frame` or one of its callers runs in Python's import machinery: a module is being imported."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


class _Stop(BaseException):
    """Raised by `check` (or at once) inside `interruptible`, which turns it into `Interrupted` with its message.
    Not an Exception: no `except Exception` on the way (a retry loop, a fault handler) may swallow it."""


def received() -> str | None:
    """The signal heard so far by the innermost handler in place (None: none, or no handler)."""
    return _installed[-1].received if _installed else None


def check() -> None:
    """A place where stopping loses nothing: raise if SIGTERM/SIGINT arrived inside `interruptible`."""
    if (name := received()) is not None:
        raise _Stop(name)


def stop_if_received(before: str, then: str) -> None:
    """Between two phases: Interrupted (exit 75) "stopped by SIGTERM before <before>; <then>" if one came."""
    if (name := received()) is not None:
        raise Interrupted(f"stopped by {name} before {before}; {then}")


@contextmanager
def watching() -> Iterator[Stopper]:
    """SIGTERM from here to the end of the block is heard, never fatal; the phases inside act on it."""
    stopper = Stopper(signals=(signal.SIGTERM,))
    stopper.stopping = "stopping at the next point where nothing is lost"
    stopper.install()
    try:
        yield stopper
    finally:
        stopper.restore()


@contextmanager
def deferred(what: str) -> Iterator[None]:
    """SIGTERM/SIGINT inside the block waits for its end (`what`: a write that must not be cut short). The phase
    around it holds the signal then: it stops at its next `check()` or `interruptible`; where none comes, the
    command finishes as it would have."""
    stopper = Stopper()
    stopper.stopping, stopper.again = f"finishing {what} first", ""
    stopper.install()
    try:
        yield
    finally:
        stopper.restore()


@contextmanager
def interruptible(what: str, then: str, received: str | None = None, at_once: bool = False) -> Iterator[None]:
    """SIGTERM/SIGINT inside the block (or `received` before it, or one an outer handler heard) stops it at the
    next `check()`, or at once with `at_once`: Interrupted (exit 75) "stopped by SIGTERM during <what>; <then>"."""
    stopper = Stopper(at_once=at_once)
    stopper.received, stopper.stopping = received, f"stopping the {what}" + ("" if at_once else " after this batch")
    stopper.again = ""  # no checkpoint here: training's own stop says what a SIGKILL would leave
    stopper.install()
    try:
        if at_once:
            check()
        yield
    except _Stop as stop:
        raise Interrupted(f"stopped by {stop} during {what}; {then}") from None
    finally:
        stopper.restore()


class QuietWorker:
    """A data loader worker's `worker_init_fn`: the worker leaves stopping to the training process, then runs
    the loader's own init (the Trainer's seeding).

    A scheduler (SLURM's scancel) or a terminal's Ctrl-C signals the whole process group, the workers too; the
    training process stops after its step (StopOnSignal) and shuts its workers down itself. Upstream (torch
    2.13), a worker dies of a SIGTERM that its parent did not send, and the loader then raises "DataLoader worker
    ... is killed by signal" in the training process in the middle of its step; and a SIGINT runs the handler
    the worker inherited by fork, which logs the stop a second time. Here a worker ignores SIGINT, and takes a
    SIGTERM (in a thread that waits for it) only from its parent, which sends one when it shuts the workers down
    at exit: then it exits, as torch's own handler does. A class, not a closure: a spawned worker pickles it.
    """

    def __init__(self, init: Callable[[int], Any] | None) -> None:
        self.init = init

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if hasattr(signal, "sigwaitinfo"):  # Linux; elsewhere SIGTERM stays torch's
            parent = os.getppid()
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # held for the thread below

            def take_sigterm() -> None:
                while True:
                    if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
                        os._exit(0)

            threading.Thread(target=take_sigterm, name="saudial-worker-sigterm", daemon=True).start()
        if self.init is not None:
            self.init(worker_id)


def quiet_workers(loader: Any) -> Any:
    """`loader` (a torch DataLoader, or accelerate's wrapper of one) with QuietWorker around its workers' init."""
    torch_loader = getattr(loader, "base_dataloader", loader)  # accelerate iterates the DataLoader it wraps
    if getattr(torch_loader, "num_workers", 0) > 0 and not isinstance(torch_loader.worker_init_fn, QuietWorker):
        torch_loader.worker_init_fn = QuietWorker(torch_loader.worker_init_fn)
    return loader

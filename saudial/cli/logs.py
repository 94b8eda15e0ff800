"""What a run prints: one log format, no known-harmless warnings, progress as lines in log files.

- `setup`: every message in one format on stderr, each printed once (huggingface_hub's and
  transformers' own handlers are folded into ours), the warnings below filtered at their source, and
  progress bars as whole lines when stderr is not a terminal.
- `Echoes`: every record, whoever logs it, has the control characters of its values escaped (no value can
  clear the screen or move the cursor; a path or a name cannot start a line of its own) and any Hugging
  Face token redacted (errors.redact: a server's message may echo the Authorization header).
- `KNOWN_HARMLESS`: each filtered message, why it is harmless here, and the upstream version that fixes
  it. tests/test_logs.py checks that the filters still match upstream's text and drop nothing else.
- `line_progress`: tqdm draws a bar in place with carriage returns; in a log file (CI, `docker compose run`
  without a TTY, Kubernetes) that becomes one ever-growing line. In line mode a bar prints a line each
  10% (at most one per 2 s, at least one per 30 s) and its last one, through logging; a bar that was
  over within 2 s prints nothing.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any

from saudial.errors import printable, redact

log = logging.getLogger("saudial")
progress_log = logging.getLogger("saudial.progress")

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LIBRARIES = ("transformers", "datasets", "peft", "trl", "httpx", "httpx2", "huggingface_hub", "bitsandbytes")

# (logger, a regular expression matching the start of the message, why it is harmless here)
KNOWN_HARMLESS: list[tuple[str, str, str]] = [
    (
        "bitsandbytes.backends.cpu.ops",
        r"Failed to load CPU gemm_4bit_forward from kernels-community",
        # bitsandbytes 0.50.2 tries, at import on any CPU with AVX512-BF16, to fetch an optional CPU kernel
        # for 4-bit matmuls from the `kernels` package (not installed). saudial never runs 4-bit matmuls on
        # the CPU: 4-bit needs CUDA (model/hardware.check_cuda) and inference on a CPU loads the base model
        # unquantized. Not fixed as of bitsandbytes 0.50.2 (the lock's): bitsandbytes#2064 and its open fix
        # #2065 only change which build `kernels` picks, and keep this warning when `kernels` is absent.
        "an optional CPU 4-bit kernel saudial never uses",
    ),
    (
        "transformers.integrations.hub_kernels",
        r"`causal_conv1d_(fn|update)` is falling back to its reference PyTorch implementation",
        # LFM2's short convolution runs in PyTorch on purpose: the `causal_conv1d` CUDA package is not in
        # the lock (it is built per CUDA/torch pair), and padding-free training needs saudial's own
        # boundary-aware conv (model/short_conv.py). During generation the update step is a 3-tap convolution
        # per token, small beside the matmuls. transformers 5.23 says it on every process's first
        # generation, once for the prompt (`causal_conv1d_fn`) and once for the new tokens (`_update`); not
        # changed upstream as of 5.23.0.
        "LFM2's short conv in PyTorch, as saudial intends",
    ),
]
# transformers 5.x deprecated `is_gradient_checkpointing`; PEFT 0.21.2 still reads it once per PeftModel
# (peft_model.py: `getattr(model, "is_gradient_checkpointing", True)`), and the alias returns the same value
# as `is_activation_checkpointing` until transformers 6 removes it. Not fixed in PEFT as of 0.21.2; when a
# PEFT release reads the new name, tests/test_logs.py's check of PEFT's source fails and this goes.
DEPRECATION_FILTERS = [(r"`is_gradient_checkpointing` is deprecated", FutureWarning)]


class Echoes(logging.Filter):
    """On the handler: the values of a record escaped (a path wholly; text but its newlines and tabs, which a
    multi-line message such as the dry run's first example means), the message redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if isinstance(record.args, tuple):
                record.args = tuple(_escaped(arg) for arg in record.args)
            record.msg, record.args = redact(record.getMessage()), None
        except Exception:  # a message that does not format: logging reports it as it always does
            pass
        return True


def _escaped(value: Any) -> Any:
    if isinstance(value, PurePath):
        return printable(str(value))
    if isinstance(value, str):
        return "".join(ch if ch.isprintable() or ch in "\n\t" else printable(ch) for ch in value)
    return value


class DropKnownHarmless(logging.Filter):
    """Drops the records of one logger whose message starts with a known-harmless text (a regex)."""

    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start
        self.pattern = re.compile(start)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def install_filters() -> None:
    """The known-harmless warnings, each filtered at the logger or warning that emits it."""
    for name, start, _why in KNOWN_HARMLESS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropKnownHarmless) and f.start == start for f in logger.filters):
            logger.addFilter(DropKnownHarmless(start))
    for message, category in DEPRECATION_FILTERS:
        warnings.filterwarnings("ignore", message=message, category=category)


def setup() -> None:
    """saudial's logging, for every command (cheap: imports nothing heavy)."""
    logging.basicConfig(level=logging.INFO, format=FORMAT, datefmt="%H:%M:%S", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, Echoes) for f in handler.filters):
            handler.addFilter(Echoes())
    log.setLevel(logging.INFO)
    # Library chatter below WARNING hides our own progress lines.
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    install_filters()
    fold_hub_handler()
    if not sys.stderr.isatty():
        line_progress()


def fold_hub_handler() -> None:
    """huggingface_hub adds its own stderr handler and also propagates to ours: every line came twice."""
    import huggingface_hub.utils.logging  # noqa: F401  (cheap; adds the handler this removes)

    hub = logging.getLogger("huggingface_hub")
    for handler in list(hub.handlers):
        hub.removeHandler(handler)
    hub.propagate = True


def fold_transformers_handler() -> None:
    """transformers prints through its own handler ('[transformers] ...') and, under CI=true, through ours
    too; folded into ours: one format, once. Called only by commands that load a model (it imports
    transformers)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    logging.getLogger("transformers").setLevel(logging.WARNING)


# --- progress bars as lines -----------------------------------------------------------------------

EVERY_PERCENT = 10  # a line each time a bar passes the next 10%,
MIN_GAP_S = 2.0  # at least this long after the previous one (a bar over sooner than this prints nothing),
EVERY_S = 30.0  # and one at least this often (bars without a total, slow steps)
_UPSTREAM: dict[str, Any] = {}


def _line_mode(bar: Any) -> bool:
    isatty = getattr(getattr(bar, "fp", None), "isatty", None)
    try:
        return not (callable(isatty) and isatty())
    except (ValueError, OSError):  # a closed stream
        return True


def _line(bar: Any) -> str:
    meter = dict(bar.format_dict)
    meter["prefix"] = ""
    if meter.get("total"):
        meter["bar_format"] = "{percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
    else:
        meter["bar_format"] = "{n_fmt} [{elapsed}, {rate_fmt}{postfix}]"
    desc = str(bar.desc or "").rstrip(": ")
    return (f"{desc}: " if desc else "") + bar.format_meter(**meter)


def _emit(bar: Any, final: bool = False) -> None:
    """Print a line when the bar crossed the next 10%, 30 s passed, or it ended; else nothing."""
    now = time.monotonic()
    # (10% bucket, time and count of the last line); the clock starts at the bar's first display
    last_bucket, last_time, last_n = getattr(bar, "_saudial_line", (0, now, -1))
    bucket = int(bar.n * 100 / bar.total) // EVERY_PERCENT if bar.total else 0
    due = (bucket > last_bucket and now - last_time >= MIN_GAP_S) or now - last_time >= EVERY_S
    # The last line, unless the bar was over within MIN_GAP_S (a quick map over the data, a small load): a
    # line for what took no time at all is noise. Printed when the bar reaches its total, not when it is
    # closed: the Trainer closes its bar after its own closing lines, and 100% would come after them.
    last = final or bool(bar.total and bar.n >= bar.total)
    due = due or (last and bar.n != last_n and (last_n >= 0 or now - last_time >= MIN_GAP_S))
    if due and bar.n > 0:
        progress_log.info("%s", _line(bar))
        last_bucket, last_time, last_n = bucket, now, bar.n
    bar._saudial_line = (last_bucket, last_time, last_n)


def _display(self: Any, msg: str | None = None, pos: int | None = None) -> Any:
    if not _line_mode(self):
        return _UPSTREAM["display"](self, msg, pos)
    if msg is not None:  # tqdm erases a bar by displaying '': there is nothing to erase in a log
        return False
    _emit(self)
    return True


def _clear(self: Any, nolock: bool = False) -> None:
    if not _line_mode(self):
        _UPSTREAM["clear"](self, nolock)


def _close(self: Any) -> None:
    if getattr(self, "disable", True) or not _line_mode(self):
        _UPSTREAM["close"](self)
        return
    if self.leave or (self.leave is None and self.pos == 0):
        _emit(self, final=True)
    leave = self.leave
    self.leave = False  # upstream then erases instead of re-drawing and ending the line: nothing to write
    try:
        _UPSTREAM["close"](self)
    finally:
        self.leave = leave


def line_progress() -> None:
    """tqdm bars (Trainer, datasets' map, generation, downloads) print whole lines on a non-terminal.

    Upstream: tqdm (4.67) has no line mode; on a file it rewrites the bar after '\\r', and a log keeps
    every rewrite on one line. `display`, `clear` and `close` of tqdm's base class are wrapped, so every
    library's bars (their own subclasses included) follow; on a terminal they behave exactly as before.
    tests/test_logs.py checks that upstream still draws with '\\r' and that the wrapped methods exist.
    """
    from tqdm import std

    if _UPSTREAM:
        return
    for name, wrapper in (("display", _display), ("clear", _clear), ("close", _close)):
        _UPSTREAM[name] = getattr(std.tqdm, name)
        setattr(std.tqdm, name, wrapper)


# --- the settings at start ------------------------------------------------------------------------


def print_settings(rows: Sequence[tuple[str, Any, str]], sources: str) -> None:
    """The settings that differ from their defaults, with where each came from (all go to run_manifest.json)."""
    token = "HF_TOKEN set (never shown)" if os.environ.get("HF_TOKEN") else "HF_TOKEN not set"
    if not rows:
        log.info("settings: all defaults (%s; %s)", sources, token)
        return
    # Every value, name and origin escaped whole (newlines too): a value cannot forge a line of the table.
    shown = [
        (printable(name), printable(",".join(map(str, value)) if isinstance(value, list) else str(value)), printable(o))
        for name, value, o in rows
    ]
    width = max(len(name) for name, _, _ in shown)
    value_width = min(max(len(value) for _, value, _ in shown), 48)
    lines = [f"  {name:<{width}}  {value:<{value_width}}  {origin}" for name, value, origin in shown]
    log.info("settings that differ from the defaults (%s; %s):\n%s", sources, token, "\n".join(lines))

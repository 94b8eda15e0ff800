"""Command line: `saudial COMMAND [flags]`, the settings as flags that mirror the SAUDIAL_* variables.

`saudial` (the installed command), `python -m saudial` and `python entrypoint.py` are the same program.
`main()` turns every `SaudialError`, and every fault of the machine (disk full, read-only output, out of
memory), into one line on stderr and its exit code; any other exception is a bug in saudial: one line and
exit 1. `--debug` or SAUDIAL_DEBUG=1 prints the traceback too. The parser and its help are `parser.py`;
what the run prints (log format, filtered warnings, progress lines, the settings table) is `logs.py`.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from saudial.cli import logs
from saudial.cli.parser import parse
from saudial.config.huggingface import check_adapter_dir
from saudial.config.runtime import prepare_process
from saudial.config.settings import Settings, env_name, flag_name
from saudial.config.sources import changed_settings, load_settings
from saudial.errors import EXIT_BUG, EXIT_OK, OOM_ANY, as_user_error, one_line, redact, unexpected
from saudial.model import content_hash
from saudial.process import cuda_driver, distributed, signals
from saudial.process.collector import long_lived_imports

# The commands that load a model import their modules and the libraries under them (transformers at least:
# logs.fold_transformers_handler) with the garbage collector paused, then frozen: process/collector.py.


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    if not args.dry_run:  # while the libraries import: the GPU's driver starts, a local model's files are hashed
        cuda_driver.start_in_background(settings.num_processes)
        if distributed.is_main_process() and Path(settings.model_name_or_path).is_dir():
            content_hash.start(Path(settings.model_name_or_path))  # for the run record (model/content_hash.py)
    # SIGTERM from here to the exit is heard by saudial, whatever the phase (process/signals.py).
    with signals.watching():
        with long_lived_imports():  # pandas, transformers; torch, datasets and the rest once the data is read
            from saudial.jobs import train

            logs.fold_transformers_handler()
        return train.run(settings, dry_run=args.dry_run)


def run_check(args: argparse.Namespace, settings: Settings) -> int:
    from saudial.jobs.check import run_check as check

    return check(settings, quiet=args.quiet)


def run_chat(args: argparse.Namespace, settings: Settings) -> int:
    from saudial.jobs.chat import check_chat
    from saudial.jobs.chat import run_chat as chat

    # The arguments, the adapter's record and the input file first: a mistake answers before torch is imported.
    asked = check_chat(settings, args.adapter, args.message, args.system, args.input, args.output)
    with long_lived_imports():  # torch and PEFT
        logs.fold_transformers_handler()
    chat(settings, args.adapter, args.message, args.system, args.input, args.output, asked)
    return EXIT_OK


def run_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    with long_lived_imports():
        from saudial.jobs.evaluate import run_evaluate as evaluate

        logs.fold_transformers_handler()
    evaluate(settings, args.adapter)
    return EXIT_OK


def run_translate(args: argparse.Namespace, settings: Settings) -> int:
    from saudial.jobs.translate import check_translate
    from saudial.jobs.translate import run_translate as translate

    given = (args.text, args.dialect, args.context, args.input, args.output)
    asked = check_translate(settings, args.adapter, *given)  # before torch: a mistake answers at once
    with long_lived_imports():  # torch and PEFT
        logs.fold_transformers_handler()
    translate(settings, args.adapter, *given, asked=asked)
    return EXIT_OK


def run_merge(args: argparse.Namespace, settings: Settings) -> int:
    with long_lived_imports():
        from saudial.jobs.merge import merge

        logs.fold_transformers_handler()
    merge(settings, args.adapter, args.output)
    return EXIT_OK


def run_export(args: argparse.Namespace, settings: Settings) -> int:
    with long_lived_imports():
        from saudial.jobs.export import run_export as export

        logs.fold_transformers_handler()
    export(settings, args.adapter, args.output, args.quant, args.lora_only)
    return EXIT_OK


def run_push(args: argparse.Namespace, settings: Settings) -> int:
    from saudial.jobs.push import push

    push(settings, args.output_dir_arg)
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "train": run_train,
    "check": run_check,
    "translate": run_translate,
    "chat": run_chat,
    "evaluate": run_evaluate,
    "merge": run_merge,
    "export": run_export,
    "push": run_push,
}


def with_default_command(argv: list[str]) -> list[str]:
    """`train` is the default: `saudial --learning-rate 1e-4` means `saudial train --learning-rate 1e-4`."""
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        return ["train", *argv]
    return argv


def print_settings(settings: Settings, cli_values: dict[str, Any], args: argparse.Namespace) -> None:
    config = getattr(args, "config", None)
    sources = " > ".join(["flag", "SAUDIAL_* variable", *([str(config)] if config else []), "default"])
    logs.print_settings(changed_settings(settings, cli_values, config_file=config), sources)


def close_progress_bars() -> None:
    """A progress bar cut short by an exception leaves the cursor mid-line: end it first."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        bar.close()


def quiet_threads(debug: bool) -> None:
    """An exception in a library's thread prints no traceback (with --debug it does): a fault of the machine
    (TensorBoard's writer on a full disk) is said once, as the one error line, by the main thread, which
    meets it too (the writer raises it again there); anything else is one warning line."""
    if debug:
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None or isinstance(args.exc_value, SystemExit):
            return
        if isinstance(args.exc_value, Exception) and as_user_error(args.exc_value) is not None:
            return  # disk full, read-only, out of memory: the main thread's error line says it
        name = args.thread.name if args.thread is not None else "a thread"
        logs.log.warning("%s stopped: %s", name, one_line(unexpected(args.exc_value)))

    threading.excepthook = hook


def main(argv: Sequence[str] | None = None) -> int:
    prepare_process()  # the allocator, the kernel caches, bitsandbytes' deferred compile: before any library starts
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug (anywhere before a `--`) or SAUDIAL_DEBUG=1: a fault also prints its traceback.
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end] or os.environ.get("SAUDIAL_DEBUG", "").strip().lower() in ("1", "true", "yes")
    argv = with_default_command([a for i, a in enumerate(argv) if a != "--debug" or i >= end])
    args = parse(argv)
    logs.setup()
    quiet_threads(debug)
    distributed.quiet_other_ranks()
    cli_values: dict[str, Any] = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    try:
        own = [k for k in vars(args) if k not in Settings.model_fields and k != "command"]  # translate's --dialect
        settings = load_settings(cli_values, config_file=getattr(args, "config", None), flags=own)
        # Once per run, by the process that starts it (the launcher printed it for its ranks); inference
        # commands print no training settings.
        if args.command == "train" and distributed.is_main_process() and not distributed.launched_by_us():
            print_settings(settings, cli_values, args)
        if args.command == "train":
            return run_train(args, settings)  # its phases hear SIGTERM/SIGINT themselves (process/signals.py)
        # Any other command stops at once, exit 75; one that writes says there what it kept (process/signals.py).
        with signals.interruptible(f"`saudial {args.command}`", "nothing was written: run it again", at_once=True):
            if getattr(args, "adapter", None) is not None:
                check_adapter_dir(args.adapter)  # before the command imports torch and the model libraries
            return COMMANDS[args.command](args, settings)
    except (Exception, KeyboardInterrupt) as exc:
        # Every fault ends here as one line and a documented exit code (README, Exit codes): an error the
        # user can act on, a fault of the machine (disk, memory: errors.as_user_error), else a bug (1).
        error = as_user_error(exc, oom_advice=OOM_ANY) if isinstance(exc, Exception) else None
        close_progress_bars()  # the line goes on a line of its own, the last one
        if debug:
            print(redact("".join(traceback.format_exception(exc))), file=sys.stderr, end="")
        if isinstance(exc, KeyboardInterrupt):  # Ctrl-C where train hears only SIGTERM (README, Exit codes: 130)
            print("error: interrupted (Ctrl-C)", file=sys.stderr)
            return 130
        # One line, whatever the message holds: control characters escaped, any Hugging Face token redacted.
        if error is None:
            print(f"error: {one_line(unexpected(exc))}", file=sys.stderr)
            return EXIT_BUG
        if distributed.is_main_process() or not getattr(error, "shared", False):  # rank 0's, said once
            print(f"error: {one_line(as_given(str(error), cli_values))}", file=sys.stderr)
        return error.exit_code


def as_given(message: str, cli_values: dict[str, Any]) -> str:
    """`message` with each setting the user gave as a flag named by that flag: the modules name a setting by its
    variable (SAUDIAL_OUTPUT_DIR), which is also right, but not what was typed (--output-dir)."""
    for name in cli_values:
        message = re.sub(rf"\b{env_name(name)}\b", flag_name(name), message)
    return message


def run() -> None:
    """The program (`saudial`, entrypoint.py, `python -m saudial`): `main`, then its exit code whatever comes.

    After `main` returns every file the command writes is complete (and a run's, synced: rundir/staging.py). What
    is left is the interpreter's teardown, in this order: it waits for the threads that are not daemons, runs the
    `atexit` handlers (libraries' own: logging's, multiprocessing's, weakref finalizers), then frees every module
    and object, the CUDA context last: that third part took ~0.16 s of a 2-CPU machine's tiny CPU run, and
    ~0.5 s on a GPU machine. The first two run as always; the last `atexit` handler (registered first) ends the
    process there with `main`'s code, as the operating system frees memory and the GPU at once. A SIGTERM or
    Ctrl-C during the teardown ends it at once too (before, it killed the process as 143 or 130 with no line)."""
    ending: dict[str, int] = {}

    def exit_now(*_ignored: Any) -> None:
        if "code" not in ending:  # `main` did not return (argparse's exit, an error): the usual teardown
            return
        logging.shutdown()  # registered before this handler, so it would run after it: flushed here
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(ending["code"])

    atexit.register(exit_now)  # the first saudial registers: the last to run
    code = ending["code"] = main()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, exit_now)
    sys.exit(code)

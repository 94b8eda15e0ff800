"""Command line: `saudial COMMAND [flags]`, the settings as flags that mirror the SAUDIAL_* variables.

`saudial` (the installed command), `python -m saudial` and `python entrypoint.py` are the same program.
`main()` turns every `SaudialError` into one line on stderr and its exit code; any other exception
is a bug in saudial and keeps its traceback. The parser and its help are `parser.py`; what the run
prints (log format, filtered warnings, progress lines, the settings table) is `logs.py`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from saudial.cli import logs
from saudial.cli.parser import parse
from saudial.config.loading import changed_settings, load_settings
from saudial.config.runtime import configure_allocator
from saudial.config.settings import Settings
from saudial.errors import EXIT_OK, SaudialError
from saudial.run import distributed


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    from saudial.jobs import train

    logs.fold_transformers_handler()
    return train.run(settings, dry_run=args.dry_run)


def run_check(args: argparse.Namespace, settings: Settings) -> int:
    from saudial.jobs.check import run_check as check

    return check(settings, quiet=args.quiet)


def run_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from saudial.jobs.evaluate import run_evaluate as evaluate

    logs.fold_transformers_handler()
    evaluate(settings, args.adapter)
    return EXIT_OK


def run_translate(args: argparse.Namespace, settings: Settings) -> int:
    from saudial.jobs.translate import run_translate as translate

    logs.fold_transformers_handler()
    translate(settings, args.adapter, args.text, args.dialect, args.context, args.input, args.output)
    return EXIT_OK


def run_merge(args: argparse.Namespace, settings: Settings) -> int:
    from saudial.inference.merge import merge

    logs.fold_transformers_handler()
    merge(settings, args.adapter, args.output)
    return EXIT_OK


def run_push(args: argparse.Namespace, settings: Settings) -> int:
    from saudial.jobs.push import push

    push(settings, args.output_dir_arg)
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "train": run_train,
    "check": run_check,
    "translate": run_translate,
    "evaluate": run_evaluate,
    "merge": run_merge,
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


def main(argv: Sequence[str] | None = None) -> int:
    configure_allocator()  # before anything initializes CUDA
    argv = with_default_command(list(sys.argv[1:] if argv is None else argv))
    args = parse(argv)
    logs.setup()
    distributed.quiet_other_ranks()
    cli_values: dict[str, Any] = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    try:
        settings = load_settings(cli_values, config_file=getattr(args, "config", None))
        # Once per run, by the process that starts it (the launcher printed it for its ranks); inference
        # commands print no training settings.
        if args.command == "train" and distributed.is_main_process() and not distributed.launched_by_us():
            print_settings(settings, cli_values, args)
        return COMMANDS[args.command](args, settings)
    except SaudialError as exc:
        if distributed.is_main_process() or not getattr(exc, "shared", False):  # rank 0's, said once
            print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code

"""Command line: settings as flags that mirror the SAUDIAL_* variables, one subcommand per job.

`main()` turns every `SaudialError` into one line on stderr and its exit code; any other exception
is a bug in saudial and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from saudial import __version__
from saudial.config import Settings, env_name, flag_name, load_settings
from saudial.errors import EXIT_OK, SaudialError

log = logging.getLogger("saudial")


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; --help shows its variable, default and meaning."""
    group = parser.add_argument_group("settings (flag > SAUDIAL_* environment variable > default)")
    for name, info in Settings.model_fields.items():
        default = info.default_factory() if info.default_factory else info.default  # type: ignore[call-arg]
        if isinstance(default, list):
            default = ",".join(default)
        help_text = f"{info.description} [{env_name(name)}; default: {default}]"
        is_bool = info.annotation is bool
        group.add_argument(
            flag_name(name),
            flag_name(name).replace("-", "_").replace("__", "--", 1),  # --learning_rate works too
            dest=name,
            default=argparse.SUPPRESS,  # absent flags fall through to the environment
            nargs="?" if is_bool else None,
            const="true" if is_bool else None,
            metavar="BOOL" if is_bool else name.upper(),
            help=help_text,
        )


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # Library chatter below WARNING hides our own progress lines.
    for noisy in ("transformers", "datasets", "peft", "trl", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def print_config(settings: Settings) -> None:
    shown = settings.redacted()
    shown["HF_TOKEN"] = "set (redacted)" if os.environ.get("HF_TOKEN") else "not set"
    log.info("configuration:\n%s", json.dumps(shown, indent=2, ensure_ascii=False, default=str))


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    from saudial.train import train  # heavy imports only once the settings are known to be good

    train(settings, dry_run=args.dry_run)
    return EXIT_OK


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace, Settings], int]]]:
    parser = argparse.ArgumentParser(
        prog="entrypoint.py",
        description="Fine-tune LFM2-1.2B with QLoRA on the SauDial workbook (English -> Saudi dialects).",
        epilog="Exit codes: 0 ok, 2 bad settings or data, 3 training failed, 4 Hub upload failed, "
        "75 interrupted after saving a checkpoint (restart to resume).",
    )
    parser.add_argument("--version", action="version", version=f"saudial {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands: dict[str, Callable[[argparse.Namespace, Settings], int]] = {}

    train_parser = sub.add_parser(
        "train",
        help="train an adapter (the default command)",
        description=parser.description,
        epilog=parser.epilog,
    )
    train_parser.add_argument(
        "--dry-run", action="store_true", help="validate settings and data, print the summary, load no model"
    )
    add_settings_arguments(train_parser)
    commands["train"] = run_train
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, commands = build_parser()
    # `train` is the default: `entrypoint.py --learning-rate 1e-4` means `entrypoint.py train --learning-rate 1e-4`.
    if not argv or (argv[0] not in commands and argv[0] != "--version"):
        argv.insert(0, "train")
    args = parser.parse_args(argv)
    setup_logging()
    cli_values: dict[str, Any] = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    try:
        settings = load_settings(cli_values)
        print_config(settings)
        return commands[args.command](args, settings)
    except SaudialError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code

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
from pathlib import Path
from typing import Any

from saudial import __version__
from saudial.config.loading import load_settings
from saudial.config.runtime import configure_allocator
from saudial.config.settings import Settings, env_name, flag_name
from saudial.errors import EXIT_OK, SaudialError
from saudial.run import distributed

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
    logging.getLogger("saudial").setLevel(logging.INFO)
    # Library chatter below WARNING hides our own progress lines.
    for noisy in ("transformers", "datasets", "peft", "trl", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def print_config(settings: Settings) -> None:
    shown = settings.redacted()
    shown["HF_TOKEN"] = "set (redacted)" if os.environ.get("HF_TOKEN") else "not set"
    log.info("configuration:\n%s", json.dumps(shown, indent=2, ensure_ascii=False, default=str))


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    from saudial.jobs import train

    return train.run(settings, dry_run=args.dry_run)


def run_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from saudial.jobs.evaluate import run_evaluate as evaluate

    evaluate(settings, args.adapter)
    return EXIT_OK


def run_translate(args: argparse.Namespace, settings: Settings) -> int:
    from saudial.jobs.translate import run_translate as translate

    translate(settings, args.adapter, args.text, args.dialect, args.context, args.input, args.output)
    return EXIT_OK


def run_merge(args: argparse.Namespace, settings: Settings) -> int:
    from saudial.inference.merge import merge

    merge(settings, args.adapter, args.output)
    return EXIT_OK


def run_push(args: argparse.Namespace, settings: Settings) -> int:
    from saudial.jobs.push import push

    push(settings, args.output_dir_arg)
    return EXIT_OK


def add_inference_commands(
    sub: Any, commands: dict[str, Callable[[argparse.Namespace, Settings], int]], epilog: str | None
) -> None:
    """evaluate, translate, merge and push: the things to do with a trained adapter."""
    adapter_help = "a training output directory (adapter_config.json, tokenizer, run_manifest.json)"
    p = sub.add_parser(
        "evaluate",
        help="score base model vs adapter (chrF++, BLEU per dialect) on the run's eval split",
        description="Translate the held-out split with the base model and with the adapter; write "
        "metrics.json and eval_results.md (into --adapter, or SAUDIAL_OUTPUT_DIR when set).",
        epilog=epilog,
    )
    p.add_argument("--adapter", type=Path, required=True, help=adapter_help)
    add_settings_arguments(p)
    commands["evaluate"] = run_evaluate

    p = sub.add_parser(
        "translate",
        help="translate English text (or a file) with a trained adapter",
        description="Translate one English text (printed) or a .csv/.xlsx/.jsonl/.parquet file with an "
        "'English Text' column (written next to it as NAME.translated.EXT, never overwriting a file).",
        epilog=epilog,
    )
    p.add_argument("--adapter", type=Path, required=True, help=adapter_help)
    p.add_argument("--dialect", help="Najdi, Hijazi, Eastern or Southern (with --input: overrides the file's column)")
    p.add_argument("--context", help="in-game context line of the prompt (optional)")
    p.add_argument("--input", type=Path, help="file to translate instead of TEXT")
    p.add_argument("--output", type=Path, help="where --input's translations go (default: NAME.translated.EXT)")
    p.add_argument("text", nargs="?", metavar="TEXT", help="English text to translate")
    add_settings_arguments(p)
    commands["translate"] = run_translate

    p = sub.add_parser(
        "merge",
        help="merge the adapter into the base model (bf16) for vLLM / llama.cpp",
        description="Write base model + adapter as one bf16 model with its tokenizer, loadable by "
        "AutoModelForCausalLM.from_pretrained.",
        epilog=epilog,
    )
    p.add_argument("--adapter", type=Path, required=True, help=adapter_help)
    p.add_argument("--output", type=Path, required=True, help="directory for the merged model (new or empty)")
    add_settings_arguments(p)
    commands["merge"] = run_merge

    p = sub.add_parser(
        "push",
        help="upload a training output directory to the Hugging Face Hub (retries a failed upload)",
        description="Upload adapter, tokenizer, run_manifest.json, metrics.json and a model card to "
        "SAUDIAL_HUB_MODEL_ID (default: the run's). Needs HF_TOKEN with write access.",
        epilog=epilog,
    )
    # The run's directory, as the retry message names it; not SAUDIAL_OUTPUT_DIR's setting.
    p.add_argument("--output-dir", dest="output_dir_arg", type=Path, required=True, help="the run's output directory")
    for name in ("hub_model_id", "hub_private"):
        info = Settings.model_fields[name]
        is_bool = info.annotation is bool
        p.add_argument(
            flag_name(name),
            dest=name,
            default=argparse.SUPPRESS,
            nargs="?" if is_bool else None,
            const="true" if is_bool else None,
            help=f"{info.description} [{env_name(name)}]",
        )
    commands["push"] = run_push


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
    add_inference_commands(sub, commands, parser.epilog)
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    configure_allocator()  # before anything initializes CUDA
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, commands = build_parser()
    # `train` is the default: `entrypoint.py --learning-rate 1e-4` means `entrypoint.py train --learning-rate 1e-4`.
    if not argv or (argv[0] not in commands and argv[0] != "--version"):
        argv.insert(0, "train")
    args = parser.parse_args(argv)
    setup_logging()
    distributed.quiet_other_ranks()
    cli_values: dict[str, Any] = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    try:
        settings = load_settings(cli_values)
        if distributed.is_main_process() and not distributed.launched_by_us():  # the launcher printed it
            print_config(settings)
        return commands[args.command](args, settings)
    except SaudialError as exc:
        if distributed.is_main_process() or not getattr(exc, "shared", False):  # rank 0's, said once
            print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code

"""The command line's shape: `saudial COMMAND [flags]` and its help. Every setting is a flag (`--learning-rate`, also
`--learning_rate`, listed once) with its SAUDIAL_* variable and default; each command lists only the settings it uses,
in groups. Building the parser imports nothing heavy, so `--help` answers at once, without a GPU or the network."""

from __future__ import annotations

import argparse
import difflib
import inspect
import shutil
from pathlib import Path
from typing import Any

from saudial import __version__
from saudial.cli import export_flags as export
from saudial.cli.flags import add_setting, closest_flag, join_negative_values
from saudial.config.settings import Settings, env_name, flag_name
from saudial.errors import printable

# The settings in help groups, in the order the help shows them. tests/test_cli.py checks that every
# setting is in exactly one group, so a new setting must be placed here.
# fmt: off
GROUPS: dict[str, list[str]] = {
    "data": ["data", "task", "sheet_name", "dialects", "eval_size", "max_data_file_mb"],
    "model": ["model_name_or_path", "model_revision", "tokenizer_name_or_path", "quantization",
              "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "torch_dtype", "attn_implementation",
              "fused_rms_norm", "fused_kernels"],
    "LoRA": ["lora_r", "lora_alpha", "lora_dropout", "target_modules", "fused_lora", "dequantize_once"],
    "training": ["output_dir", "overwrite_output_dir", "learning_rate", "lr_scheduler_type", "warmup_ratio",
                 "weight_decay", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                 "gradient_accumulation_steps", "max_length", "padding_free", "pad_to_multiple_of", "torch_compile",
                 "gradient_checkpointing", "optim", "max_grad_norm", "logging_steps", "seed", "report_to",
                 "dataloader_num_workers", "save_steps", "save_total_limit", "resume", "num_processes"],
    "evaluation": ["eval", "max_eval_samples", "per_device_eval_batch_size", "max_new_tokens", "do_sample",
                   "temperature", "min_p", "repetition_penalty"],
    "Hub": ["push_to_hub", "hub_model_id", "hub_private", "hub_strategy"], "export": ["export"],
}
ALL = [name for names in GROUPS.values() for name in names]
DATA = [name for name in GROUPS["data"] if name != "task"]
GENERATION = ["per_device_eval_batch_size", "max_new_tokens", "do_sample", "temperature", "min_p", "repetition_penalty"]
BASE_MODEL = ["model_name_or_path", "model_revision", "quantization", "torch_dtype"]
BATCHING = ["per_device_train_batch_size", "gradient_accumulation_steps", "gradient_checkpointing", "torch_compile",
            "num_processes"]
# fmt: on

# The settings each command reads (the rest still come from SAUDIAL_* variables, and are checked there).
COMMAND_SETTINGS: dict[str, list[str]] = {
    "train": ALL,
    "check": [*GROUPS["data"], *BASE_MODEL, *BATCHING],
    # An adapter evaluates on the task it was trained for (its run_manifest.json), not SAUDIAL_TASK.
    "evaluate": [*DATA, *BASE_MODEL, "output_dir", "max_length", "seed", *GROUPS["evaluation"]],
    "translate": [*BASE_MODEL, *GENERATION, "max_length", "max_data_file_mb", "sheet_name"],
    "chat": [*BASE_MODEL, *GENERATION, "max_length", "max_data_file_mb"],
    "merge": ["model_name_or_path", "model_revision", "overwrite_output_dir"],
    "export": [*BASE_MODEL[:2], "overwrite_output_dir", "max_length", *GENERATION[1:], "export"],
    "push": ["hub_model_id", "hub_private"],
}

SUMMARY = {
    "train": "train an adapter (the default command): data -> 4-bit model + LoRA -> evaluation -> Hub",
    "check": "what this machine can do: GPU, bf16, bitsandbytes, Hub access, the settings it would pick",
    "translate": "translate English text (or a whole file) with a trained adapter",
    "chat": "reply to a message (or to a file of conversations) with a trained chat adapter",
    "evaluate": "score base model vs adapter (chrF++, BLEU per dialect) on the run's held-out split",
    "merge": "merge the adapter into the base model (bf16) for vLLM / llama.cpp",
    "export": "write the merged model as GGUF (llama.cpp, Ollama, LM Studio), checked by llama.cpp",
    "push": "upload a training output directory to the Hugging Face Hub (retries a failed upload)",
}

EXAMPLES = """\
examples:
  saudial check                                   what this machine can do (GPU, Hub, settings)
  saudial train --data "data/SauDial Dataset.xlsx"
  saudial train --config recipes/small-gpu.yaml   a recipe file; flags and SAUDIAL_* variables win over it
  saudial translate --adapter outputs --dialect Najdi "Open the old door."
  saudial chat --adapter outputs "Where is the market?"   a chat adapter (SAUDIAL_TASK=chat)
  saudial COMMAND --help                          the settings that COMMAND reads

Every setting is a flag and a SAUDIAL_* environment variable (flag > variable > recipe > default).
Exit codes: 0 ok, 1 a bug in saudial (one line; --debug or SAUDIAL_DEBUG=1 shows the traceback), 2 bad
settings or data, 3 out of memory, 4 Hub upload failed, 74 disk full or not writable, 75 stopped by SIGTERM
or Ctrl-C (train: after saving a checkpoint, start again to resume; the other commands write nothing),
130 Ctrl-C in train outside training."""

ADAPTER_HELP = "a training output directory (adapter_config.json, tokenizer, run_manifest.json)"
# What a command with --adapter takes from the adapter's run record unless set (generate.settings_for_adapter).
RECORDED = {"data", "sheet_name", "dialects", "eval_size", "max_length", "seed", *BASE_MODEL}
# A setting whose meaning in a command is not the one of training: (command, setting) -> (help, default shown).
OWN_HELP = {
    ("translate", "sheet_name"): ("The sheet of an --input .xlsx file to translate.", "the first sheet"),
    ("evaluate", "output_dir"): (
        "Where eval_results.md, metrics.json and the model card go: the adapter's folder, or a folder that holds "
        "evaluations only (new, empty, or an earlier evaluation's).",
        "--adapter",
    ),
}


def _formatter(prog: str) -> argparse.HelpFormatter:
    width = min(shutil.get_terminal_size((120, 24)).columns, 120)
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=36, width=width)


def add_settings(parser: argparse.ArgumentParser, names: list[str], recorded: set[str], command: str = "") -> None:
    """The settings among `names`, in their help groups; `recorded`: those that default to the adapter's."""
    for title, members in GROUPS.items():
        if chosen := [n for n in members if n in names]:
            group = parser.add_argument_group(f"{title} settings")
            for name in chosen:
                add_setting(group, name, name in recorded, OWN_HELP.get((command, name)))


def _command(
    sub: Any, name: str, description: str, usage: str, *, recipe: str = "", adapter: str = "", io: tuple[str, ...] = ()
) -> argparse.ArgumentParser:
    """One command: its help, `--config` (recipe: its help) and `--adapter` (adapter: its help) where it takes
    them, `ARG | --input FILE [--output FILE]` (io: ARG, its help, --input's, --output's; see
    jobs/translate.text_or_file), and its settings in their groups; the caller adds the command's own flags."""
    over = "a recipe, then " if recipe else "the adapter's run record, then " if adapter else ""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        prog=f"saudial {name}",
        help=SUMMARY[name],
        description=inspect.cleandoc(description),  # written as a docstring below
        usage=usage,
        formatter_class=_formatter,
        epilog=f"Flags win over SAUDIAL_* variables, which win over {over}the defaults.",
        allow_abbrev=False,  # argparse's default takes `--learning-rat` as --learning-rate: a typo must not pass
    )
    if recipe:
        parser.add_argument("--config", type=Path, metavar="RECIPE.yaml", help=recipe)
    if adapter:
        parser.add_argument("--adapter", type=Path, required=True, metavar="DIR", help=adapter)
    if io:
        argument, argument_help, input_help, output_help = io
        parser.add_argument("--input", type=Path, metavar="FILE", help=input_help)
        parser.add_argument("--output", type=Path, metavar="FILE", help=output_help)
        parser.add_argument(argument.lower(), nargs="?", metavar=argument, help=argument_help)
    add_settings(parser, COMMAND_SETTINGS[name], RECORDED if adapter else set(), name)  # after the command's flags
    return parser


def build_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<11}{summary}" for name, summary in SUMMARY.items())
    parser = argparse.ArgumentParser(
        prog="saudial",
        usage="saudial [-h] [--version] [--debug] COMMAND [flags]",
        description="Fine-tune LFM2-1.2B with QLoRA on the SauDial workbook (English -> Saudi dialects).\n\n"
        f"commands:\n{listing}",
        epilog=EXAMPLES,
        formatter_class=_formatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"saudial {__version__}")
    # Read (and removed from the arguments) by cli.main before parsing, so it works after the command too.
    parser.add_argument("--debug", action="store_true", help="on a fault, print the traceback too (SAUDIAL_DEBUG=1)")
    # The commands are listed in the description above, one line each; argparse's own listing is hidden.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help=argparse.SUPPRESS)

    p = _command(
        sub,
        "train",
        """Train a LoRA adapter on the 4-bit base model, evaluate it and (optionally) publish it. The default command:
        `saudial --learning-rate 1e-4` is `saudial train --learning-rate 1e-4`.""",
        "saudial train [--config RECIPE.yaml] [--dry-run] [setting flags]",
        recipe="a recipe: settings in YAML (see recipes/)",
    )
    dry_run = "check settings and data, print the data summary; counts tokens where the tokenizer loads; no weights"
    p.add_argument("--dry-run", action="store_true", help=dry_run)

    p = _command(
        sub,
        "check",
        """Say what this machine can do: Python, torch, CUDA and driver versions, the GPU, bf16 or fp16, bitsandbytes,
        the Hub and the token (never shown), and the settings a run would pick here. Exit 0 when training can run, 2
        when it cannot.""",
        "saudial check [--config RECIPE.yaml] [--quiet] [setting flags]",
        recipe="check the settings of this recipe",
    )
    p.add_argument("--quiet", action="store_true", help="print nothing when training can run (make train uses it)")

    p = _command(
        sub,
        "translate",
        """Translate one English TEXT (printed) or a .csv/.xlsx/.jsonl/.parquet file with an 'English Text' column
        (written next to it as NAME.translated.EXT, never over an existing file). The base model and its
        quantization come from the adapter's run_manifest.json unless set here.""",
        "saudial translate --adapter DIR [--dialect D] [--context C] (TEXT | --input FILE [--output FILE])",
        adapter=ADAPTER_HELP,
        io=("TEXT", "English text to translate", "file to translate instead of TEXT", "where its translations go"),
    )
    p.add_argument("--dialect", help="Najdi, Hijazi, Eastern or Southern (with --input: overrides the file's column)")
    p.add_argument("--context", help="in-game context line of the prompt (optional)")

    p = _command(
        sub,
        "chat",
        """Reply to one user MESSAGE (printed) with an adapter trained on conversations (SAUDIAL_TASK=chat), or to
        every conversation of a .jsonl/.parquet file ('messages' ending with the user's) and write the replies next
        to it as NAME.replies.EXT, never over an existing file. The base model and its quantization come from the
        adapter's run_manifest.json unless set here.""",
        "saudial chat --adapter DIR [--system TEXT] (MESSAGE | --input FILE [--output FILE])",
        adapter=ADAPTER_HELP,
        io=("MESSAGE", "the user's message", "conversations to reply to instead of MESSAGE", "where its replies go"),
    )
    p.add_argument("--system", metavar="TEXT", help="system prompt (with --input: replaces each conversation's)")

    p = _command(
        sub,
        "evaluate",
        """Translate the held-out split with the base model and with the adapter; write metrics.json and
        eval_results.md (into --adapter, or --output-dir when given). Data, split and base model come from the
        adapter's run_manifest.json unless set here.""",
        "saudial evaluate --adapter DIR [setting flags]",
        adapter=ADAPTER_HELP,
    )

    p = _command(
        sub,
        "merge",
        """Write base model + adapter as one bf16 model with its tokenizer, loadable by
        AutoModelForCausalLM.from_pretrained (vLLM, llama.cpp's converter).""",
        "saudial merge --adapter DIR --output DIR",
        adapter=ADAPTER_HELP,
    )
    p.add_argument("--output", type=Path, required=True, metavar="DIR", help="directory for the merged model")

    export.add_flags(_command(sub, "export", export.DESCRIPTION, export.USAGE, adapter=ADAPTER_HELP))

    p = _command(
        sub,
        "push",
        """Upload a finished run to SAUDIAL_HUB_MODEL_ID (default: the run's): adapter, tokenizer, run record, metrics,
        evaluation table, model card (README.md) and the GGUF export, if any. Needs HF_TOKEN with write access.""",
        "saudial push --output-dir DIR [--hub-model-id OWNER/NAME] [--hub-private BOOL]",
    )
    # The run's directory, as the retry message names it; not SAUDIAL_OUTPUT_DIR's setting.
    p.add_argument("--output-dir", dest="output_dir_arg", type=Path, required=True, metavar="DIR", help="the run")
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """The arguments; a flag this command does not take is an error that says which command does, or the flag it
    takes that is closest to it."""
    parser = build_parser()
    if argv and not argv[0].startswith("-") and argv[0] not in SUMMARY:  # argparse says "invalid choice" only
        close = difflib.get_close_matches(argv[0], list(SUMMARY), n=1)
        hint = f"did you mean `saudial {close[0]}`?" if close else f"the commands: {', '.join(SUMMARY)}"
        parser.exit(2, f"saudial: error: '{printable(argv[0])}' is not a command: {hint} (`saudial --help`)\n")
    command = _subparser(parser, argv[0]) if argv and argv[0] in SUMMARY else None
    takes_value = {o for a in command._actions if a.nargs != 0 for o in a.option_strings} if command else set()
    args, extra = parser.parse_known_args(join_negative_values(argv, takes_value))
    if extra:
        settings_flags = {flag_name(n): n for n in Settings.model_fields} | {"--" + n: n for n in Settings.model_fields}
        unknown = [e for e in extra if e.startswith("-")] or extra
        flag = unknown[0].split("=")[0]
        name = settings_flags.get(flag)
        listing = f"`saudial {args.command} --help` lists its flags"
        meant = None if name else closest_flag(flag, _listed(_subparser(parser, args.command)))
        if name:
            hint = f" (a setting of `saudial train`, also read from {env_name(name)}); {listing}"
        else:
            hint = f": did you mean {meant}? ({listing})" if meant else f"; {listing}"
        parser.exit(
            2, f"saudial {args.command}: error: {printable(flag)} is not a flag of `saudial {args.command}`{hint}\n"
        )
    return args


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = commands.choices[command]
    return found


def _listed(command: argparse.ArgumentParser) -> list[str]:
    """The long flags `command --help` shows."""
    return [o for a in command._actions if a.help != argparse.SUPPRESS for o in a.option_strings if o.startswith("--")]

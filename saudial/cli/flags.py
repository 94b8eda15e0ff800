"""One setting as a command-line flag: `--name-with-dashes` (and `--name_with_underscores`, accepted but not listed),
what it takes, and its help line with its SAUDIAL_* variable and default (cli/parser.py lays the flags out); a
negative number given as a flag's value, and the flag meant by one that is not a flag."""

from __future__ import annotations

import argparse
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

from saudial.config.settings import Settings, env_name, flag_name
from saudial.config.sources import default_of


def _strip_optional(annotation: Any) -> Any:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else args
    return annotation


def metavar(name: str) -> str:
    """BOOL, INT, X, PATH, LIST or {choice,...}: what the flag takes."""
    kind = _strip_optional(Settings.model_fields[name].annotation)
    if isinstance(kind, list):  # e.g. bool | Literal["auto"]
        choices = ["true", "false"] if bool in kind else []
        for part in kind:
            if typing.get_origin(part) is Literal:
                choices += [str(c) for c in typing.get_args(part)]
        return "{" + ",".join(choices) + "}"
    if typing.get_origin(kind) is Literal:
        return "{" + ",".join(str(c) for c in typing.get_args(kind)) + "}"
    if typing.get_origin(kind) is typing.Annotated or typing.get_origin(kind) is list:
        return "A,B,..."
    names = {bool: "BOOL", int: "INT", float: "X", Path: "PATH", str: "TEXT"}
    return names.get(kind, "VALUE")


def shown_default(name: str) -> str:
    default = default_of(name)
    if isinstance(default, list):
        return ",".join(default)
    return "none" if default is None else str(default).lower() if isinstance(default, bool) else str(default)


def add_setting(group: Any, name: str, recorded: bool = False, own: tuple[str, str] | None = None) -> None:
    """`--name-with-dashes`, and `--name_with_underscores` accepted but not listed. `recorded`: by default
    the adapter's (its run record's), not the setting's default; `own`: the command's help and default (OWN_HELP)."""
    info = Settings.model_fields[name]
    is_bool = info.annotation is bool
    kwargs: dict[str, Any] = {
        "dest": name,
        "default": argparse.SUPPRESS,  # an absent flag falls through to the variable, the recipe, the default
        "nargs": "?" if is_bool else None,
        "const": "true" if is_bool else None,
        "metavar": "BOOL" if is_bool else metavar(name),
    }
    default = "the adapter's run record" if recorded else shown_default(name)
    described = info.description or ""
    if recorded:  # required by train; here the adapter's run record has it
        described = described.removesuffix(" Required.")
    if own is not None:
        described, default = own
    text = f"{described} [{env_name(name)}; default: {default}]"
    group.add_argument(flag_name(name), help=text, **kwargs)
    alias = "--" + name
    if alias != flag_name(name):
        group.add_argument(alias, help=argparse.SUPPRESS, **kwargs)


# Names other tools give these settings: a flag by one of them is answered with saudial's.
OTHER_NAMES = {
    "--lr": "learning_rate",
    "--epochs": "num_train_epochs",
    "--batch-size": "per_device_train_batch_size",
    "--bs": "per_device_train_batch_size",
    "--model": "model_name_or_path",
    "--rank": "lora_r",
    "--r": "lora_r",
    "--alpha": "lora_alpha",
    "--output": "output_dir",
    "--max-seq-length": "max_length",
    "--max-seq-len": "max_length",
    "--dataset": "data",
}
# A value that starts with '-' and is a number (`-1e-4`): argparse reads only `-1` and `-0.5` as numbers, and
# would take `-1e-4` for a flag ("expected one argument"), so it is joined to its flag (`--flag=-1e-4`).
_NUMBER = re.compile(r"-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|-inf|-nan", re.IGNORECASE)


def join_negative_values(argv: list[str], takes_value: set[str]) -> list[str]:
    """`argv` with each number that starts with '-' joined to the flag before it, where that flag takes a value."""
    joined: list[str] = []
    for arg in argv:
        if joined and joined[-1] in takes_value and _NUMBER.fullmatch(arg):
            joined[-1] += "=" + arg
        else:
            joined.append(arg)
    return joined


def closest_flag(flag: str, listed: list[str]) -> str | None:
    """The flag among `listed` closest to `flag`, or the one that another tool's name for it stands for."""
    spelled = flag.replace("_", "-").lower()
    other = OTHER_NAMES.get(spelled)
    if other and flag_name(other) in listed:
        return flag_name(other)
    close = difflib.get_close_matches(spelled, listed, n=1, cutoff=0.6)
    return close[0] if close else None

"""One setting as a command-line flag: `--name-with-dashes` (and `--name_with_underscores`, accepted but not listed),
what it takes, and its help line with its SAUDIAL_* variable and default (cli/parser.py lays the flags out)."""

from __future__ import annotations

import argparse
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

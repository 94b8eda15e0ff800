"""Where settings come from: CLI flags > SAUDIAL_* environment variables > a recipe file > defaults.

`load_settings` is the one way a command gets its `Settings`. The recipe (`--config recipe.yaml`) is read
once, as data files are (config/reading.py: a regular file only, at most RECIPE_MAX_BYTES, refused at once
otherwise), parsed with yaml.safe_load and handed to pydantic-settings as a source below the environment
(its `InitSettingsSource`, the base of its own YAML source); a typo in a SAUDIAL_* name or a recipe key,
and an invalid value anywhere, all end as one `ConfigError` line that names the variable, flag or file
and the fix.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource

from saudial.config.reading import Unreadable, read_regular
from saudial.config.settings import ENV_PREFIX, NON_SETTING_VARIABLES, Settings, env_name, flag_name
from saudial.errors import ConfigError, printable

RECIPE_SUFFIXES = (".yaml", ".yml")
# The largest recipe saudial reads: the shipped ones are 1-2 KB (one line per setting, with comments), so
# 64 KB is room for every setting and long comments; a larger file is not a recipe (a log, a data file,
# /dev/zero behind a symlink), and parsing megabytes of YAML takes minutes.
RECIPE_MAX_BYTES = 64 * 1024


def check_unknown_env(environ: Mapping[str, str], flags: Iterable[str] = ()) -> None:
    """A typo such as SAUDIAL_LEARNIGN_RATE must not be silently ignored. `flags`: the command's own flags (not
    settings: translate's --dialect), which no variable sets."""
    known = {env_name(name) for name in Settings.model_fields} | NON_SETTING_VARIABLES
    own = {env_name(flag): "--" + flag.replace("_", "-") for flag in flags}
    for key in sorted(environ):
        if key.startswith(ENV_PREFIX) and key not in known:
            if key in own:
                flag = own[key]
                raise ConfigError(f"{key} is not read: this command takes {flag} as a flag (pass {flag}, unset {key})")
            raise ConfigError(f"unknown setting {key}: {_closest(key, known)} (unset it or fix the name)")


def _closest(name: str, known: Iterable[str], prefix: str = "") -> str:
    by_key = {k.casefold(): k for k in known}
    close = difflib.get_close_matches(name.casefold().replace("-", "_"), sorted(by_key), n=1, cutoff=0.6)
    return f"did you mean {prefix}{by_key[close[0]]}?" if close else "`saudial train --help` lists the settings"


def read_recipe(path: Path) -> dict[str, Any]:
    """A recipe's keys and values, checked: an existing YAML mapping of known setting names."""
    import yaml

    shown = printable(str(path))
    if path.suffix.lower() not in RECIPE_SUFFIXES:
        raise ConfigError(f"--config {shown}: a recipe is a .yaml file (see recipes/)")
    try:
        text = read_regular(path, RECIPE_MAX_BYTES).decode("utf-8")
    except Unreadable as why:
        raise ConfigError(f"--config {shown}: {_unreadable(why)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config {shown}: it is not UTF-8 text (a recipe is YAML text)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"--config {shown} is not valid YAML{where}: {printable(str(problem))}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {shown} must be a mapping of `setting: value` lines, e.g. `learning_rate: 2.0e-4`")
    for key in data:
        if str(key) not in Settings.model_fields:
            raise ConfigError(
                f"--config {shown}: unknown setting {printable(repr(str(key)))}: "
                f"{_closest(str(key), Settings.model_fields)} (fix or remove it)"
            )
    return {str(k): v for k, v in data.items()}


def _unreadable(why: Unreadable) -> str:
    if why.why == Unreadable.MISSING:
        return "file not found (recipes/ holds the shipped recipes)"
    if why.why == Unreadable.DANGLING:
        return "it is a symlink that points to nothing: fix the link or give the recipe file itself"
    if why.why == Unreadable.NOT_REGULAR:
        return f"it is {why.detail}, not a recipe: give a .yaml file (recipes/ holds the shipped recipes)"
    if why.why == Unreadable.TOO_BIG:
        return (
            f"it is {why.size:,} bytes, over the {RECIPE_MAX_BYTES // 1024} KB a recipe may have (the shipped ones "
            "are 1-2 KB): check that it is the right file"
        )
    return f"cannot read it: {why.detail}"


def _with_recipe(recipe: dict[str, Any]) -> type[Settings]:
    """Settings whose sources are flags, the environment, then the recipe's values (read by `read_recipe`)."""

    class RecipeSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            # Highest first: flags (init arguments), SAUDIAL_* variables, the recipe. (No .env or secrets
            # directory: saudial reads neither.)
            return init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=recipe)

    return RecipeSettings


def load_settings(
    cli_values: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    flags: Iterable[str] = (),
) -> Settings:
    """Defaults < recipe file < SAUDIAL_* environment < CLI flags. Raises ConfigError with one actionable line.
    `flags`: the command's own flags, which are not settings (check_unknown_env)."""
    environ = os.environ if environ is None else environ
    check_unknown_env(environ, flags)
    recipe = read_recipe(config_file) if config_file is not None else {}
    cls = Settings if config_file is None else _with_recipe(recipe)
    try:
        # Init arguments take precedence over every other source in pydantic-settings.
        loaded = cls(**dict(cli_values))
    except ValidationError as exc:
        raise ConfigError(_explain(exc, cli_values, environ, recipe, config_file)) from None
    if cls is Settings:
        return loaded
    # A plain Settings again (what every consumer and test expects), with the same explicitly set fields.
    values = {name: getattr(loaded, name) for name in Settings.model_fields}
    return Settings.model_construct(_fields_set=set(loaded.model_fields_set), **values)


def _explain(
    exc: ValidationError,
    cli_values: Mapping[str, Any],
    environ: Mapping[str, str],
    recipe: Mapping[str, Any],
    config_file: Path | None,
) -> str:
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else ""
    message = error["msg"].removeprefix("Value error, ")
    if not field or field not in Settings.model_fields:
        return f"invalid settings: {message}"
    if field in cli_values:
        where, value = flag_name(field), cli_values[field]
    elif env_name(field) in environ or field not in recipe:
        where, value = env_name(field), environ.get(env_name(field), error.get("input"))
    else:
        where, value = f"{printable(str(config_file))}: {field}", recipe[field]
    about = f"default: {default_of(field)!r}; {Settings.model_fields[field].description}"
    return f"{where}={value!r} is invalid: {message}. Fix it or unset it ({about})"


def default_of(name: str) -> Any:
    info = Settings.model_fields[name]
    return info.default_factory() if info.default_factory else info.default  # type: ignore[call-arg]


def changed_settings(
    settings: Settings,
    cli_values: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> list[tuple[str, Any, str]]:
    """(name, value, origin) of every setting whose value is not its default, in the settings' order.

    The origin is where the value came from: "flag", "env" or the recipe file. (A setting given its
    default value explicitly is not listed: it changes nothing.)
    """
    environ = os.environ if environ is None else environ
    recipe = read_recipe(config_file) if config_file is not None else {}
    dumped = settings.redacted()
    rows = []
    for name in Settings.model_fields:
        if getattr(settings, name) == default_of(name):
            continue
        if name in cli_values:
            where = "flag"
        elif env_name(name) in environ:
            where = "env"
        elif name in recipe:
            where = str(config_file)
        else:
            where = "default"
        rows.append((name, dumped[name], where))
    return rows


def settings_table() -> str:
    """The README's settings table, made from the fields (tests/test_config.py keeps the README in step)."""
    lines = ["| variable (flag) | default | meaning |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = default_of(name)
        if isinstance(default, list):
            default = ",".join(default)
        lines.append(f"| `{env_name(name)}` (`{flag_name(name)}`) | `{default}` | {info.description} |")
    return "\n".join(lines) + "\n"

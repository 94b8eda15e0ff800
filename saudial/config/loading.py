"""Where settings come from: CLI flags > SAUDIAL_* environment variables > defaults.

`load_settings` is the one way a command gets its `Settings`; a typo in a SAUDIAL_* name and an
invalid value both end as one `ConfigError` line that names the variable or flag and the fix.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from saudial.config.settings import ENV_PREFIX, NON_SETTING_VARIABLES, Settings, env_name, flag_name
from saudial.errors import ConfigError


def check_unknown_env(environ: Mapping[str, str]) -> None:
    """A typo such as SAUDIAL_LEARNIGN_RATE must not be silently ignored."""
    known = {env_name(name) for name in Settings.model_fields} | NON_SETTING_VARIABLES
    for key in sorted(environ):
        if key.startswith(ENV_PREFIX) and key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "see `python entrypoint.py --help` for the settings"
            raise ConfigError(f"unknown setting {key}: {hint} (unset it or fix the name)")


def load_settings(cli_values: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults < SAUDIAL_* environment < CLI flags. Raises ConfigError with one actionable line."""
    environ = os.environ if environ is None else environ
    check_unknown_env(environ)
    try:
        # Init arguments take precedence over the environment in pydantic-settings.
        return Settings(**dict(cli_values))
    except ValidationError as exc:
        raise ConfigError(_explain(exc, cli_values, environ)) from None


def _explain(exc: ValidationError, cli_values: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else ""
    message = error["msg"].removeprefix("Value error, ")
    if not field or field not in Settings.model_fields:
        return f"invalid settings: {message}"
    if field in cli_values:
        where, value = flag_name(field), cli_values[field]
    else:
        where, value = env_name(field), environ.get(env_name(field), error.get("input"))
    info = Settings.model_fields[field]
    default = info.default_factory() if info.default_factory else info.default  # type: ignore[call-arg]
    return f"{where}={value!r} is invalid: {message}. Fix it or unset it (default: {default!r}; {info.description})"


def settings_table() -> str:
    """The README's settings table, made from the fields (tests/test_config.py keeps the README in step)."""
    lines = ["| variable (flag) | default | meaning |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = info.default_factory() if info.default_factory else info.default  # type: ignore[call-arg]
        if isinstance(default, list):
            default = ",".join(default)
        lines.append(f"| `{env_name(name)}` (`{flag_name(name)}`) | `{default}` | {info.description} |")
    return "\n".join(lines) + "\n"

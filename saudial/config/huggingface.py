"""Hugging Face's own environment (HF_HUB_OFFLINE, HF_ENDPOINT, the cache), read through huggingface_hub.

huggingface_hub parses these variables when it is imported (`huggingface_hub.constants`); saudial asks
its constants instead of parsing them a second time, so "offline" means exactly what it means to the
library that does the downloads and uploads.

`check_model_access` is the pre-flight of every model or tokenizer load: without it, a machine without
the Hub (no network, no DNS, a proxy that drops the connection) learns it after huggingface_hub's
retries, about a minute of "Retrying in 8s" lines. One HEAD request to the endpoint, through
huggingface_hub's own HTTP session (its proxy and CA settings) with a short timeout, tells at once;
the answer is kept for the rest of the process.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from safetensors import safe_open

from saudial.config.reading import Unreadable, read_regular
from saudial.errors import ConfigError, printable

# Seconds the reachability probe waits for the endpoint (connection and answer). A reachable Hub answers
# a HEAD in well under a second; a black-holed network is declared unreachable after this long.
PROBE_TIMEOUT_S = 3.0


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


@functools.cache
def hub_unreachable(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the Hub endpoint answers (any HTTP status), else why not, in a few words. Asked once."""
    import httpx2
    from huggingface_hub.utils import get_session

    try:
        get_session().head(hub_endpoint(), timeout=timeout, follow_redirects=False)
    except (httpx2.TransportError, OSError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return None


def in_cache(repo_id: str, revision: str, filename: str = "config.json") -> bool:
    """Whether `filename` of the Hub repo `repo_id` at `revision` is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
    except ValueError:  # not a valid repo id (HFValidationError)
        return False
    return isinstance(found, str)


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or bool(re.match(r"^[A-Za-z]:\\", name))


def check_model_access(
    name: str, revision: str, setting: str = "SAUDIAL_MODEL_NAME_OR_PATH", filename: str = "config.json"
) -> None:
    """Can `name` (a local directory or a Hub repo id) be loaded here? ConfigError (one line) if not.

    A local directory always can. A Hub id can when the Hub answers, or, with HF_HUB_OFFLINE=1, when
    it is in the cache. Anything else is said at once, with the model id and the fix.
    """
    if Path(name).expanduser().is_dir():
        return
    if _looks_like_path(name):
        raise ConfigError(f"{setting}={name!r} is not a directory: give the base model's local directory or a Hub id")
    cached = in_cache(name, revision, filename)
    if hub_offline():
        if cached:
            return
        raise ConfigError(
            f"the model {name!r} is not in the Hugging Face cache ({hub_cache()}) and HF_HUB_OFFLINE=1 forbids "
            f"downloading it: unset HF_HUB_OFFLINE to download it, or set {setting}=/local/dir"
        )
    why = hub_unreachable()
    if why is None:
        return
    fix = (
        "it is in the cache: set HF_HUB_OFFLINE=1 to use it from there"
        if cached
        else f"set HF_HUB_OFFLINE=1 with the model in the cache (HF_HOME), or {setting}=/local/dir"
    )
    raise ConfigError(f"cannot reach {hub_endpoint()} to load the model {name!r} ({why}): {fix}")


def not_here(name: str, revision: str, filename: str = "tokenizer_config.json") -> str | None:
    """Why the Hub repo `name` cannot be read here (not cached, and offline or the Hub unreachable), else None
    (a local directory, a path, a cached or reachable repo: loading it says what else is wrong)."""
    if Path(name).expanduser().is_dir() or _looks_like_path(name) or in_cache(name, revision, filename):
        return None
    if hub_offline():
        return f"{name!r} is not in the Hugging Face cache ({hub_cache()}) and HF_HUB_OFFLINE=1"
    why = hub_unreachable()
    return None if why is None else f"{name!r} is not in the Hugging Face cache and {hub_endpoint()} is unreachable"


def fetch_command(name: str, revision: str) -> str:
    """The command that puts the small files of `name` (config, tokenizer, chat template) in the cache."""
    pinned = "" if revision == "main" else f" --revision {revision}"
    return f"hf download {name}{pinned} --include '*.json' --include '*.jinja'"


# adapter_config.json is a few hundred bytes; anything this large is not one.
ADAPTER_CONFIG_MAX_BYTES = 1 << 20


def check_adapter_dir(adapter_dir: Path) -> None:
    """--adapter names a training run's output whose adapter_config.json is a JSON object: checked by the
    command line before any model library is imported (seconds), and again by every adapter load."""
    where = f"--adapter {printable(str(adapter_dir))!r}"
    config = adapter_dir / "adapter_config.json"
    if not config.is_file():
        what = "does not exist" if not adapter_dir.exists() else "is a file" if not adapter_dir.is_dir() else None
        raise ConfigError(
            f"{where} {what or 'holds no adapter_config.json'}: point it at the output directory of a training run "
            "(SAUDIAL_OUTPUT_DIR)"
        )
    try:
        parsed = json.loads(read_regular(config, ADAPTER_CONFIG_MAX_BYTES).decode("utf-8"))
        why = None if isinstance(parsed, dict) else "not a JSON object"
    except Unreadable as exc:
        why = f"too large ({exc.size:,} bytes)" if exc.why == Unreadable.TOO_BIG else f"unreadable ({exc.detail})"
    except UnicodeDecodeError:
        why = "not UTF-8 text"
    except ValueError:
        why = "not valid JSON"
    if why is not None:
        raise ConfigError(
            f"{where}: {printable(str(config))} is damaged ({why}): restore the run's output directory (or "
            "download the adapter from the Hub again), or train it again"
        )


def check_adapter_weights(adapter_dir: Path) -> None:
    """The adapter's weights are safetensors whose header reads: a pickle (adapter_model.bin) is never loaded,
    and a damaged file is named (exit 2) before any model loads."""
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        pickle = (adapter_dir / "adapter_model.bin").is_file()
        raise ConfigError(
            f"--adapter {str(adapter_dir)!r} has "
            + (
                "only adapter_model.bin, a pickle, which saudial never loads (loading one can run code): save the "
                "adapter with safe_serialization=True to get adapter_model.safetensors"
                if pickle
                else "no adapter_model.safetensors: point it at the output directory of a finished training run"
            )
        )
    try:
        with safe_open(str(weights), framework="pt") as opened:
            opened.keys()
    except Exception as exc:  # safetensors' own error: its first words say what (e.g. HeaderTooLarge)
        why = printable(str(exc).strip().splitlines()[0][:120]) if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"--adapter {printable(str(adapter_dir))!r}: {printable(str(weights))} is damaged ({why}): restore the "
            "run's output directory (or download the adapter from the Hub again), or train it again"
        ) from None

"""Publishing to the Hugging Face Hub: a pre-flight check before training, the upload after it.

The token is huggingface_hub's own business: it reads HF_TOKEN (or the saved login) and sends it in
the Authorization header. saudial only asks whether there is one (`get_token()`) and never prints,
logs or stores it; error messages are built from status codes and the server's message only.

Before training (`preflight`), a push that is bound to fail stops the run at once with exit code 2:
no token, a malformed repo id, HF_HUB_OFFLINE set, a Hub that cannot be reached, a token the Hub
rejects, a read-only token, or a namespace the token's owner cannot write to. A Hub that answers
with a server error (5xx) or a rate limit is only warned about: that is likely passing, and the
upload retries anyway.

After training (`push`), the adapter, tokenizer, run_manifest.json, metrics.json, eval_results.md
and a model card (README.md, see card.py) are uploaded in one commit. Connection errors and 5xx
answers are retried with backoff; anything that still fails raises PushError (exit code 4), whose
message names the cause and the command that retries: `python -m saudial push --output-dir DIR`.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from saudial.config import Settings
from saudial.errors import ConfigError, PushError
from saudial.manifest import MANIFEST, read_json

log = logging.getLogger(__name__)

T = TypeVar("T")

# Seconds to wait before each retry of a transient failure (connection error, 5xx, 429).
RETRY_DELAYS_S = (1.0, 3.0, 9.0)
UPLOAD_PATTERNS = [
    "adapter_model.safetensors",
    "adapter_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    MANIFEST,
    "metrics.json",
    "eval_results.md",
    "README.md",
]
# The Hub's rules for a repo name: 1-96 characters of letters, digits, '-', '_', '.', not starting or
# ending with '-' or '.', no '--' or '..'.
_NAME = r"(?!.*(--|\.\.))[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?"
REPO_ID = re.compile(rf"{_NAME}/{_NAME}")


def retry_command(output_dir: Path) -> str:
    return f"python -m saudial push --output-dir {output_dir}"


def check_repo_id(repo_id: str | None) -> str:
    if not repo_id:
        raise ConfigError("SAUDIAL_PUSH_TO_HUB=true needs SAUDIAL_HUB_MODEL_ID=owner/name (the Hub repo to create)")
    if not REPO_ID.fullmatch(repo_id):
        raise ConfigError(
            f"SAUDIAL_HUB_MODEL_ID={repo_id!r} is not a valid Hub repo id: it must be 'owner/name', each part "
            "1-96 letters, digits, '-', '_' or '.', not starting or ending with '-' or '.', without '--' or '..'"
        )
    return repo_id


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _is_connection_error(exc: BaseException) -> bool:
    import httpx2

    return isinstance(exc, httpx2.TransportError | ConnectionError | TimeoutError) and _status(exc) is None


def _is_transient(exc: BaseException) -> bool:
    status = _status(exc)
    return _is_connection_error(exc) or (status is not None and (status >= 500 or status == 429))


def _server_message(exc: BaseException) -> str:
    """The first line of the Hub's answer, without anything from the request (headers hold the token)."""
    server = getattr(exc, "server_message", None)
    text = str(server or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def preflight(settings: Settings) -> None:
    """Before anything heavy: would an upload at the end of this run work? ConfigError (exit 2) if not."""
    if not settings.push_to_hub:
        return
    from huggingface_hub import HfApi, get_token

    repo_id = check_repo_id(settings.hub_model_id)
    if _offline():
        raise ConfigError(
            "SAUDIAL_PUSH_TO_HUB=true cannot upload while HF_HUB_OFFLINE is set: unset HF_HUB_OFFLINE, or set "
            "SAUDIAL_PUSH_TO_HUB=false and push later with `python -m saudial push --output-dir DIR`"
        )
    token = get_token()
    if not token:
        raise ConfigError(
            "SAUDIAL_PUSH_TO_HUB=true needs a Hugging Face token with write access: set HF_TOKEN "
            "(https://huggingface.co/settings/tokens), or set SAUDIAL_PUSH_TO_HUB=false"
        )
    endpoint = _endpoint()
    try:
        who = _with_retries(lambda: HfApi().whoami(token=token), "checking HF_TOKEN", delays=RETRY_DELAYS_S[:1])
    except Exception as exc:
        status = _status(exc)
        if status == 401:
            raise ConfigError(
                f"HF_TOKEN was rejected by {endpoint} (401 Unauthorized: invalid or expired): create a new token "
                "with write access at https://huggingface.co/settings/tokens, or set SAUDIAL_PUSH_TO_HUB=false"
            ) from None
        if _is_connection_error(exc):
            raise ConfigError(
                f"cannot reach {endpoint} to check HF_TOKEN ({_server_message(exc)}): the upload at the end would "
                "fail too. Fix the network (or HF_ENDPOINT), or set SAUDIAL_PUSH_TO_HUB=false and push later"
            ) from None
        if status is not None and _is_transient(exc):
            log.warning("could not verify HF_TOKEN now (%s %s); training anyway", status, _server_message(exc))
            return
        raise ConfigError(f"checking HF_TOKEN with {endpoint} failed: {_server_message(exc)}") from None
    check_write_access(who, repo_id)
    log.info("Hub pre-flight ok: token of %r can write to %s", who.get("name"), repo_id)


def check_write_access(who: dict[str, Any], repo_id: str) -> None:
    """A read token, or a namespace that is neither the user nor one of their orgs, cannot push."""
    access = (who.get("auth") or {}).get("accessToken") or {}
    role = access.get("role")
    if role == "read":
        raise ConfigError(
            "HF_TOKEN is a read-only token: the upload needs a token with write access "
            "(https://huggingface.co/settings/tokens), or set SAUDIAL_PUSH_TO_HUB=false"
        )
    owner = repo_id.split("/")[0]
    names = {who.get("name")} | {org.get("name") for org in who.get("orgs") or [] if isinstance(org, dict)}
    if who.get("name") and owner not in names:
        raise ConfigError(
            f"SAUDIAL_HUB_MODEL_ID={repo_id!r}: the token belongs to {who.get('name')!r}, who is not "
            f"{owner!r} nor a member of it (namespaces: {', '.join(sorted(str(n) for n in names if n))})"
        )
    # Fine-grained tokens carry per-repo scopes; the Hub decides at upload time, and a refusal then
    # ends with exit code 4 and the retry command.


def _with_retries(call: Callable[[], T], what: str, delays: tuple[float, ...] = RETRY_DELAYS_S) -> T:
    """Run `call`; retry transient failures after each of `delays` seconds (plus jitter)."""
    for attempt in range(len(delays) + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == len(delays) or not _is_transient(exc):
                raise
            wait = delays[attempt] * (1 + 0.1 * random.random())
            log.warning(
                "%s failed (%s): retrying in %.0fs (%d/%d)",
                what,
                _status(exc) or _server_message(exc),
                wait,
                attempt + 1,
                len(delays),
            )
            time.sleep(wait)
    raise AssertionError("unreachable")


def hub_settings(settings: Settings, output_dir: Path) -> tuple[str, bool]:
    """Repo id and visibility: the flags/variables of this command, else what the run recorded."""
    recorded = (read_json(output_dir / MANIFEST) or {}).get("config") or {}
    repo_id = settings.hub_model_id if "hub_model_id" in settings.model_fields_set else None
    repo_id = repo_id or recorded.get("hub_model_id") or settings.hub_model_id
    private = settings.hub_private if "hub_private" in settings.model_fields_set else recorded.get("hub_private", True)
    return check_repo_id(repo_id), bool(private)


def push(settings: Settings, output_dir: Path) -> str:
    """Upload a finished run's directory; returns the repo URL. PushError (exit 4) if it fails."""
    from huggingface_hub import HfApi, get_token

    from saudial.card import write_card

    if not (output_dir / "adapter_config.json").is_file():
        raise ConfigError(f"{output_dir} holds no adapter (adapter_config.json): is it a training output directory?")
    repo_id, private = hub_settings(settings, output_dir)
    retry = retry_command(output_dir)
    if _offline():
        raise PushError(
            f"cannot upload while HF_HUB_OFFLINE is set; the adapter is in {output_dir}: unset it and run `{retry}`"
        )
    if not get_token():
        raise PushError(f"no Hugging Face token: set HF_TOKEN (write access) and run `{retry}`")
    write_card(output_dir, repo_id)
    api = HfApi()
    endpoint = _endpoint()
    files = sorted(p.name for p in output_dir.iterdir() if p.is_file() and p.name in UPLOAD_PATTERNS)
    log.info("uploading %s to %s/%s (%s)", ", ".join(files), endpoint, repo_id, "private" if private else "public")
    try:
        url = _with_retries(
            lambda: api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model"), "creating the repo"
        )
        _with_retries(
            lambda: api.upload_folder(
                repo_id=repo_id,
                folder_path=output_dir,
                allow_patterns=UPLOAD_PATTERNS,
                commit_message="Upload LFM2 SauDial LoRA adapter (saudial)",
                repo_type="model",
            ),
            "uploading",
        )
    except Exception as exc:
        raise PushError(explain_failure(exc, repo_id, output_dir, endpoint)) from None
    log.info("uploaded to %s", url)
    return str(url)


def explain_failure(exc: BaseException, repo_id: str, output_dir: Path, endpoint: str) -> str:
    status = _status(exc)
    retry = f"the adapter is safe in {output_dir}; retry the upload with: {retry_command(output_dir)}"
    if status == 401:
        cause = "401 Unauthorized: HF_TOKEN is invalid or expired (create a new one with write access)"
    elif status == 403:
        cause = f"403 Forbidden: HF_TOKEN has no write access to {repo_id!r} (use a write token, or another repo id)"
    elif status == 404:
        cause = f"404 Not Found: {repo_id!r} does not exist or is not visible to this token"
    elif status is not None:
        cause = f"{status} {_server_message(exc)}"
        if _is_transient(exc):
            cause += f" (still failing after {len(RETRY_DELAYS_S)} retries)"
    elif _is_connection_error(exc):
        cause = f"cannot reach {endpoint} ({_server_message(exc)}; retried {len(RETRY_DELAYS_S)} times)"
    else:
        cause = f"{type(exc).__name__}: {_server_message(exc)}"
    return f"upload to {endpoint}/{repo_id} failed: {cause}; {retry}"

"""All Hugging Face Hub I/O: a pre-flight check before training, the upload after it, and the Hub copy
of the newest checkpoint (SAUDIAL_HUB_STRATEGY=checkpoint). One retry policy serves them all
(`_with_retries`: connection errors, 5xx and 429 are retried after 1, 3 and 9 s).

The token is huggingface_hub's own business: it reads HF_TOKEN (or the saved login) and sends it in
the Authorization header. saudial only asks whether there is one (`get_token()`) and never prints,
logs or stores it; error messages are built from status codes and the server's message only, and that
message passes through errors.redact first (a server or proxy may echo the request's headers).

Before training (`preflight`), a push bound to fail stops the run at once with exit code 2: no token,
a bad repo id, HF_HUB_OFFLINE set, no Hub reachable, a token the Hub rejects, a read-only token, or a
namespace the token's owner cannot write to. A 5xx or 429 answer only warns: likely passing.

The upload (`push`, after training or by `saudial push`: jobs/push.py) sends the adapter, tokenizer, run
record, eval_results.md and model card in one commit, without local paths (publish/hub_files.py). Without a
token, or with HF_HUB_OFFLINE set, it does not start: ConfigError (exit 2), as before training. A failure of
the upload itself that outlasts the retries raises PushError (exit code 4) naming the cause and the command
that retries it (`saudial push --output-dir DIR`, with the repo id when the run's record does not hold it).
No pickle goes up or down.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from saudial.config.huggingface import hub_endpoint, hub_offline
from saudial.config.settings import Settings
from saudial.config.settings import check_repo_id as settings_check_repo_id
from saudial.errors import ConfigError, PushError, redact
from saudial.rundir.checkpoints import MARKER, PREFIX, TRAINING_ARGS, problem
from saudial.rundir.record import HUB_DOWNLOAD, MANIFEST, METRICS, RESULTS_MD, STAGING, read_json

log = logging.getLogger(__name__)

T = TypeVar("T")

# The Hub folder that holds the newest checkpoint of a run with hub_strategy=checkpoint; what is fetched
# of it (never the Trainer's pickle of its arguments: resuming does not read it).
HUB_FOLDER = "last-checkpoint"
FETCH, NO_PICKLE = [f"{HUB_FOLDER}/*"], [f"*{TRAINING_ARGS}"]
# Seconds to wait before each retry of a transient failure (connection error, 5xx, 429).
RETRY_DELAYS_S = (1.0, 3.0, 9.0)
# To the Hub: adapter, tokenizer, run record, evaluation table, card, GGUF folder (no checkpoints, logs, pickles).
ADAPTER = ["adapter_model.safetensors", "adapter_config.json"]
TOKENIZER = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"]
TOKENIZER += ["chat_template.jinja", "vocab.json", "merges.txt", "tokenizer.model"]
UPLOAD_PATTERNS = [*ADAPTER, *TOKENIZER, MANIFEST, METRICS, RESULTS_MD, "README.md"]
UPLOAD_PATTERNS += [f"gguf/{n}" for n in ("*.gguf", "Modelfile", "README.md", MANIFEST)]


def check_repo_id(repo_id: str | None, missing: str = "") -> str:
    """`repo_id` checked (ConfigError, exit 2); `missing`: the message without one."""
    if not repo_id:
        raise ConfigError(missing or "SAUDIAL_PUSH_TO_HUB=true needs SAUDIAL_HUB_MODEL_ID=owner/name (the Hub repo)")
    try:
        return settings_check_repo_id(repo_id)
    except ValueError as exc:
        raise ConfigError(f"SAUDIAL_HUB_MODEL_ID={repo_id!r}: {exc}") from None


def _status(exc: BaseException) -> int | None:
    return getattr(getattr(exc, "response", None), "status_code", None)


def _is_connection_error(exc: BaseException) -> bool:
    import httpx2

    return isinstance(exc, httpx2.TransportError | ConnectionError | TimeoutError) and _status(exc) is None


def _is_transient(exc: BaseException) -> bool:
    status = _status(exc)
    return _is_connection_error(exc) or (status is not None and (status >= 500 or status == 429))


def _server_message(exc: BaseException) -> str:
    """The first line of the Hub's answer, without anything from the request (headers hold the token)."""
    server = getattr(exc, "server_message", None)
    text = redact(str(server or exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def preflight(settings: Settings) -> None:
    """Before anything heavy: would an upload at the end of this run work? ConfigError (exit 2) if not."""
    if not settings.push_to_hub:
        return
    from huggingface_hub import HfApi, get_token

    repo_id = check_repo_id(settings.hub_model_id)
    if hub_offline():
        raise ConfigError(
            "SAUDIAL_PUSH_TO_HUB=true cannot upload while HF_HUB_OFFLINE is set: unset HF_HUB_OFFLINE, or set "
            "SAUDIAL_PUSH_TO_HUB=false and push later with `saudial push --output-dir DIR`"
        )
    token = get_token()
    if not token:
        raise ConfigError(
            "SAUDIAL_PUSH_TO_HUB=true needs a Hugging Face token with write access: set HF_TOKEN "
            "(https://huggingface.co/settings/tokens), or set SAUDIAL_PUSH_TO_HUB=false"
        )
    endpoint = hub_endpoint()
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
    """A read token, or a namespace that is neither the user nor one of their orgs, cannot push. (Fine-grained
    tokens carry per-repo scopes: the Hub decides at upload time, and a refusal then ends in exit code 4.)"""
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


def _with_retries(call: Callable[[], T], what: str, delays: tuple[float, ...] = RETRY_DELAYS_S) -> T:
    """Run `call`; retry transient failures after each of `delays` seconds (plus jitter)."""
    for attempt in range(len(delays) + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == len(delays) or not _is_transient(exc):
                raise
            wait, why = delays[attempt] * (1 + 0.1 * random.random()), _status(exc) or _server_message(exc)
            log.warning("%s failed (%s): retrying in %.0fs (%d/%d)", what, why, wait, attempt + 1, len(delays))
            time.sleep(wait)
    raise AssertionError("unreachable")


def check_upload(retry: str) -> None:
    """ConfigError (exit 2) without a token or with HF_HUB_OFFLINE set, naming `retry` (the command to run then)."""
    from huggingface_hub import get_token

    if hub_offline():
        raise ConfigError(f"cannot upload while HF_HUB_OFFLINE is set: unset it and run `{retry}`")
    if not get_token():
        raise ConfigError(
            f"no Hugging Face token: set HF_TOKEN to a token with write access "
            f"(https://huggingface.co/settings/tokens) and run `{retry}`"
        )


def push(output_dir: Path, repo_id: str, private: bool, retry: str, replaced: Mapping[str, bytes]) -> str:
    """Upload a finished run's directory (its model card written already) to `repo_id`, the files named in `replaced`
    as those bytes (publish/hub_files.py); returns the repo URL.

    The caller has run `check_upload` (jobs/push.py, before the card); PushError (exit 4) naming `retry` (the
    command that retries it) if the upload fails."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.utils import filter_repo_objects

    api = HfApi()
    endpoint = hub_endpoint()
    # The run's files that UPLOAD_PATTERNS allow, matched by huggingface_hub's own filter (as upload_folder does).
    found = sorted(p.relative_to(output_dir).as_posix() for p in output_dir.rglob("*") if p.is_file())
    files = list(filter_repo_objects(found, allow_patterns=UPLOAD_PATTERNS))
    log.info("uploading %s to %s/%s (%s)", ", ".join(files), endpoint, repo_id, "private" if private else "public")
    if changed := [f for f in files if f in replaced]:
        log.info("the Hub's %s name no path of this machine (the folder's copies are unchanged)", ", ".join(changed))
    try:
        url = _with_retries(
            lambda: api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model"), "creating the repo"
        )
        _with_retries(
            lambda: api.create_commit(
                repo_id=repo_id,
                operations=[CommitOperationAdd(f, replaced[f] if f in replaced else output_dir / f) for f in files],
                commit_message="Upload LFM2 SauDial LoRA adapter (saudial)",
                repo_type="model",
            ),
            "uploading",
        )
    except Exception as exc:
        cause = explain_failure(exc, repo_id, endpoint)
        raise PushError(f"{cause}; the adapter is safe in {output_dir}; retry the upload with: {retry}") from None
    log.info("uploaded to %s", url)
    return str(url)


def explain_failure(exc: BaseException, repo_id: str, endpoint: str) -> str:
    status = _status(exc)
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
    return f"upload to {endpoint}/{repo_id} failed: {cause}"


# --- the Hub copy of the latest checkpoint (SAUDIAL_HUB_STRATEGY=checkpoint) ----------------------------


def upload_checkpoint(settings: Settings, checkpoint: Path) -> bool:
    """Replace `last-checkpoint/` in the Hub repo with `checkpoint` in one commit. Failures only warn."""
    from huggingface_hub import HfApi

    repo_id, api = settings.hub_model_id, HfApi()
    assert repo_id is not None  # push_to_hub requires it (config validation)
    try:
        _with_retries(
            lambda: api.create_repo(repo_id, private=settings.hub_private, exist_ok=True), "creating the repo"
        )
        _with_retries(
            lambda: api.upload_folder(
                repo_id=repo_id,
                folder_path=checkpoint,
                path_in_repo=HUB_FOLDER,
                commit_message=f"saudial {checkpoint.name}",
                ignore_patterns=NO_PICKLE,  # the Trainer's pickle: never uploaded (nor needed to resume)
                delete_patterns="*",  # files of the previous checkpoint that this one does not have
            ),
            f"uploading {checkpoint.name}",
        )
    except Exception as exc:  # network, auth, quota: training goes on, the local checkpoint is intact
        log.warning("could not upload %s to %s: %s", checkpoint.name, repo_id, _server_message(exc))
        return False
    log.info("uploaded %s to %s/%s", checkpoint.name, settings.hub_model_id, HUB_FOLDER)
    return True


def download_checkpoint(settings: Settings, fingerprint: str) -> Path | None:
    """Fetch the Hub repo's `last-checkpoint/` into OUTPUT_DIR/staging as checkpoint-N if it is this run's."""
    from huggingface_hub import snapshot_download

    repo_id, run_dir = settings.hub_model_id, settings.output_dir / STAGING
    assert repo_id is not None
    download = run_dir / HUB_DOWNLOAD
    try:
        _with_retries(
            lambda: snapshot_download(repo_id, local_dir=download, allow_patterns=FETCH, ignore_patterns=NO_PICKLE),
            "downloading the checkpoint",
        )
    except Exception as exc:  # no repo yet, offline, no access: start from step 0
        log.info("no checkpoint on the Hub to resume from (%s: %s)", type(exc).__name__, _server_message(exc))
        shutil.rmtree(download, ignore_errors=True)
        return None
    source = download / HUB_FOLDER
    marker = read_json(source / MARKER)
    try:
        if marker is None:
            log.info("no checkpoint on the Hub to resume from (%s/%s has none)", repo_id, HUB_FOLDER)
            return None
        if marker.get("fingerprint") != fingerprint:
            raise ConfigError(
                f"the checkpoint in {repo_id}/{HUB_FOLDER} is of a run with other training settings "
                "or data: use another SAUDIAL_HUB_MODEL_ID, or delete that folder from the repo"
            )
        target = run_dir / f"{PREFIX}{int(marker['step'])}"
        shutil.rmtree(target, ignore_errors=True)  # in staging, saudial's own folder
        source.rename(target)
        reason = problem(target, fingerprint)
        if reason is not None:
            log.warning("the Hub's checkpoint is incomplete (%s): starting from step 0", reason)
            shutil.rmtree(target, ignore_errors=True)
            return None
        return target
    finally:
        shutil.rmtree(download, ignore_errors=True)

"""`saudial push`, and the last step of a run with SAUDIAL_PUSH_TO_HUB: model card, then the upload.

The repo id and visibility are this command's flags or variables, else what the run recorded. A failed
upload (exit 4) names the command that retries it as it is: with `--hub-model-id` (and `--hub-private`)
where they did not come from the run's record. SIGTERM/SIGINT never cuts the card short; it stops the
upload at once (exit 75): a Hub commit is all or nothing, and the run stays as it is on disk.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from saudial.config.settings import Settings
from saudial.errors import ConfigError
from saudial.process import signals
from saudial.publish import hub
from saudial.publish.card import CARD, write_card
from saudial.publish.hub_files import hub_copies
from saudial.rundir import record
from saudial.rundir.record import MANIFEST, read_json


def retry_command(output_dir: Path, repo_id: str | None = None, private: bool | None = None) -> str:
    """The `saudial push` command line for `output_dir`, with the repo id and visibility when given."""
    words = ["saudial", "push", "--output-dir", str(output_dir)]
    words += ["--hub-model-id", repo_id] if repo_id else []
    words += ["--hub-private", str(private).lower()] if private is not None else []
    return shlex.join(words)


def target(settings: Settings, output_dir: Path) -> tuple[str, bool, str]:
    """Repo id, visibility, and the command that retries this upload."""
    if not (output_dir / "adapter_config.json").is_file():
        raise ConfigError(f"{output_dir} holds no adapter (adapter_config.json): is it a training output directory?")
    recorded = (read_json(output_dir / MANIFEST) or {}).get("config") or {}
    given = settings.model_fields_set
    repo_id = settings.hub_model_id if "hub_model_id" in given else None
    repo_id = repo_id or recorded.get("hub_model_id") or settings.hub_model_id
    missing = f"push needs the Hub repo: pass --hub-model-id owner/name (or set SAUDIAL_HUB_MODEL_ID); {output_dir}'s"
    repo_id = hub.check_repo_id(repo_id, f"{missing} run record names none")
    private = bool(settings.hub_private if "hub_private" in given else recorded.get("hub_private", True))
    retry = retry_command(
        output_dir,
        repo_id if repo_id != recorded.get("hub_model_id") else None,
        private if private != recorded.get("hub_private", True) else None,
    )
    return repo_id, private, retry


def push(settings: Settings, output_dir: Path) -> str:
    """Write the model card into `output_dir`, then upload the run; returns the repo URL."""
    repo_id, private, retry = target(settings, output_dir)  # refuses a directory that holds no adapter
    hub.check_upload(retry)  # no token, HF_HUB_OFFLINE: refused before the card is written
    with signals.deferred("the model card"):
        record.own(output_dir, CARD)  # the run's file from now on (a later overwrite may replace it)
        write_card(output_dir, repo_id)
    then = f"the finished run is in {output_dir}, not uploaded: upload it with `{retry}`"
    with signals.interruptible("the upload", then, at_once=True):
        return hub.push(output_dir, repo_id, private, retry, hub_copies(output_dir))

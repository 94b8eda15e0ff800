"""`saudial push`, and the last step of a run with SAUDIAL_PUSH_TO_HUB: model card, then the upload."""

from __future__ import annotations

from pathlib import Path

from saudial.config.settings import Settings
from saudial.publish import hub
from saudial.publish.card import CARD, write_card
from saudial.rundir import record


def push(settings: Settings, output_dir: Path) -> str:
    """Write the model card into `output_dir`, then upload the run; returns the repo URL."""
    repo_id, _private = hub.hub_settings(settings, output_dir)  # refuses a directory that holds no adapter
    record.own(output_dir, CARD)  # the run's file from now on (a later overwrite may replace it)
    write_card(output_dir, repo_id)
    return hub.push(settings, output_dir)

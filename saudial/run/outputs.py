"""The output directory: start fresh, resume the run that is there, or refuse, before any model loads.

`prepare_output_dir` decides (the rules are in its docstring and docs/resume.md) and writes the run's
record with status running and the fingerprint, so the next start can tell whether it is the same run.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saudial.errors import ConfigError
from saudial.run import distributed, record
from saudial.run.checkpoints import checkpoint_step, latest_valid
from saudial.run.record import now, read_json

if TYPE_CHECKING:
    from saudial.config.settings import Settings

log = logging.getLogger(__name__)

# A finished run is known by these, where its manifest predates the `status` field.
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


@dataclass
class ResumePlan:
    """What `prepare_output_dir` decided: start fresh (checkpoint None) or continue from a checkpoint."""

    fingerprint: str
    checkpoint: Path | None = None
    step: int = 0
    attempts: list[dict[str, Any]] = field(default_factory=list)


def _is_finished(manifest: dict[str, Any], output_dir: Path) -> bool:
    if "status" in manifest:
        return bool(manifest["status"] == record.FINISHED)
    return all((output_dir / name).is_file() for name in ADAPTER_FILES)  # a manifest from before `status`


def explain_mismatch(earlier: dict[str, Any], settings: Settings, data_sha256: str) -> str:
    """The training settings and data that differ between the earlier run's manifest and this run."""
    differences: list[str] = []
    before = earlier.get("config") if isinstance(earlier.get("config"), dict) else {}
    now_config = settings.redacted()
    for name, value in now_config.items():
        if name in record.NOT_TRAINING or not before or name not in before:
            continue
        if before[name] != value:
            differences.append(f"{name}: {before[name]!r} -> {value!r}")
    earlier_data = earlier.get("data") if isinstance(earlier.get("data"), dict) else {}
    earlier_sha = earlier_data.get("sha256") if earlier_data else None
    if earlier_sha and earlier_sha != data_sha256:
        differences.append(f"data sha256: {earlier_sha[:12]}... -> {data_sha256[:12]}...")
    return "; ".join(differences) or "the fingerprint differs (settings or data of another version of saudial)"


def _wipe(output_dir: Path) -> None:
    for child in output_dir.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def _check_writable(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to SAUDIAL_OUTPUT_DIR={str(output_dir)!r}: {exc.strerror}") from None


def prepare_output_dir(
    settings: Settings,
    fingerprint: str,
    data_sha256: str,
    fetch_checkpoint: Callable[[], Path | None] | None = None,
) -> ResumePlan:
    """Decide fresh / resume / refuse for this output directory; write the `running` manifest. Rank 0 only.

    - empty or missing directory: start fresh, or from the checkpoint `fetch_checkpoint` brings (the Hub's
      last checkpoint, with hub_strategy=checkpoint: jobs/train.py passes publish.hub's download);
    - an unfinished run with the same fingerprint and resume=auto: continue from its newest valid
      checkpoint (broken newer ones are deleted with a warning), or from step 0 if none is valid yet;
      SAUDIAL_OVERWRITE_OUTPUT_DIR does not discard it (the result would be the same, only later);
    - anything else (a finished run, another configuration or data, files that are not a run,
      resume=never with an earlier run) is refused with exit 2 unless SAUDIAL_OVERWRITE_OUTPUT_DIR=true,
      which deletes the directory's contents first.
    """
    output_dir = settings.output_dir
    where = f"SAUDIAL_OUTPUT_DIR={str(output_dir)!r}"
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"{where} is a file, not a directory")
    plan = ResumePlan(fingerprint=fingerprint)
    earlier = read_json(output_dir / record.MANIFEST) if output_dir.is_dir() else None
    if output_dir.is_dir() and any(output_dir.iterdir()):
        refusal = _refusal(settings, earlier, fingerprint, data_sha256)
        if refusal is None:
            plan = _resume_local(settings, fingerprint, earlier or {})
        elif settings.overwrite_output_dir:
            log.warning("overwriting the earlier run in %s (SAUDIAL_OVERWRITE_OUTPUT_DIR=true)", output_dir)
            _wipe(output_dir)
            earlier = None
        else:
            raise ConfigError(f"{where} {refusal}")
    _check_writable(output_dir)
    if plan.checkpoint is None and fetch_checkpoint is not None:
        downloaded = fetch_checkpoint()
        if downloaded is not None:
            plan.checkpoint, plan.step = downloaded, checkpoint_step(downloaded) or 0
            log.info("resuming from %s (step %d), downloaded from the Hub", downloaded.name, plan.step)
    previous = earlier.get("attempts") if earlier and earlier.get("fingerprint") == fingerprint else None
    plan.attempts = [
        *(previous if isinstance(previous, list) else []),
        {"started": now(), "resumed_from_step": plan.step},
    ]
    record.start(output_dir, settings, fingerprint, data_sha256, plan.attempts, distributed.world_size())
    return plan


def _refusal(settings: Settings, earlier: dict[str, Any] | None, fingerprint: str, data_sha256: str) -> str | None:
    """Why a non-empty output directory cannot be used as it is; None when the run may continue there."""
    fix = "choose another directory, or set SAUDIAL_OVERWRITE_OUTPUT_DIR=true to delete it and start over"
    if earlier is None or "fingerprint" not in earlier:
        return f"already holds files that are not a saudial run in progress: {fix}"
    if _is_finished(earlier, settings.output_dir):
        return f"already holds a finished run (its adapter and manifest): {fix}"
    if earlier["fingerprint"] != fingerprint:
        return (
            "holds an unfinished run with other training settings or data, so its checkpoints cannot be resumed "
            f"by this one ({explain_mismatch(earlier, settings, data_sha256)}): restore those settings to resume "
            f"it, or {fix}"
        )
    if settings.resume == "never":
        return (
            "holds an unfinished run of this configuration and SAUDIAL_RESUME=never: "
            f"use SAUDIAL_RESUME=auto to continue it, or {fix}"
        )
    return None


def _resume_local(settings: Settings, fingerprint: str, earlier: dict[str, Any]) -> ResumePlan:
    plan = ResumePlan(fingerprint=fingerprint)
    checkpoint, skipped = latest_valid(settings.output_dir, fingerprint)
    for path, reason in skipped:
        if reason.startswith("it belongs to"):
            raise ConfigError(
                f"{path} {reason}, although the manifest in SAUDIAL_OUTPUT_DIR says this run's: remove that folder "
                "or use another SAUDIAL_OUTPUT_DIR"
            )
        log.warning("skipping incomplete checkpoint %s: %s; deleting it", path.name, reason)
        shutil.rmtree(path, ignore_errors=True)
    if checkpoint is None:
        log.info(
            "continuing the unfinished run in %s from step 0: it has no complete checkpoint yet", settings.output_dir
        )
        return plan
    plan.checkpoint, plan.step = checkpoint, checkpoint_step(checkpoint) or 0
    log.info("resuming from %s (step %d)", checkpoint.name, plan.step)
    return plan

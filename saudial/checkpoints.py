"""Checkpoints, resume, and stopping cleanly on SIGTERM: what a job on a preemptible GPU needs.

- The Trainer writes ``checkpoint-N`` every `save_steps` optimizer steps (adapter, optimizer, scheduler,
  RNG states, trainer state). Once it has, `CheckpointCallback` writes ``saudial_checkpoint.json`` into
  it: the step, the run's fingerprint and every file's size and sha256. Only a checkpoint with a marker
  whose files all match is valid; one killed mid-save (SIGKILL, power loss) has no marker or a file
  that does not match, is skipped with a warning and deleted when the run resumes. The callback, not
  the Trainer, deletes old checkpoints (keeping `save_total_limit`), and only after the new one is
  marked: at every moment at least one valid checkpoint is on disk once the first was written.
- `prepare_output_dir` decides, before any model is loaded, whether this run starts fresh, resumes, or
  must refuse (the rules are in its docstring and docs/resume.md), and writes the run's manifest with
  ``status: running`` and the fingerprint, so the next start can tell whether it is the same run.
- `StopOnSignal`: SIGTERM/SIGINT finish the current optimizer step, write a checkpoint and stop; the
  caller then raises `Interrupted` (exit 75). A process that runs as PID 1 in a container ignores
  SIGTERM unless it has a handler; this is that handler.
- With ``SAUDIAL_PUSH_TO_HUB=true SAUDIAL_HUB_STRATEGY=checkpoint`` each valid checkpoint is also
  uploaded to ``last-checkpoint/`` of the Hub repo (one commit, replacing the previous one), and a run
  that finds no checkpoint on disk resumes from there.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from saudial import distributed
from saudial.config import Settings
from saudial.data import sha256_of
from saudial.errors import ConfigError
from saudial.manifest import (
    MANIFEST,
    NOT_TRAINING,
    device_name,
    git_revision,
    now,
    read_json,
    versions,
    write_json,
)

log = logging.getLogger(__name__)

MARKER = "saudial_checkpoint.json"
PREFIX = "checkpoint-"
HUB_FOLDER = "last-checkpoint"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
# What the Trainer needs to resume exactly; a checkpoint without one of these is not valid.
REQUIRED = ("adapter_model.safetensors", "trainer_state.json", "optimizer.pt", "scheduler.pt")


@dataclass
class ResumePlan:
    """What `prepare_output_dir` decided: start fresh (checkpoint None) or continue from a checkpoint."""

    fingerprint: str
    checkpoint: Path | None = None
    step: int = 0
    attempts: list[dict[str, Any]] = field(default_factory=list)


# --- checkpoint folders ---------------------------------------------------------------------------


def checkpoint_step(path: Path) -> int | None:
    match = re.fullmatch(rf"{PREFIX}(\d+)", path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Checkpoint folders in `output_dir`, oldest step first."""
    if not output_dir.is_dir():
        return []
    found = [(step, p) for p in output_dir.iterdir() if (step := checkpoint_step(p)) is not None]
    return sorted(found)


def write_marker(checkpoint: Path, step: int, fingerprint: str) -> None:
    """Declare `checkpoint` complete: the list of its files with sizes and hashes, written last, atomically."""
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != MARKER):
        with path.open("rb") as handle:
            os.fsync(handle.fileno())  # the data is on disk before the marker that vouches for it
        files[path.relative_to(checkpoint).as_posix()] = {"size": path.stat().st_size, "sha256": sha256_of(path)}
    write_json(
        checkpoint / MARKER,
        {"saudial_checkpoint": 1, "step": step, "fingerprint": fingerprint, "written": now(), "files": files},
    )


def problem(checkpoint: Path, fingerprint: str | None = None) -> str | None:
    """Why `checkpoint` cannot be resumed from, or None when it is complete and intact."""
    marker = read_json(checkpoint / MARKER)
    if marker is None:
        return f"no {MARKER} (the save did not finish)"
    if fingerprint is not None and marker.get("fingerprint") != fingerprint:
        return "it belongs to a run with another configuration or data"
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        return f"{MARKER} lists no files"
    for name in REQUIRED:
        if name not in files:
            return f"{name} is missing"
    for name, expected in files.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected.get("size"):
            return f"{name} has {path.stat().st_size} bytes, expected {expected.get('size')}"
        if sha256_of(path) != expected.get("sha256"):
            return f"{name} does not match its sha256"
    return None


def latest_valid(output_dir: Path, fingerprint: str) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest valid checkpoint, and the newer broken ones that were passed over (with the reason)."""
    skipped: list[tuple[Path, str]] = []
    for _step, path in reversed(list_checkpoints(output_dir)):
        reason = problem(path, fingerprint)
        if reason is None:
            return path, skipped
        skipped.append((path, reason))
    return None, skipped


def rotate(output_dir: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; delete older and broken ones below the newest kept."""
    complete = [(s, p) for s, p in list_checkpoints(output_dir) if (p / MARKER).is_file()]
    if not complete:
        return
    kept = {p for _s, p in complete[-keep:]}
    newest = complete[-1][0]
    for step, path in list_checkpoints(output_dir):
        if path not in kept and step < newest:
            shutil.rmtree(path, ignore_errors=True)


# --- the output directory: fresh, resume, or refuse ------------------------------------------------


def _is_finished(manifest: dict[str, Any], output_dir: Path) -> bool:
    if "status" in manifest:
        return bool(manifest["status"] == "finished")
    return all((output_dir / name).is_file() for name in ADAPTER_FILES)  # a manifest from before `status`


def explain_mismatch(earlier: dict[str, Any], settings: Settings, data_sha256: str) -> str:
    """The training settings and data that differ between the earlier run's manifest and this run."""
    differences: list[str] = []
    before = earlier.get("config") if isinstance(earlier.get("config"), dict) else {}
    now_config = settings.redacted()
    for name, value in now_config.items():
        if name in NOT_TRAINING or not before or name not in before:
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


def prepare_output_dir(settings: Settings, fingerprint: str, data_sha256: str) -> ResumePlan:
    """Decide fresh / resume / refuse for this output directory; write the `running` manifest. Rank 0 only.

    - empty or missing directory: start fresh (or from the Hub's last checkpoint, with hub_strategy=checkpoint);
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
    earlier = read_json(output_dir / MANIFEST) if output_dir.is_dir() else None
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
    if plan.checkpoint is None and settings.push_to_hub and settings.hub_strategy == "checkpoint":
        downloaded = download_checkpoint(settings, fingerprint)
        if downloaded is not None:
            plan.checkpoint, plan.step = downloaded, checkpoint_step(downloaded) or 0
            log.info("resuming from %s (step %d), downloaded from the Hub", downloaded.name, plan.step)
    previous = earlier.get("attempts") if earlier and earlier.get("fingerprint") == fingerprint else None
    plan.attempts = [
        *(previous if isinstance(previous, list) else []),
        {"started": now(), "resumed_from_step": plan.step},
    ]
    write_json(output_dir / MANIFEST, running_manifest(settings, plan, data_sha256))
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


def running_manifest(settings: Settings, plan: ResumePlan, data_sha256: str) -> dict[str, Any]:
    """What is known when training starts; `train.manifest` replaces it once the run has finished."""
    from saudial import reproducibility

    return {
        "saudial_run": 1,
        "status": "running",
        "config": settings.redacted(),
        "fingerprint": plan.fingerprint,
        "data": {"file": str(settings.data), "sha256": data_sha256},
        "versions": versions(),
        "lock_sha256": reproducibility.lock_sha256(),
        "device": device_name(),
        "processes": distributed.world_size(),
        "git_revision": git_revision(),
        "started": plan.attempts[0]["started"] if plan.attempts else now(),
        "attempts": plan.attempts,
    }


def mark_interrupted(output_dir: Path, step: int, signal_name: str) -> None:
    manifest = read_json(output_dir / MANIFEST) or {}
    manifest.update({"status": "interrupted", "stopped": now(), "stopped_at_step": step, "stopped_by": signal_name})
    write_json(output_dir / MANIFEST, manifest)


# --- during training -------------------------------------------------------------------------------


class CheckpointCallback(TrainerCallback):
    """After the Trainer has written checkpoint-N: mark it complete, rotate, upload (rank 0)."""

    def __init__(self, settings: Settings, fingerprint: str) -> None:
        self.settings = settings
        self.fingerprint = fingerprint

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        distributed.barrier()  # every rank has written its part (rng_state_<rank>.pth) of the checkpoint
        if state.is_world_process_zero:
            checkpoint = self.settings.output_dir / f"{PREFIX}{state.global_step}"
            write_marker(checkpoint, state.global_step, self.fingerprint)
            rotate(self.settings.output_dir, self.settings.save_total_limit)
            log.info("checkpoint saved: %s (step %d)", checkpoint.name, state.global_step)
            if self.settings.push_to_hub and self.settings.hub_strategy == "checkpoint":
                upload_checkpoint(self.settings, checkpoint)
        return control


class StopOnSignal(TrainerCallback):
    """SIGTERM/SIGINT: finish the current optimizer step, save a checkpoint, stop training.

    The handler only sets a flag; the callback acts on it at the end of the step, on every rank at the
    same step (the flag is all-reduced), because ranks that stopped at different steps would wait for
    each other forever. Further signals while stopping are logged and otherwise ignored: the checkpoint
    is being written, and a SIGKILL in the middle of it leaves a folder that the next start skips.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: str | None = None
        self.stopped_at: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = name
            log.warning("%s received: stopping after the current step and saving a checkpoint", name)
        else:
            log.warning(
                "%s received again: already stopping, ignored (a SIGKILL now would leave an incomplete "
                "checkpoint, which the next start skips)",
                name,
            )

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if distributed.any_rank(self.received is not None) and state.global_step < state.max_steps:
            self.received = self.received or "a signal (on another process)"
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control


# --- the Hub copy of the latest checkpoint ---------------------------------------------------------


def upload_checkpoint(settings: Settings, checkpoint: Path) -> bool:
    """Replace `last-checkpoint/` in the Hub repo with `checkpoint` in one commit. Failures only warn."""
    from huggingface_hub import HfApi

    assert settings.hub_model_id is not None  # push_to_hub requires it (config validation)
    try:
        api = HfApi()
        api.create_repo(settings.hub_model_id, private=settings.hub_private, exist_ok=True)
        api.upload_folder(
            repo_id=settings.hub_model_id,
            folder_path=checkpoint,
            path_in_repo=HUB_FOLDER,
            commit_message=f"saudial {checkpoint.name}",
            delete_patterns="*",  # files of the previous checkpoint that this one does not have
        )
    except Exception as exc:  # network, auth, quota: training goes on, the local checkpoint is intact
        log.warning(
            "could not upload %s to %s: %s: %s", checkpoint.name, settings.hub_model_id, type(exc).__name__, exc
        )
        return False
    log.info("uploaded %s to %s/%s", checkpoint.name, settings.hub_model_id, HUB_FOLDER)
    return True


def download_checkpoint(settings: Settings, fingerprint: str) -> Path | None:
    """Fetch the Hub repo's `last-checkpoint/` into the output dir as checkpoint-N if it is this run's."""
    from huggingface_hub import snapshot_download

    assert settings.hub_model_id is not None
    staging = settings.output_dir / ".hub-checkpoint"
    try:
        snapshot_download(settings.hub_model_id, allow_patterns=[f"{HUB_FOLDER}/*"], local_dir=staging)
    except Exception as exc:  # no repo yet, offline, no access: start from step 0
        log.info(
            "no checkpoint on the Hub to resume from (%s: %s)",
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
        )
        shutil.rmtree(staging, ignore_errors=True)
        return None
    source = staging / HUB_FOLDER
    marker = read_json(source / MARKER)
    try:
        if marker is None:
            log.info("no checkpoint on the Hub to resume from (%s/%s has none)", settings.hub_model_id, HUB_FOLDER)
            return None
        if marker.get("fingerprint") != fingerprint:
            raise ConfigError(
                f"the checkpoint in {settings.hub_model_id}/{HUB_FOLDER} is of a run with other training settings "
                "or data: use another SAUDIAL_HUB_MODEL_ID, or delete that folder from the repo"
            )
        target = settings.output_dir / f"{PREFIX}{int(marker['step'])}"
        shutil.rmtree(target, ignore_errors=True)
        source.rename(target)
        reason = problem(target, fingerprint)
        if reason is not None:
            log.warning("the Hub's checkpoint is incomplete (%s): starting from step 0", reason)
            shutil.rmtree(target, ignore_errors=True)
            return None
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)

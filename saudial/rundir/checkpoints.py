"""Checkpoints a preemptible job can trust: written, vouched for, rotated, and checked before resuming.

The Trainer writes ``checkpoint-N`` every `save_steps` optimizer steps (adapter, optimizer, scheduler,
RNG states, trainer state). Once it has, `CheckpointCallback` writes ``saudial_checkpoint.json`` into
it: the step, the run's fingerprint and every file's size and sha256. Only a checkpoint with a marker
whose files all match is valid; one killed mid-save (SIGKILL, power loss) has no marker or a file that
does not match, and is skipped with a warning (and deleted when the run resumes: rundir/outputs.py); so is
one whose files match but do not load as the Trainer loads them (`unloadable`: a pickle where a tensor file
should be, a safetensors file with a broken header, a trainer_state.json that is not JSON). The
callback, not the Trainer, deletes old checkpoints (keeping `save_total_limit`), and only after the new
one is marked: at every moment at least one valid checkpoint is on disk once the first was written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from saudial.data.files import sha256_of
from saudial.process import distributed
from saudial.rundir import record
from saudial.rundir.record import now, read_json, write_json

if TYPE_CHECKING:
    from saudial.config.settings import Settings

log = logging.getLogger(__name__)

MARKER = "saudial_checkpoint.json"
PREFIX = "checkpoint-"
# What the Trainer needs to resume exactly; a checkpoint without one of these is not valid.
REQUIRED = ("adapter_model.safetensors", "trainer_state.json", "optimizer.pt", "scheduler.pt")
# The Trainer's pickle of its arguments: never read to resume, never uploaded (a pickle runs code when
# loaded), so not part of what the marker vouches for.
TRAINING_ARGS = "training_args.bin"


@dataclass(frozen=True)
class CheckpointStore:
    """Somewhere besides the output directory that keeps a run's newest checkpoint (the Hub, with
    SAUDIAL_HUB_STRATEGY=checkpoint: jobs/train.py builds it from publish/hub.py)."""

    upload: Callable[[Path], object]  # a valid checkpoint folder -> stored (failures only warn)
    download: Callable[[str], Path | None]  # fingerprint -> that run's checkpoint, now in the output dir


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
    for path in sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name not in (MARKER, TRAINING_ARGS)):
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
    return unloadable(checkpoint)


def unloadable(checkpoint: Path) -> str | None:
    """Why a file of `checkpoint` would not load as the Trainer loads it when resuming, else None: its tensor
    files with torch.load(weights_only=True) under the Trainer's own allowlist (a pickle of anything else is
    refused), the adapter's safetensors header, the trainer state's JSON."""
    import torch
    from safetensors import safe_open
    from transformers.trainer_pt_utils import safe_globals

    for path in sorted(p for p in checkpoint.iterdir() if p.suffix in (".pt", ".pth")):
        try:
            with safe_globals(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's remarks on a foreign pickle: the reason says it
                torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            return f"{path.name} does not load ({type(exc).__name__}: not what the Trainer saves)"
    for path in sorted(checkpoint.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as weights:
                weights.keys()
        except Exception as exc:
            return f"{path.name} does not load ({type(exc).__name__}: its header is damaged)"
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"trainer_state.json does not load ({type(exc).__name__})"
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
            record.disown(output_dir, path.name)


# --- during training -------------------------------------------------------------------------------


class CheckpointCallback(TrainerCallback):
    """After the Trainer has written checkpoint-N: mark it complete, rotate, upload (rank 0)."""

    def __init__(self, settings: Settings, fingerprint: str, on_saved: Callable[[Path], object] | None = None) -> None:
        self.settings = settings
        self.fingerprint = fingerprint
        self.on_saved = on_saved  # e.g. the Hub upload of hub_strategy=checkpoint (jobs/train.py passes it)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        distributed.barrier()  # every rank has written its part (rng_state_<rank>.pth) of the checkpoint
        if state.is_world_process_zero:
            checkpoint = self.settings.output_dir / f"{PREFIX}{state.global_step}"
            record.own(self.settings.output_dir, checkpoint.name)
            write_marker(checkpoint, state.global_step, self.fingerprint)
            rotate(self.settings.output_dir, self.settings.save_total_limit)
            log.info("checkpoint saved: %s (step %d)", checkpoint.name, state.global_step)
            if self.on_saved is not None:
                self.on_saved(checkpoint)
        return control

"""The output directory: start fresh, continue the run that is there, or refuse, before any model loads.

A run in progress lives in OUTPUT_DIR/staging (rundir/staging.py); the last finished run's files are in
OUTPUT_DIR itself. `prepare_output_dir` decides (the rules are in its docstring and docs/resume.md),
and writes the run's record in staging with status running and the fingerprint, so the next start can
tell whether it is the same run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saudial.errors import ConfigError, faults, make_dirs
from saudial.process import distributed
from saudial.rundir import record, staging
from saudial.rundir.checkpoints import checkpoint_step, latest_valid
from saudial.rundir.record import now, read_json

if TYPE_CHECKING:
    from saudial.config.settings import Settings

log = logging.getLogger(__name__)

# What is left to do for a run, in order: train (or continue training), evaluate, promote (move its
# files into place), push; done: nothing. A start begins at the first step its record says is not done yet.
STAGES = ("train", "evaluate", "promote", "push", "done")
_STAGE_OF_STATUS = {
    record.RUNNING: "train",
    record.INTERRUPTED: "train",
    record.TRAINED: "evaluate",
    record.EVALUATED: "promote",
    record.FINISHED: "promote",  # in staging: its move into place was cut short before the journal existed
}


@dataclass
class ResumePlan:
    """What `prepare_output_dir` decided: where the run's files are and what is left to do."""

    fingerprint: str
    run_dir: Path  # OUTPUT_DIR/staging, or OUTPUT_DIR itself when only the upload is left
    stage: str = "train"
    checkpoint: Path | None = None  # train: continue from this checkpoint (None: from step 0)
    step: int = 0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)  # the base model's resolved revision (record.start)
    metrics: dict[str, Any] = field(default_factory=dict)  # what the run measured so far (evaluate, push)


def explain_mismatch(earlier: dict[str, Any], settings: Settings, data_sha256: str) -> str:
    """The training settings and data that differ between the earlier run's manifest and this run."""
    differences: list[str] = []
    # Local paths absolute on both sides, as the record holds them (record.located).
    before = record.located(earlier["config"]) if isinstance(earlier.get("config"), dict) else {}
    now_config = record.located(settings.redacted())
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


def prepare_output_dir(
    settings: Settings,
    fingerprint: str,
    data_sha256: str,
    fetch_checkpoint: Callable[[], Path | None] | None = None,
    resolve_model: Callable[[], dict[str, Any]] | None = None,
) -> ResumePlan:
    """Decide what this start does in SAUDIAL_OUTPUT_DIR; write the run's record in staging. Rank 0 only.

    - never: /, $HOME, the current directory (or above), the data file's folder (or above) (exit 2);
    - files in OUTPUT_DIR (or staging) that no saudial run recorded: exit 2, overwrite or not;
    - an unfinished run in staging with the same fingerprint and resume=auto: continue it where its record
      says (training from its newest valid checkpoint, else the evaluation, the move into place, the push);
      SAUDIAL_OVERWRITE_OUTPUT_DIR does not discard it (the result would be the same, only later);
    - an unfinished run of other settings or data, or resume=never: exit 2, unless overwrite, which deletes
      that unfinished run's files (its record lists them) and starts fresh;
    - a finished run in OUTPUT_DIR with the same fingerprint (this very run: a scheduled job's rerun, a
      restart after a crash during the move into place): only the upload if it has not happened, else
      nothing (stage done, exit 0), overwrite or not (a new run would train the same);
    - a finished run of other settings or data: exit 2, unless overwrite: a new run in staging replaces it
      once the new one has finished;
    - otherwise a fresh start in staging, or from the checkpoint `fetch_checkpoint` brings (the Hub's).
    """
    output_dir = settings.output_dir
    where = f"SAUDIAL_OUTPUT_DIR={str(output_dir)!r}"
    staging.check_not_protected(output_dir, "SAUDIAL_OUTPUT_DIR", settings.data)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"{where} is a file, not a directory")
    run_dir = staging.staging_dir(output_dir)
    note = f"nothing in {output_dir} outside {run_dir} was changed"
    with faults(output_dir, note=note):
        make_dirs(output_dir)
        staging.resume_promotion(output_dir)
        unfinished = _staging_record(run_dir, fingerprint) if run_dir.is_dir() else None
        finished = staging.check_records(output_dir, unfinished, where)
        plan = ResumePlan(fingerprint=fingerprint, run_dir=run_dir)
        if unfinished is not None:
            refusal = _refusal(settings, unfinished, fingerprint, data_sha256)
            if refusal is None:
                return _continue(settings, plan, unfinished, data_sha256, resolve_model)
            if not settings.overwrite_output_dir:
                raise ConfigError(f"{where} {refusal}")
            doomed = staging.contents(run_dir)
            log.warning("deleting the unfinished run in %s: %s", run_dir, staging.listing(doomed, 8))
            staging.remove(run_dir, doomed)
        if finished is not None:
            if finished.get("fingerprint") == fingerprint:
                return _only_push(settings, plan, finished) if _push_pending(settings, finished) else _done(plan)
            if not settings.overwrite_output_dir:
                kept = staging.listing(sorted(staging.ours(output_dir, finished)))
                raise ConfigError(
                    f"{where} already holds a finished run ({kept}): choose another directory, or set "
                    "SAUDIAL_OVERWRITE_OUTPUT_DIR=true to train a new run there that replaces those files once it "
                    "has finished (until then they stay as they are)"
                )
            log.info(
                "training a new run in %s; it replaces the finished run in %s when it has finished", run_dir, output_dir
            )
        return _fresh(settings, plan, data_sha256, fetch_checkpoint, resolve_model)


def _staging_record(run_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The record of the run in staging (None: no run there yet); one rebuilt from its checkpoints' own
    markers when it is damaged or missing."""
    path = run_dir / record.MANIFEST
    damage = record.damaged(path)
    if not damage and path.exists():
        return read_json(path)
    if not damage:
        if staging.helpers_only(run_dir):  # e.g. a start stopped before it wrote its record
            return None
        damage = "it is missing"
    checkpoint, _skipped = latest_valid(run_dir, fingerprint)
    if checkpoint is not None:  # saudial wrote its marker: the folder is this run's
        log.warning(
            "%s is damaged (%s); %s's own marker says it belongs to this run: continuing from it (the record of "
            "earlier attempts is lost)",
            path,
            damage,
            checkpoint.name,
        )
        return {"saudial_run": 1, "status": record.INTERRUPTED, "fingerprint": fingerprint, record.FILES: []}
    raise ConfigError(
        f"{path} is {'missing' if damage == 'it is missing' else f'damaged ({damage})'} and {run_dir} holds no "
        "complete checkpoint of this run to continue from, so saudial cannot tell whether it wrote the files there: "
        f"move {run_dir} out of the output directory (nothing is deleted) and start again, or choose another "
        "SAUDIAL_OUTPUT_DIR"
    )


def _refusal(settings: Settings, earlier: dict[str, Any], fingerprint: str, data_sha256: str) -> str | None:
    """Why the unfinished run in staging cannot be continued by this one; None when it can."""
    run_dir = staging.staging_dir(settings.output_dir)
    fix = (
        f"choose another directory, or set SAUDIAL_OVERWRITE_OUTPUT_DIR=true to delete that unfinished run "
        f"({run_dir}: its checkpoints and record) and start over"
    )
    if earlier.get("fingerprint") != fingerprint:
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


def _push_pending(settings: Settings, finished: dict[str, Any]) -> bool:
    return settings.push_to_hub and finished.get("status") == record.FINISHED


def _attempts(earlier: dict[str, Any] | None, fingerprint: str, step: int, stage: str) -> list[dict[str, Any]]:
    previous = earlier.get("attempts") if earlier and earlier.get("fingerprint") == fingerprint else None
    attempt: dict[str, Any] = {"started": now(), "resumed_from_step": step}
    if stage != "train":
        attempt["stage"] = stage
    return [*(previous if isinstance(previous, list) else []), attempt]


def _continue(
    settings: Settings,
    plan: ResumePlan,
    earlier: dict[str, Any],
    data_sha256: str,
    resolve_model: Callable[[], dict[str, Any]] | None,
) -> ResumePlan:
    """The run in staging goes on where its record says it stopped, with the base model it started with."""
    plan.stage = _STAGE_OF_STATUS.get(str(earlier.get("status")), "train")
    model = earlier.get("model")
    plan.model = model if isinstance(model, dict) else {}
    if not plan.model and resolve_model is not None:
        plan.model = resolve_model()
    if plan.stage != "train":
        plan.metrics = read_json(plan.run_dir / record.METRICS) or {}
        plan.step = int(plan.metrics.get("train_steps") or 0)
        log.info("the run in %s has finished training (step %d): continuing with what is left", plan.run_dir, plan.step)
        record.update(plan.run_dir, {"attempts": _attempts(earlier, plan.fingerprint, plan.step, plan.stage)})
        return plan
    checkpoint, skipped = latest_valid(plan.run_dir, plan.fingerprint)
    for path, reason in skipped:
        if reason.startswith("it belongs to"):
            raise ConfigError(
                f"{path} {reason}, although the record in {plan.run_dir} says this run's: move that folder out of "
                "the output directory, or use another SAUDIAL_OUTPUT_DIR"
            )
        log.warning("skipping incomplete checkpoint %s: %s; deleting it", path.name, reason)
        staging.remove(plan.run_dir, [path.name])  # staging is saudial's own folder
        record.disown(plan.run_dir, path.name)
    if checkpoint is None:
        log.info("continuing the unfinished run in %s from step 0: it has no complete checkpoint yet", plan.run_dir)
    else:
        plan.checkpoint, plan.step = checkpoint, checkpoint_step(checkpoint) or 0
        log.info("resuming from %s (step %d)", checkpoint.name, plan.step)
    _start(settings, plan, earlier, data_sha256)
    return plan


def _only_push(settings: Settings, plan: ResumePlan, finished: dict[str, Any]) -> ResumePlan:
    plan.stage, plan.run_dir = "push", settings.output_dir
    plan.metrics = read_json(settings.output_dir / record.METRICS) or {}
    log.info("%s holds this run, finished but not uploaded: uploading it (no training)", settings.output_dir)
    return plan


def _done(plan: ResumePlan) -> ResumePlan:
    """This run is finished (and uploaded, if asked): nothing to do (jobs/train.py completes its card if a
    crash came between the move into place and the card)."""
    plan.stage, plan.run_dir = "done", plan.run_dir.parent
    plan.metrics = read_json(plan.run_dir / record.METRICS) or {}
    return plan


def _fresh(
    settings: Settings,
    plan: ResumePlan,
    data_sha256: str,
    fetch_checkpoint: Callable[[], Path | None] | None,
    resolve_model: Callable[[], dict[str, Any]] | None,
) -> ResumePlan:
    plan.run_dir.mkdir(exist_ok=True)
    probe = plan.run_dir / staging.WRITE_PROBE
    probe.write_text("")  # fails now (exit 74) rather than after the model has loaded
    probe.unlink()
    if fetch_checkpoint is not None:
        downloaded = fetch_checkpoint()
        if downloaded is not None:
            plan.checkpoint, plan.step = downloaded, checkpoint_step(downloaded) or 0
            log.info("resuming from %s (step %d), downloaded from the Hub", downloaded.name, plan.step)
    plan.model = resolve_model() if resolve_model else {}
    _start(settings, plan, None, data_sha256)
    return plan


def _start(settings: Settings, plan: ResumePlan, earlier: dict[str, Any] | None, data_sha256: str) -> None:
    """The run (re)starts training: its record in staging says running, with what it wrote so far."""
    files = [*(earlier or {}).get(record.FILES, []), *([plan.checkpoint.name] if plan.checkpoint else [])]
    plan.attempts = _attempts(earlier, plan.fingerprint, plan.step, "train")
    record.start(
        plan.run_dir,
        settings,
        plan.fingerprint,
        data_sha256,
        plan.attempts,
        distributed.world_size(),
        plan.model,
        sorted(set(files)),
    )

"""The run record: `run_manifest.json` (what a run needs to be repeated: settings, data hash, base model
revision, versions, device, status, and the files the run wrote) and `metrics.json`. This module builds
both and is the only one that writes them, through `update`. The status moves

    running <-> interrupted -> trained -> evaluated -> finished -> pushed

(running to trained in OUTPUT_DIR/staging; finished once its files are in place in OUTPUT_DIR: rundir/outputs.py).
`files` lists every file and folder the run wrote into its directory: the only ones saudial may ever
replace or delete there.

`run_manifest.json` never holds a secret: the settings hold none by construction (HF_TOKEN is read
by huggingface_hub from the environment, not copied into `Settings`), nothing here reads the
environment wholesale, and what is written passes through errors.redact (a Hub message kept in a record
cannot carry a token).
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saudial.errors import redact
from saudial.process.environment import environment

if TYPE_CHECKING:
    from saudial.config.settings import Settings

MANIFEST = "run_manifest.json"
METRICS = "metrics.json"
STAGING = "staging"  # OUTPUT_DIR/staging: the run in progress (rundir/staging.py)
HUB_DOWNLOAD = ".hub-checkpoint"  # in staging while the Hub's last checkpoint downloads (publish/hub.py)
RESULTS_MD = "eval_results.md"  # the evaluation table (inference/evaluation.py)
PREDICTIONS = "eval_predictions.jsonl"  # every held-out translation, base and adapter
# Settings that change what is trained. A checkpoint may only be resumed by a run whose settings
# agree on all of these (the rest, e.g. output_dir, logging, evaluation and push, may differ).
# fmt: off
NOT_TRAINING = {
    "output_dir", "overwrite_output_dir", "resume", "logging_steps", "report_to", "save_steps", "save_total_limit",
    "dataloader_num_workers", "eval", "max_eval_samples", "per_device_eval_batch_size", "max_new_tokens", "do_sample",
    "temperature", "min_p", "repetition_penalty", "push_to_hub", "hub_model_id", "hub_private", "hub_strategy", "data",
    "max_data_file_mb",  # how large a file may be read; the data sha256 says what was read
    "dequantize_once",  # where the frozen weights' dequantized values are kept, not what they are
}
# fmt: on


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# Settings added after fingerprints were first written, at the value that trains what runs trained before
# them: left out of the fingerprint at that value, so a run an earlier saudial started still resumes.
LATER_SETTINGS = {"task": "translate"}


def run_fingerprint(settings: Settings, data_sha256: str) -> str:
    """A hash of everything that decides what is trained: the settings that matter and the data. A local path is
    hashed as given (the record shows it absolute: `located`), so the same run started from another copy of the
    project, or on another machine from the Hub's checkpoint, has the same fingerprint."""
    relevant = {
        k: v
        for k, v in settings.redacted().items()
        if k not in NOT_TRAINING and not (k in LATER_SETTINGS and v == LATER_SETTINGS[k])
    }
    blob = json.dumps({"settings": relevant, "data_sha256": data_sha256}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# Settings that may name a local file or folder: the run record holds them absolute (`located`), so that the
# adapter's later commands (translate, evaluate, merge, export) find them from any working directory.
LOCAL_PATHS = ("data", "model_name_or_path", "tokenizer_name_or_path")


def absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def located(config: dict[str, Any]) -> dict[str, Any]:
    """Settings as JSON (`Settings.redacted`) with their local paths absolute: the data file, and a base model or
    tokenizer that is a directory here; a Hub id stays an id."""
    found = dict(config)
    for name in LOCAL_PATHS:
        value = found.get(name)
        if isinstance(value, str) and (name == "data" or Path(value).expanduser().is_dir()):
            found[name] = absolute(value)
    return found


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a reader (or a resumed run) never sees half a file; a failed write leaves no .tmp."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        text = redact(json.dumps(payload, indent=2, ensure_ascii=False, default=str))
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # a failed write() does not say where
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def trained_task(adapter_dir: Path) -> str | None:
    """The task an adapter was trained for, as its run record says (translate before SAUDIAL_TASK existed);
    None for an adapter without saudial's record."""
    manifest = read_json(adapter_dir / MANIFEST) or {}
    config = manifest.get("config")
    return str(config.get("task", "translate")) if isinstance(config, dict) else None


def damaged(path: Path) -> str | None:
    """Why the record at `path` cannot be read (it exists but is not a JSON object), else None."""
    if not path.exists() and not path.is_symlink():
        return None
    if not path.is_file():
        return "it is not a regular file"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return f"it cannot be read ({exc.strerror})"
    except ValueError:
        return "it is not valid JSON (cut short or edited)"
    if not isinstance(data, dict):
        return "it is not a JSON object"
    if not data.get("saudial_run"):
        return "it is not a saudial run record"
    files = data.get(FILES, [])
    if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
        return f"its {FILES!r} entry is not a list of file names"
    return None


# --- the record of one run -------------------------------------------------------------------------

RUNNING, INTERRUPTED, TRAINED, EVALUATED = "running", "interrupted", "trained", "evaluated"
EVALUATIONS = "evaluations"  # metrics.json: every evaluation of the run, oldest first (`add_evaluation`)
# What the record's copy of metrics.json (its `metrics`) leaves out: the long parts, which metrics.json keeps.
NOT_IN_RECORD = {"timings", "evaluation", EVALUATIONS}
FINISHED, PUSHED = "finished", "pushed"
STATUSES = [RUNNING, INTERRUPTED, TRAINED, EVALUATED, FINISHED, PUSHED]  # in the order a run goes through them
FILES = "files"
# The other commands that leave a record where they write (merge and export copy the training run's and mark it;
# evaluate --output-dir writes its own); a record without these marks is a training run's.
PRODUCTS = {"saudial_merge": "merge", "saudial_export": "export", "saudial_evaluate": "evaluation"}


def update(
    output_dir: Path,
    manifest: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    replace: bool = False,
) -> dict[str, Any]:
    """The one writer of the run record: merge `manifest` into run_manifest.json (or replace it) and
    `metrics` into metrics.json, each atomically. Returns the manifest as written."""
    current = {} if replace else read_json(output_dir / MANIFEST) or {}
    if metrics is not None:
        merged = (read_json(output_dir / METRICS) or {}) | metrics
        write_json(output_dir / METRICS, merged)
        if current:  # a run's directory: metrics.json is its file, and its record shows the same numbers
            manifest = {**(manifest or {}), FILES: sorted({*current.get(FILES, []), METRICS})}
            if TRAINED in current or "metrics" in manifest:  # from the end of training on
                manifest["metrics"] = {k: v for k, v in merged.items() if k not in NOT_IN_RECORD}
    if manifest is not None:
        current.update(manifest)
        write_json(output_dir / MANIFEST, current)
    return current


def product(manifest: dict[str, Any]) -> str:
    """What wrote the folder of `manifest`: "merge", "export", "evaluation" or "training run"."""
    return next((name for key, name in PRODUCTS.items() if manifest.get(key)), "training run")


def owned(manifest: dict[str, Any]) -> set[str]:
    """The names (in the run's directory) that the run of `manifest` wrote, its record included."""
    files = manifest.get(FILES)
    return {MANIFEST, *(str(f) for f in files)} if isinstance(files, list) else {MANIFEST}


def own(output_dir: Path, *names: str) -> None:
    """Add `names` (entries of `output_dir`) to the run's list of what it wrote, before or after writing them."""
    current = read_json(output_dir / MANIFEST)
    if current is not None and not set(names) <= set(current.get(FILES, [])):
        update(output_dir, {FILES: sorted({*current.get(FILES, []), *names})})


def disown(output_dir: Path, *names: str) -> None:
    """`names` were deleted by the run (an old checkpoint): drop them from its list."""
    current = read_json(output_dir / MANIFEST)
    if current is not None and set(names) & set(current.get(FILES, [])):
        update(output_dir, {FILES: sorted(set(current.get(FILES, [])) - set(names))})


def start(
    output_dir: Path,
    settings: Settings,
    fingerprint: str,
    data_sha256: str,
    attempts: list[dict[str, Any]],
    processes: int,
    model: dict[str, Any] | None = None,
    files: list[str] | None = None,
) -> None:
    """A run starts (or resumes) in `output_dir`: its settings (local paths absolute) and fingerprint, the base
    model's resolved revision (`model`: name, revision, revision_sha, source), what it wrote so far, status running."""
    config = located(settings.redacted())
    update(
        output_dir,
        {
            "saudial_run": 1,
            "status": RUNNING,
            "config": config,
            "fingerprint": fingerprint,
            "data": {"file": config["data"], "sha256": data_sha256},
            "model": model or {},
            **environment(processes),
            "started": attempts[0]["started"] if attempts else now(),
            "attempts": attempts,
            FILES: sorted(files or []),
        },
        replace=True,
    )


def interrupted(output_dir: Path, step: int, signal_name: str) -> None:
    """A signal stopped training after the checkpoint of `step` was written."""
    update(output_dir, {"status": INTERRUPTED, "stopped": now(), "stopped_at_step": step, "stopped_by": signal_name})


def trained(
    output_dir: Path,
    data_summary: dict[str, Any],
    metrics: dict[str, Any],
    determinism: dict[str, Any],
    processes: int,
) -> None:
    """Training finished and the adapter is saved: the data summary, the metrics, status trained."""
    data = {k: v for k, v in data_summary.items() if k != "train_tokens"} | {"tokens": data_summary["train_tokens"]}
    if isinstance(data.get("file"), str):  # absolute, as in the settings (`located`)
        data["file"] = absolute(data["file"])
    update(
        output_dir,
        {
            "status": TRAINED,
            "data": data,
            **environment(processes),
            "determinism": determinism,
            "trained": now(),
            "metrics": {},  # metrics.json's numbers (update)
        },
        metrics=metrics,
    )


def advance(output_dir: Path, status: str, **extra: Any) -> None:
    """The run moved on to `status` (evaluated, finished, pushed), with a timestamp under that name."""
    update(output_dir, {"status": status, status: now(), **extra})


def add_evaluation(output_dir: Path, results: dict[str, Any], how: dict[str, Any]) -> None:
    """An evaluation's results into metrics.json: at the top (the latest: what the record and the model card
    show) and appended to its `evaluations`, with when and how (`how`: the command, the settings) it ran, so
    that an evaluation never replaces an earlier one unread. The run record says when it was last evaluated."""
    earlier = read_json(output_dir / METRICS) or {}
    history = earlier.get(EVALUATIONS)
    if not isinstance(history, list):  # an evaluation held without the list (eval_runtime_s) first; not training's
        history = [{k: v for k, v in earlier.items() if k.startswith("eval")}] if "eval_runtime_s" in earlier else []
    entry = {"evaluated": now(), **how, **results}
    when = {EVALUATED: entry["evaluated"]} if (output_dir / MANIFEST).is_file() else None
    update(output_dir, when, {**results, EVALUATIONS: [*history, entry]})

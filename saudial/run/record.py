"""The run record: `run_manifest.json` (what a run needs to be repeated: settings, data hash, versions,
device, revision, status) and `metrics.json`. This module builds both and is the only one that writes
them, through `update`; the status moves running -> interrupted / finished.

`run_manifest.json` never holds a secret: the settings hold none by construction (HF_TOKEN is read
by huggingface_hub from the environment, not copied into `Settings`), and nothing here reads the
environment wholesale.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from saudial import __version__

if TYPE_CHECKING:
    from saudial.config.settings import Settings

MANIFEST = "run_manifest.json"
LOCK_FILE = "requirements.lock"
METRICS = "metrics.json"
RESULTS_MD = "eval_results.md"  # the evaluation table (inference/evaluate.py)
PREDICTIONS = "eval_predictions.jsonl"  # every held-out translation, base and adapter
PACKAGES = [
    "torch",
    "transformers",
    "peft",
    "trl",
    "bitsandbytes",
    "accelerate",
    "datasets",
    "pandas",
    "openpyxl",
    "huggingface-hub",
    "tokenizers",
    "safetensors",
    "sacrebleu",
    "pydantic-settings",
]

# Settings that change what is trained. A checkpoint may only be resumed by a run whose settings
# agree on all of these (the rest, e.g. output_dir, logging, evaluation and push, may differ).
NOT_TRAINING = {
    "output_dir",
    "overwrite_output_dir",
    "resume",
    "logging_steps",
    "report_to",
    "save_steps",
    "save_total_limit",
    "dataloader_num_workers",
    "eval",
    "max_eval_samples",
    "per_device_eval_batch_size",
    "max_new_tokens",
    "do_sample",
    "temperature",
    "min_p",
    "repetition_penalty",
    "push_to_hub",
    "hub_model_id",
    "hub_private",
    "hub_strategy",
    "data",
    "max_data_file_mb",  # how large a file may be read; the data sha256 says what was read
}


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version(), "saudial": __version__}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["cuda"] = torch.version.cuda
    return found


def device_name() -> str:
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        return f"{count} x {torch.cuda.get_device_name(0)}"
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"


def git_revision() -> str | None:
    """The image's revision label when run in the image, else the checkout's commit if there is one."""
    if os.environ.get("SAUDIAL_IMAGE_REVISION"):
        return os.environ["SAUDIAL_IMAGE_REVISION"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_fingerprint(settings: Settings, data_sha256: str) -> str:
    """A hash of everything that decides what is trained: the settings that matter and the data."""
    relevant = {k: v for k, v in settings.redacted().items() if k not in NOT_TRAINING}
    blob = json.dumps({"settings": relevant, "data_sha256": data_sha256}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a reader (or a resumed run) never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- the record of one run -------------------------------------------------------------------------

RUNNING, INTERRUPTED, FINISHED = "running", "interrupted", "finished"


def update(
    output_dir: Path,
    manifest: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    replace: bool = False,
) -> dict[str, Any]:
    """The one writer of the run record: merge `manifest` into run_manifest.json (or replace it) and
    `metrics` into metrics.json, each atomically. Returns the manifest as written."""
    current = {} if replace else read_json(output_dir / MANIFEST) or {}
    if manifest is not None:
        current.update(manifest)
        write_json(output_dir / MANIFEST, current)
    if metrics is not None:
        write_json(output_dir / METRICS, (read_json(output_dir / METRICS) or {}) | metrics)
    return current


def lock_sha256() -> str | None:
    """sha256 of requirements.lock beside the package (the checkout, or /app in the image), else in the cwd."""
    for folder in (Path(__file__).resolve().parents[2], Path.cwd()):
        path = folder / LOCK_FILE
        if path.is_file():
            return hashlib.sha256(path.read_bytes()).hexdigest()
    return None


def environment(processes: int) -> dict[str, Any]:
    """Where and with what a run ran: package versions, lock hash, device, processes, source revision."""
    return {
        "versions": versions(),
        "lock_sha256": lock_sha256(),
        "device": device_name(),
        "processes": processes,
        "git_revision": git_revision(),
    }


def start(
    output_dir: Path,
    settings: Settings,
    fingerprint: str,
    data_sha256: str,
    attempts: list[dict[str, Any]],
    processes: int,
) -> None:
    """A run starts (or resumes) in `output_dir`: its settings and fingerprint, status running."""
    update(
        output_dir,
        {
            "saudial_run": 1,
            "status": RUNNING,
            "config": settings.redacted(),
            "fingerprint": fingerprint,
            "data": {"file": str(settings.data), "sha256": data_sha256},
            **environment(processes),
            "started": attempts[0]["started"] if attempts else now(),
            "attempts": attempts,
        },
        replace=True,
    )


def interrupted(output_dir: Path, step: int, signal_name: str) -> None:
    """A signal stopped training after the checkpoint of `step` was written."""
    update(output_dir, {"status": INTERRUPTED, "stopped": now(), "stopped_at_step": step, "stopped_by": signal_name})


def finished(
    output_dir: Path,
    data_summary: dict[str, Any],
    metrics: dict[str, Any],
    determinism: dict[str, Any],
    processes: int,
) -> None:
    """Training finished and the adapter is saved: the data summary, the metrics, status finished."""
    data = {k: v for k, v in data_summary.items() if k != "train_tokens"} | {"tokens": data_summary["train_tokens"]}
    update(
        output_dir,
        {
            "status": FINISHED,
            "data": data,
            **environment(processes),
            "determinism": determinism,
            "finished": now(),
            "metrics": {k: v for k, v in metrics.items() if k != "timings"},
        },
        metrics=metrics,
    )

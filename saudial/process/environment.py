"""Where and with what a run ran: package versions, the lock file's hash, the device, the source revision."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from saudial import __version__

LOCK_FILE = "requirements.lock"
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


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version(), "saudial": __version__}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    import torch  # here, not at the top: the run record (rundir/record.py) is read before torch is imported

    found["cuda"] = torch.version.cuda
    return found


def device_name() -> str:
    import torch

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

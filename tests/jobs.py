"""Helpers for the resume, reproducibility and multi-process tests: short CPU runs of the real entry point."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.conftest import ENTRYPOINT, REPO, base_env

ADAPTER = "adapter_model.safetensors"


def job_env(tiny_model: Path, data: Path, output_dir: Path, **extra: str) -> dict[str, str]:
    """A few fast optimizer steps on the tiny model; LoRA dropout on (its RNG is part of what is tested)."""
    settings = {
        "SAUDIAL_MAX_STEPS": "6",
        "SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE": "2",
        "SAUDIAL_MAX_LENGTH": "128",
        "SAUDIAL_GRADIENT_CHECKPOINTING": "false",
        "SAUDIAL_EVAL": "none",
        "SAUDIAL_EVAL_SIZE": "0.1",
        "SAUDIAL_LORA_DROPOUT": "0.05",
    }
    settings.update(extra)
    return base_env(tiny_model, data, output_dir, **settings)


def env_for(tiny_model: Path, data: Path, out: Path, **extra: str) -> dict[str, str]:
    """4 steps on the tiny model, no evaluation unless asked (conftest.base_env)."""
    return base_env(tiny_model, data, out, **({"SAUDIAL_EVAL": "none", "SAUDIAL_REPORT_TO": "none"} | extra))


class Job:
    """`python entrypoint.py` (or `argv`) in the background, its stdout and stderr collected as they come. `group`:
    in a process group of its own, which `signal_group` signals whole (as a scheduler or a terminal's Ctrl-C does)."""

    def __init__(self, env: dict[str, str], group: bool = False, argv: list[str] | None = None) -> None:
        self.proc = subprocess.Popen(
            argv or [sys.executable, str(ENTRYPOINT)],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=group,
        )
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        for chunk in iter(lambda: os.read(fd, 4096), b""):
            self._chunks.append(chunk)

    @property
    def output(self) -> str:
        return b"".join(self._chunks).decode("utf-8", "replace")

    def wait_for(self, pattern: str, timeout: float = 300) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.output)
            if match:
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not seen (exit {self.proc.poll()}):\n{self.output[-4000:]}")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def signal_group(self, signum: int) -> None:
        os.killpg(self.proc.pid, signum)  # the job and every process it started (data loader workers)

    def finish(self, timeout: float = 300) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code


def run_job(env: dict[str, str], timeout: float = 300) -> tuple[int, str]:
    job = Job(env)
    code = job.finish(timeout)
    return code, job.output


def adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / ADAPTER))


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differing = [name for name in a if not torch.equal(a[name], b[name])]
    worst = max(((a[n] - b[n]).abs().max().item() for n in differing), default=0.0)
    assert not differing, f"{len(differing)} of {len(a)} tensors differ (max abs diff {worst:.3g}): {differing[:3]}"


# The entry point's `main` in a process of its own, one function (PAUSE_AT: "module:attribute.path") made to touch
# the file PAUSED and sleep first (after its own work with PAUSE_AFTER=1): a signal then finds the command there.
# PAUSE_AT "import:module" pauses inside that module's import instead (3 s, then the module runs and PAUSED +
# ".imported" is touched).
PAUSING_MAIN = """
import importlib, importlib.abc, importlib.machinery, os, sys, time
module, _, path = os.environ["PAUSE_AT"].partition(":")
if module == "import":
    class PausingFinder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, search_path, target=None):
            if name != path:
                return None
            sys.meta_path.remove(self)
            spec = importlib.machinery.PathFinder.find_spec(name, search_path)
            run_module = spec.loader.exec_module
            def exec_module(new_module):
                open(os.environ["PAUSED"], "w").close()
                time.sleep(3)
                run_module(new_module)
                open(os.environ["PAUSED"] + ".imported", "w").close()
            spec.loader.exec_module = exec_module
            return spec
    sys.meta_path.insert(0, PausingFinder())
else:
    owner = importlib.import_module(module)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    real = getattr(owner, name)
    def paused(*args, **kwargs):
        result = real(*args, **kwargs) if os.environ.get("PAUSE_AFTER") else None
        open(os.environ["PAUSED"], "w").close()
        time.sleep(120)
        return result if os.environ.get("PAUSE_AFTER") else real(*args, **kwargs)
    setattr(owner, name, paused)
from saudial.cli.main import main
sys.exit(main())
"""


def paused_job(env: dict[str, str], pause_at: str, marker: Path, *args: str, after: bool = False) -> Job:
    """`saudial ARGS` (the entry point's `main`) stopped at `pause_at` (see PAUSING_MAIN): returns once it is there."""
    env = env | {"PAUSE_AT": pause_at, "PAUSED": str(marker)} | ({"PAUSE_AFTER": "1"} if after else {})
    job = Job(env, argv=[sys.executable, "-c", PAUSING_MAIN, *args])
    deadline = time.monotonic() + 300
    while not marker.exists() and job.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), f"{pause_at} not reached (exit {job.proc.poll()}):\n{job.output[-4000:]}"
    return job

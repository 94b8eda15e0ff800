"""Shared fixtures: a tiny LFM2 saved to disk, SauDial-shaped data files, and a runner for entrypoint.py.

Nothing here touches the network: the model and tokenizer are built locally and loaded back through
the real `from_pretrained` path by the code under test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch

if not torch.cuda.is_available():
    # Triton's kernels (model/kernels.py, tests/test_kernels.py) run in its interpreter on the CPU; it is chosen when
    # triton's language is imported, which transformers' imports below can do.
    os.environ.setdefault("TRITON_INTERPRET", "1")
from saudial.devtools import synthetic, tiny

REPO = Path(__file__).resolve().parent.parent
ENTRYPOINT = REPO / "entrypoint.py"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        # The tests that compile layers take minutes on a fresh GPU machine: last, so that a GPU call with a time
        # limit (bench/device-run.sh gpu-tests) runs every other test first.
        items.sort(key=lambda item: "compiles" in item.keywords)
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine: see README, Developing)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LFM2 (conv + attention layers) and a BPE tokenizer with Arabic, on disk."""
    return tiny.build(tmp_path_factory.mktemp("tiny-lfm2"))


@pytest.fixture(scope="session")
def saudial_frame() -> pd.DataFrame:
    """200 rows with every quirk of the published workbook."""
    return synthetic.make_rows(200, seed=0)


@pytest.fixture(scope="session")
def workbook(tmp_path_factory: pytest.TempPathFactory, saudial_frame: pd.DataFrame) -> Path:
    return synthetic.write(saudial_frame, tmp_path_factory.mktemp("data") / "SauDial Dataset.xlsx")


def base_env(tiny_model: Path, data: Path, output_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for a fast CPU run of the real entry point on the tiny model."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAUDIAL_") and k != "HF_TOKEN"}
    env.update(
        {
            "SAUDIAL_DATA": str(data),
            "SAUDIAL_MODEL_NAME_OR_PATH": str(tiny_model),
            "SAUDIAL_OUTPUT_DIR": str(output_dir),
            "SAUDIAL_QUANTIZATION": "none",
            "SAUDIAL_MAX_STEPS": "4",
            "SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE": "4",
            "SAUDIAL_GRADIENT_ACCUMULATION_STEPS": "1",
            "SAUDIAL_LOGGING_STEPS": "1",
            "SAUDIAL_REPORT_TO": "none",
            "SAUDIAL_EVAL": "loss",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            # One thread: a tiny model gains nothing from more, and 2 cores shared with the test runner
            # (or a second process) oversubscribe badly (measured: ~10x slower steps).
            "OMP_NUM_THREADS": "1",
        }
    )
    env.update(extra)
    return env


RunEntry = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_entry() -> RunEntry:
    """Run `python entrypoint.py ARGS` as a real subprocess with the given environment."""

    def run(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ENTRYPOINT), *args],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture
def no_model_adapter(tmp_path: Path) -> Path:
    """An adapter directory whose base model does not exist: for inputs refused before any model is loaded."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "/nonexistent/base-model"}')
    return adapter


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs: a disk that really fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` so that `leave` bytes stay free."""
    filler = disk / "filler.bin"
    size = shutil.disk_usage(disk).free - leave
    with filler.open("wb") as handle:
        for _ in range(size // (1 << 20)):
            handle.write(b"\0" * (1 << 20))
        handle.write(b"\0" * (size % (1 << 20)))
    return filler

"""What a new user meets first, following the README: `make demo`, then `make train`, the cheap mistakes,
`saudial check`, the help texts. In-process and fast (no model is trained here)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from saudial.config.settings import Settings
from saudial.rundir import record
from saudial.rundir.outputs import prepare_output_dir
from tests.conftest import REPO

SAMPLE = REPO / "samples" / "saudial_synthetic_sample.xlsx"


def makefile_value(name: str) -> str:
    found = re.search(rf"^{name} \?= (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert found, f"Makefile sets no {name}"
    return found.group(1)


def test_make_demo_then_make_train_use_different_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's order: `make demo` leaves its tiny model and finished run in DEMO_DIR; `make train`'s output
    directory (the default SAUDIAL_OUTPUT_DIR) is then prepared as for a first run, and the demo is untouched."""
    demo, default = Path(makefile_value("DEMO_DIR")), Settings.model_fields["output_dir"].default
    assert not demo.is_absolute() and default not in (demo, *demo.parents) and demo not in default.parents
    ignored = subprocess.run(["git", "check-ignore", "-q", f"{demo}/adapter/x"], cwd=REPO, check=False)
    assert ignored.returncode == 0, f"{demo} is not ignored by git"
    monkeypatch.chdir(tmp_path)
    (demo / "tiny-lfm2").mkdir(parents=True)
    (demo / "tiny-lfm2" / "config.json").write_text("{}")
    adapter = demo / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    record.update(adapter, {"saudial_run": 1, "status": record.FINISHED, record.FILES: ["adapter_config.json"]})
    before = {p.as_posix(): p.read_bytes() for p in demo.rglob("*") if p.is_file()}

    plan = prepare_output_dir(Settings(data=SAMPLE, output_dir=default), "f" * 64, "0" * 64)

    assert plan.stage == "train" and plan.run_dir == default / record.STAGING
    assert json.loads((plan.run_dir / record.MANIFEST).read_text())["status"] == record.RUNNING
    assert {p.as_posix(): p.read_bytes() for p in demo.rglob("*") if p.is_file()} == before


def test_cpu_generation_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """One thread for a small model; for a larger one the cores not busy with other work; the user's
    OMP_NUM_THREADS always wins (and is named)."""
    import torch

    from saudial.model import hardware

    for name in hardware.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    cores = len(os.sched_getaffinity(0))
    assert hardware.cpu_threads(250_000)[0] == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert hardware.cpu_threads(1_200_000_000) == (
        cores,
        f"{cores} core(s), 0 busy with other work; OMP_NUM_THREADS sets it",
    )
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 9.0, 0.0, 0.0))
    assert hardware.cpu_threads(1_200_000_000)[0] == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert hardware.cpu_threads(250_000) == (torch.get_num_threads(), "OMP_NUM_THREADS=3")

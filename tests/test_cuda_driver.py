"""process/cuda_driver.py: the driver started in a thread, and torch working in the context it made.

Each case runs in a fresh interpreter (the driver starts once per process): a script that starts the thread,
waits for it, asks the driver whether GPU 0's primary context is active, then (on a GPU) imports torch and
checks that torch's current context is that very context.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import ctypes, json, os, sys
from saudial.process import cuda_driver

processes = json.loads(sys.argv[1])
thread = cuda_driver.start_in_background(processes)
report = {"thread": thread is not None, "loading": os.environ.get("CUDA_MODULE_LOADING")}
if thread is not None:
    thread.join(60)
    report["done"] = not thread.is_alive()
try:
    cuda = ctypes.CDLL("libcuda.so.1")
except OSError:
    cuda = None
report["driver"] = cuda is not None
if cuda is not None and thread is not None:
    flags, active = ctypes.c_uint(), ctypes.c_int()
    device = ctypes.c_int()
    cuda.cuDeviceGet(ctypes.byref(device), 0)
    cuda.cuDevicePrimaryCtxGetState(device, ctypes.byref(flags), ctypes.byref(active))
    report["active_before_torch"] = active.value
    import torch

    torch.ones(1, device="cuda").sum().item()
    ours, current = ctypes.c_void_p(), ctypes.c_void_p()
    cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ours), device)
    cuda.cuCtxGetCurrent(ctypes.byref(current))
    report["torch_in_primary_context"] = ours.value == current.value
print(json.dumps(report))
"""


def run(processes: int | None, **env: str) -> dict[str, object]:
    environment = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "LOCAL_RANK", "RANK")}
    environment.pop("CUDA_MODULE_LOADING", None)
    environment |= {"PYTHONPATH": str(REPO)} | env
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(processes)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_hidden_gpus_start_nothing() -> None:
    report = run(None, CUDA_VISIBLE_DEVICES="")
    assert report["thread"] is False
    assert report["loading"] is None  # the environment is left as it was


def test_a_bad_local_rank_is_left_to_torch() -> None:
    assert run(None, LOCAL_RANK="first", WORLD_SIZE="2")["thread"] is False


def test_the_thread_ends_with_or_without_a_driver() -> None:
    report = run(None)
    assert report["thread"] is True and report["done"] is True
    assert report["loading"] == "LAZY"  # set before cuInit, where the user had set nothing


@pytest.mark.gpu
def test_torch_runs_in_the_context_the_thread_made() -> None:
    report = run(None, CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0])
    assert report["driver"] is True
    assert report["active_before_torch"] == 1
    assert report["torch_in_primary_context"] is True


@pytest.mark.gpu
def test_a_launcher_makes_no_context() -> None:
    # Two processes wanted and no WORLD_SIZE: this process only launches ranks, so it holds no GPU memory.
    report = run(2, CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0])
    assert report["driver"] is True
    assert report["active_before_torch"] == 0

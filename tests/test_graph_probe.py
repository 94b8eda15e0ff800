"""bench/graph_probe.py --cpu-check: each decoder layer called through the probe's wrapper (the call a CUDA graph
captures: the batch's tensors in, its other arguments bound) gives the eager step's loss and LoRA gradients
exactly, on the tiny model's padding-free batch. The capture itself needs a GPU (`bash bench/device-run.sh graphs`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wrapped_layers_give_the_eager_step_exactly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAUDIAL_")}
    env |= {"SAUDIAL_PER_DEVICE_TRAIN_BATCH_SIZE": "8", "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "probe.json"
    command = [sys.executable, "bench/graph_probe.py", "--cpu-check", "--iters", "1", "--work", str(tmp_path)]
    result = subprocess.run(
        [*command, "--json", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["layers"] == 4 and report["grad_count"] > 0 and "capture_error" not in report
    assert report["call"]["cu_seq_lens_q"] == "Tensor" and report["call"]["seq_idx"] == "Tensor"  # padding-free
    assert report["loss_graphed"] == report["loss_eager"] and report["max_grad_diff"] == 0.0

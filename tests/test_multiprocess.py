"""SAUDIAL_NUM_PROCESSES=2 on the CPU: two data-parallel ranks (gloo) through the real entry point."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from saudial.errors import EXIT_INTERRUPTED
from saudial.rundir import checkpoints
from tests.jobs import Job, job_env, run_job

pytestmark = pytest.mark.slow


def test_two_processes_train_and_only_rank_0_writes(tiny_model: Path, workbook: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = job_env(tiny_model, workbook, out, SAUDIAL_NUM_PROCESSES="2", SAUDIAL_MAX_STEPS="2", SAUDIAL_SAVE_STEPS="1")
    code, log = run_job(env)
    assert code == 0, log[-6000:]
    assert "starting 2 data-parallel processes" in log
    # Rank 0 alone logs, writes and saves: each of these appears once.
    assert log.count("settings that differ from the defaults") == 1
    assert log.count("rows read 200") == 1
    assert log.count("adapter saved; it moves into") == 1
    assert log.count("checkpoint saved: checkpoint-2 (step 2)") == 1
    assert "error:" not in log and "Traceback" not in log

    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["processes"] == 2
    assert manifest["metrics"]["train_steps"] == 2
    # Each rank wrote its own RNG state into the checkpoint, and the marker covers both.
    last = out / "checkpoint-2"
    assert (last / "rng_state_0.pth").is_file() and (last / "rng_state_1.pth").is_file()
    assert checkpoints.problem(last) is None
    marker = json.loads((last / checkpoints.MARKER).read_text())
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= marker["files"].keys()

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # trained: LoRA B starts at zero


def test_sigterm_reaches_both_ranks_and_they_stop_at_the_same_step(
    tiny_model: Path, workbook: Path, tmp_path: Path
) -> None:
    """`docker stop` signals the launcher (PID 1); it passes SIGTERM on; both ranks checkpoint; exit 75."""
    out = tmp_path / "out"
    env = job_env(tiny_model, workbook, out, SAUDIAL_NUM_PROCESSES="2", SAUDIAL_MAX_STEPS="8", SAUDIAL_SAVE_STEPS="1")
    job = Job(env)
    job.wait_for(r"checkpoint saved: checkpoint-1 \(step 1\)")
    job.signal(signal.SIGTERM)
    code = job.finish()
    assert code == EXIT_INTERRUPTED, job.output[-6000:]
    assert "SIGTERM received: passing it on to the 2 training processes" in job.output
    stopped = re.findall(r"stopped by \S+ at step (\d+)", job.output)
    assert len(stopped) == 1, job.output[-6000:]  # said once, by rank 0
    step = int(stopped[0])
    assert checkpoints.problem(out / "staging" / f"checkpoint-{step}") is None
    assert not (out / "adapter_model.safetensors").exists()

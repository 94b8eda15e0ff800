"""bench/host_profile.py --phases: a py-spy raw file's training-loop samples split by phase, the rest by thread."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench import host_profile

REPO = Path(__file__).resolve().parent.parent
LOOP = [
    "thread (0x1)",
    "<module> (entrypoint.py:9)",
    "train (transformers/trainer.py:1)",
    "_inner_training_loop (transformers/trainer.py:2)",
]
STEP = [*LOOP, "training_step (saudial/training/sync_free.py:3)"]
LOSS = [*STEP, "compute_loss (saudial/training/sync_free.py:4)"]
STACKS = [
    ([*LOSS, "_call_impl (torch/nn/modules/module.py:5)", "forward (saudial/model/fast_lfm2.py:6)"], 50),
    ([*LOSS, "gather_for_metrics (accelerate/accelerator.py:7)"], 10),
    ([*STEP, "backward (torch/_tensor.py:9)", "_engine_run_backward (torch/autograd/graph.py:10)"], 25),
    ([*LOOP, "step (torch/optim/adamw.py:11)"], 5),
    ([*LOOP, "__next__ (torch/utils/data/dataloader.py:12)"], 4),
    ([*LOOP, "_maybe_log_save_evaluate (transformers/trainer.py:13)", "log (saudial/training/sync_free.py:14)"], 4),
    ([*LOOP, "_get_learning_rate (transformers/trainer.py:15)"], 2),
    (["thread (0x2)", "backward (torch/autograd/function.py:16)", "backward (saudial/model/stacked_lora.py:17)"], 30),
    (["thread (0x3)", "run (threading.py:18)"], 1),
]


def test_phases_split_the_loops_samples_and_count_the_other_threads(tmp_path: Path) -> None:
    raw = tmp_path / "spy.txt"
    raw.write_text("".join(f"{';'.join(frames)} {count}\n" for frames, count in STACKS) + "a line without a count\n")
    by_phase, loop, others = host_profile.phases(raw)
    assert loop == 100
    assert by_phase == {
        "model forward": 50,
        "backward (main thread)": 25,
        "loss and metrics": 10,
        "optimizer step": 5,
        "next batch": 4,
        "logging, saving, callbacks": 4,
        "other": 2,
    }
    assert others == {"thread (0x2)": 30, "thread (0x3)": 1}
    done = subprocess.run(
        [sys.executable, "bench/host_profile.py", str(raw), "--phases"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert " 50.0%  model forward" in done.stdout and "      30  thread (0x2)" in done.stdout

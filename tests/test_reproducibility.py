"""Same seed, data and settings on the CPU: bitwise-identical adapters; another seed: different ones.

And the manifest holds what is needed to repeat a run.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

import pytest
import torch

from saudial.rundir.record import run_fingerprint
from tests.jobs import adapter, assert_bitwise_equal, job_env, run_job

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def _train(tiny_model: Path, workbook: Path, out: Path, seed: str) -> dict[str, torch.Tensor]:
    code, log = run_job(job_env(tiny_model, workbook, out, SAUDIAL_MAX_STEPS="3", SAUDIAL_SEED=seed))
    assert code == 0, log[-4000:]
    return adapter(out)


def test_same_seed_is_bitwise_identical_and_another_seed_differs(
    tiny_model: Path, workbook: Path, tmp_path: Path
) -> None:
    first = _train(tiny_model, workbook, tmp_path / "a", "42")
    second = _train(tiny_model, workbook, tmp_path / "b", "42")
    assert_bitwise_equal(first, second)

    other = _train(tiny_model, workbook, tmp_path / "c", "7")
    lora = [name for name in first if "lora_" in name]
    assert lora and all(not torch.equal(first[n], other[n]) for n in lora)

    # What the manifest records to repeat the run.
    manifest = json.loads((tmp_path / "a" / "run_manifest.json").read_text())
    assert manifest["status"] == "finished"
    assert manifest["config"]["seed"] == 42 and manifest["config"]["max_steps"] == 3
    assert manifest["data"]["sha256"] == hashlib.sha256(workbook.read_bytes()).hexdigest()
    assert manifest["versions"]["torch"] == metadata.version("torch")
    assert manifest["versions"]["transformers"] == metadata.version("transformers")
    assert manifest["determinism"]["cudnn_deterministic"] is True
    # Not set by saudial: PyTorch parses it with a regex on every cuBLAS call (training/reproducibility.py)
    assert manifest["determinism"]["CUBLAS_WORKSPACE_CONFIG"] == "unset (PyTorch's default)"
    lock = REPO / "requirements.lock"
    expected_lock = hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else None
    assert manifest["lock_sha256"] == expected_lock
    from saudial.config.settings import Settings

    settings = Settings(**manifest["config"])
    assert manifest["fingerprint"] == run_fingerprint(settings, manifest["data"]["sha256"])


def test_a_setting_added_later_leaves_earlier_fingerprints_alone() -> None:
    """A run started before `task` existed resumes: at its default, `task` is not part of the fingerprint."""
    from saudial.config.settings import Settings
    from saudial.rundir.record import NOT_TRAINING

    settings = Settings(data=Path("x.xlsx"))
    earlier = {k: v for k, v in settings.redacted().items() if k not in NOT_TRAINING and k != "task"}
    blob = json.dumps({"settings": earlier, "data_sha256": "abc"}, sort_keys=True)
    assert run_fingerprint(settings, "abc") == hashlib.sha256(blob.encode()).hexdigest()
    assert run_fingerprint(settings.model_copy(update={"task": "chat"}), "abc") != run_fingerprint(settings, "abc")

"""Preemption: SIGTERM mid-training, resume, a checkpoint broken by SIGKILL mid-save, and the refusals.

Every run is a real subprocess of entrypoint.py on the tiny LFM2 (CPU, no quantization). The final
adapter of an interrupted-then-resumed run is compared bitwise with that of an uninterrupted run.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path

import pytest

from saudial.config.settings import Settings
from saudial.devtools import synthetic
from saudial.errors import EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_OK
from saudial.publish import hub
from saudial.rundir import checkpoints
from saudial.rundir.outputs import prepare_output_dir
from tests.entry import tree
from tests.jobs import ADAPTER, Job, adapter, assert_bitwise_equal, job_env, run_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tiny_model: Path, workbook: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run (default save_steps: no checkpoint until the end)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    code, log = run_job(job_env(tiny_model, workbook, out))
    assert code == 0, log[-4000:]
    return out


@pytest.fixture(scope="module")
def interrupted(tiny_model: Path, workbook: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    """A run with a checkpoint every step, stopped by SIGTERM once checkpoint-2 is written."""
    out = tmp_path_factory.mktemp("interrupted") / "out"
    job = Job(job_env(tiny_model, workbook, out, SAUDIAL_SAVE_STEPS="1"))
    job.wait_for(r"checkpoint saved: checkpoint-2 \(step 2\)")
    job.signal(signal.SIGTERM)
    code = job.finish()
    assert code == EXIT_INTERRUPTED, job.output[-4000:]
    stopped = re.search(r"stopped by SIGTERM at step (\d+); checkpoint saved to (\S+); restart", job.output)
    assert stopped, job.output[-4000:]
    step = int(stopped.group(1))
    assert 2 <= step < 6
    return out, step, job.output


def test_sigterm_stops_with_a_checkpoint_and_exit_75(interrupted: tuple[Path, int, str]) -> None:
    out, step, log = interrupted
    run = out / "staging"  # the run in progress (docs/resume.md, Layout)
    assert "SIGTERM received: stopping after the current step" in log
    assert checkpoints.problem(run / f"checkpoint-{step}") is None  # complete and marked
    assert not (out / ADAPTER).exists() and not (run / ADAPTER).exists()  # no final adapter from an interrupted run
    manifest = json.loads((run / "run_manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["stopped_at_step"] == step
    # save_total_limit=2: only the two newest checkpoints are kept
    assert [s for s, _ in checkpoints.list_checkpoints(run)] == [step - 1, step]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_whole_group_stops_a_run_with_a_loader_worker(
    signum: signal.Signals, tiny_model: Path, workbook: Path, tmp_path: Path
) -> None:
    """A scheduler (SLURM's scancel) or a terminal's Ctrl-C signals every process of the job, the data loader's
    worker too: the run still stops after the step with a checkpoint (exit 75), and says so once."""
    env = job_env(tiny_model, workbook, tmp_path / "out", SAUDIAL_SAVE_STEPS="1", SAUDIAL_DATALOADER_NUM_WORKERS="1")
    inputs = {folder: tree(folder) for folder in (workbook.parent, tiny_model)}  # files saudial did not write
    job = Job(env, group=True)
    job.wait_for(r"checkpoint saved: checkpoint-2 \(step 2\)")
    job.signal_group(signum)
    code = job.finish()
    assert {folder: tree(folder) for folder in inputs} == inputs
    name = signal.Signals(signum).name
    assert code == EXIT_INTERRUPTED, job.output[-4000:]
    assert "data loader: 1 worker process(es)" in job.output  # the run had a worker to signal
    assert re.search(rf"stopped by {name} at step \d+; checkpoint saved to", job.output), job.output[-4000:]
    assert job.output.count(f"{name} received") == 1, job.output[-4000:]  # the worker stays quiet
    assert "DataLoader worker" not in job.output, job.output[-4000:]


def test_resume_continues_and_equals_an_uninterrupted_run(
    interrupted: tuple[Path, int, str], reference: Path, tiny_model: Path, workbook: Path, tmp_path: Path
) -> None:
    source, step, _ = interrupted
    out = tmp_path / "out"
    shutil.copytree(source, out)
    code, log = run_job(job_env(tiny_model, workbook, out, SAUDIAL_SAVE_STEPS="1"))
    assert code == 0, log[-4000:]
    assert f"resuming from checkpoint-{step} (step {step})" in log
    assert_bitwise_equal(adapter(out), adapter(reference))
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["status"] == "finished"
    assert [a["resumed_from_step"] for a in manifest["attempts"]] == [0, step]


def test_checkpoint_broken_mid_save_is_skipped(
    interrupted: tuple[Path, int, str], reference: Path, tiny_model: Path, workbook: Path, tmp_path: Path
) -> None:
    """What SIGKILL during a save leaves: a newer checkpoint folder with a truncated file and no marker."""
    source, step, _ = interrupted
    out = tmp_path / "out"
    shutil.copytree(source, out)
    broken = out / "staging" / f"checkpoint-{step + 1}"
    shutil.copytree(out / "staging" / f"checkpoint-{step}", broken)
    (broken / checkpoints.MARKER).unlink()
    weights = broken / ADAPTER
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    code, log = run_job(job_env(tiny_model, workbook, out, SAUDIAL_SAVE_STEPS="1"))
    assert code == 0, log[-4000:]
    assert f"skipping incomplete checkpoint checkpoint-{step + 1}" in log
    assert f"resuming from checkpoint-{step} (step {step})" in log
    assert_bitwise_equal(adapter(out), adapter(reference))


def test_checkpoint_validation(interrupted: tuple[Path, int, str], tmp_path: Path) -> None:
    """A marker whose files no longer match (lost writes) is as invalid as a missing marker."""
    source, step, _ = interrupted
    copy = tmp_path / "checkpoint-9"
    shutil.copytree(source / "staging" / f"checkpoint-{step}", copy)
    assert checkpoints.problem(copy) is None
    optimizer = copy / "optimizer.pt"
    data = optimizer.read_bytes()
    optimizer.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # same size, one bit pattern changed
    assert "optimizer.pt does not match its sha256" in (checkpoints.problem(copy) or "")
    optimizer.write_bytes(b"")
    assert "optimizer.pt has 0 bytes" in (checkpoints.problem(copy) or "")
    marker = json.loads((copy / checkpoints.MARKER).read_text())
    assert checkpoints.problem(copy, fingerprint="another") == "it belongs to a run with another configuration or data"
    assert marker["step"] == step


def test_other_settings_or_data_are_refused(
    interrupted: tuple[Path, int, str], tiny_model: Path, workbook: Path, tmp_path: Path
) -> None:
    source, _, _ = interrupted
    out = tmp_path / "out"
    shutil.copytree(source, out)
    other_data = synthetic.write(synthetic.make_rows(200, seed=1), tmp_path / "other.xlsx")
    env = job_env(tiny_model, other_data, out, SAUDIAL_SAVE_STEPS="1", SAUDIAL_LEARNING_RATE="1e-4")
    code, log = run_job(env)
    assert code == EXIT_CONFIG, log[-4000:]
    assert "holds an unfinished run with other training settings or data" in log
    assert f"learning_rate: {Settings().learning_rate} -> 0.0001" in log and "data sha256:" in log
    assert "SAUDIAL_OVERWRITE_OUTPUT_DIR=true" in log
    assert "Traceback" not in log
    assert {p.name for p in out.iterdir()} == {p.name for p in source.iterdir()}  # nothing touched

    # resume=never does not continue an earlier run either
    code, log = run_job(job_env(tiny_model, workbook, out, SAUDIAL_SAVE_STEPS="1", SAUDIAL_RESUME="never"))
    assert code == EXIT_CONFIG, (code, log[-4000:])
    assert "SAUDIAL_RESUME=never" in log, log[-4000:]


def test_a_finished_run_is_not_redone(reference: Path, tiny_model: Path, workbook: Path) -> None:
    """The same settings and data again (a scheduled job, `make train` twice): a success that changes nothing."""
    before = {p.name: p.read_bytes() for p in reference.iterdir() if p.is_file()}
    code, log = run_job(job_env(tiny_model, workbook, reference))
    assert code == EXIT_OK, log[-4000:]
    assert f"nothing to do: {reference.resolve()} already holds this run, finished" in log
    assert {p.name: p.read_bytes() for p in reference.iterdir() if p.is_file()} == before


def test_hub_checkpoint_round_trip(
    interrupted: tuple[Path, int, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hub_strategy=checkpoint: upload to last-checkpoint/, resume on a machine whose disk is empty.

    In-process, with huggingface_hub's two calls replaced by a local folder standing in for the Hub
    (the real upload and download are not exercised here: no network in the tests).
    """
    import huggingface_hub

    from saudial.errors import ConfigError

    source, step, _ = interrupted
    remote = tmp_path / "hub"

    class FakeApi:
        def create_repo(self, repo_id: str, **_: object) -> None:
            (remote / repo_id).mkdir(parents=True, exist_ok=True)

        def upload_folder(self, *, repo_id: str, folder_path: Path, path_in_repo: str, **_: object) -> None:
            target = remote / repo_id / path_in_repo
            shutil.rmtree(target, ignore_errors=True)  # delete_patterns="*": the folder is replaced
            shutil.copytree(folder_path, target)

    def fake_snapshot_download(repo_id: str, *, local_dir: Path, **_: object) -> str:
        if not (remote / repo_id).is_dir():
            raise OSError("404 repository not found")
        shutil.copytree(remote / repo_id, local_dir, dirs_exist_ok=True)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    fingerprint = json.loads((source / "staging" / f"checkpoint-{step}" / checkpoints.MARKER).read_text())[
        "fingerprint"
    ]

    def settings(out: Path) -> Settings:
        return Settings.model_validate(
            {
                "data": tmp_path / "x.xlsx",
                "output_dir": out,
                "push_to_hub": True,
                "hub_model_id": "me/run",
                "hub_strategy": "checkpoint",
            }
        )

    # No repo yet: a fresh start.
    def prepare(out: Path, fingerprint: str) -> Path | None:
        s = settings(out)
        return prepare_output_dir(s, fingerprint, "sha", lambda: hub.download_checkpoint(s, fingerprint)).checkpoint

    assert prepare(tmp_path / "first", fingerprint) is None
    assert hub.upload_checkpoint(settings(source), source / "staging" / f"checkpoint-{step}")

    out = tmp_path / "elsewhere"
    checkpoint = prepare(out, fingerprint)
    assert checkpoint == out / "staging" / f"checkpoint-{step}"
    assert checkpoints.problem(checkpoint, fingerprint) is None
    assert not (out / "staging" / ".hub-checkpoint").exists()

    with pytest.raises(ConfigError, match="other training settings"):
        prepare(tmp_path / "third", "another-fingerprint")

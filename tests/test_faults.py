"""Faults of the machine and of the output directory, through the real entry point on the tiny LFM2.

Disk full (a real tmpfs, filled to a measured level), a read-only output, SIGTERM during evaluation,
output directories saudial must never clean, a damaged run record, out-of-memory and a bug. Each run
is a subprocess of entrypoint.py; each asserts the exit code, one `error:` line without a traceback,
and that files saudial did not write are unchanged (hash trees before and after).

Out of memory cannot be caused on purpose on a 2-core CPU machine without starving the test runner:
it is injected (`sitecustomize.py` on PYTHONPATH makes one library function raise what torch raises),
and everything around it runs for real.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from saudial.errors import (
    EXIT_BUG,
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_IO,
    EXIT_OK,
    EXIT_TRAINING,
    ConfigError,
    StorageError,
    check_writable,
    make_dirs,
)
from saudial.rundir.staging import check_not_protected
from tests.adapter_run import copy_run, trained_adapter
from tests.conftest import REPO, fill
from tests.entry import error_line, run, tree
from tests.jobs import ADAPTER, Job, env_for

pytestmark = pytest.mark.slow

PAGE = 4096

TRAINING_STEP = re.compile(r"^step \d+/\d+  loss ", re.M)  # a logged training step (training/steplines.py)


def disk_bytes(path: Path) -> int:
    """What the files under `path` take on a tmpfs (whole pages)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(-(-p.stat().st_size // PAGE) * PAGE for p in files)


@pytest.fixture
def finished(tiny_model: Path, workbook: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step run of `env_for`'s settings (one checkpoint, at the last step), shared with the other
    test modules (read-only: copy it): the previous run of the overwrite cases."""
    out = trained_adapter(tiny_model, workbook, tmp_path_factory)
    assert json.loads((out / "run_manifest.json").read_text())["status"] == "finished"
    return out


@pytest.mark.parametrize("phase", ["checkpoint", "final save"])
def test_disk_full_keeps_the_previous_adapter_and_exits_74(
    phase: str, finished: Path, tiny_model: Path, workbook: Path, tmpfs: Path
) -> None:
    """Overwrite a finished run on a disk that fills up mid-checkpoint / mid-final-save: exit 74, one line
    naming the place and its free space; the previous run byte-identical; with room again the same command
    resumes (from the complete checkpoint, for the final save) and replaces it."""
    out = copy_run(finished, tmpfs / "out")
    (tmpfs / "mine.txt").write_text("the user's")
    checkpoint = disk_bytes(finished / "checkpoint-4")
    if phase == "checkpoint":  # half a checkpoint fits: checkpoint-2 is cut short
        settings, leave = {"SAUDIAL_SAVE_STEPS": "2"}, 64 * 1024 + checkpoint // 2
    else:  # the checkpoint at the last step fits, the adapter after it does not
        settings, leave = {}, checkpoint + 48 * 1024
    filler = fill(tmpfs, leave)
    before = tree(tmpfs, skip="out/staging")
    env = env_for(tiny_model, workbook, out, SAUDIAL_OVERWRITE_OUTPUT_DIR="true", SAUDIAL_LEARNING_RATE="3e-3")
    env.update(settings)
    result = run(env)
    assert result.returncode == EXIT_IO, result.stderr[-3000:]
    line = error_line(result.stderr)
    assert f"cannot write {out / 'staging'}" in line and "No space left on device" in line, line
    assert "free of 6.0 MB there" in line and "free space there" in line, line
    assert tree(tmpfs, skip="out/staging") == before  # the previous run, the user's file: untouched

    filler.unlink()  # room again: the same command finishes the run and only then replaces the old one
    again = run(env)
    assert again.returncode == EXIT_OK, again.stderr[-3000:]
    if phase == "final save":
        assert "resuming from checkpoint-4 (step 4)" in again.stderr
    assert (out / ADAPTER).read_bytes() != (finished / ADAPTER).read_bytes()
    assert not (out / "staging").exists() and (tmpfs / "mine.txt").read_text() == "the user's"


def test_read_only_output_exits_74(tiny_model: Path, workbook: Path, tmpfs: Path) -> None:
    (tmpfs / "kept.txt").write_text("x")
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    before = tree(tmpfs)
    result = run(env_for(tiny_model, workbook, tmpfs / "out"))
    assert result.returncode == EXIT_IO, result.stderr[-3000:]
    line = error_line(result.stderr)
    assert f"cannot write {tmpfs / 'out'}" in line and "read-only" in line, line
    assert tree(tmpfs) == before


# --- SIGTERM during evaluation, and what the next start does ------------------------------------------


@pytest.fixture(scope="module")
def stopped_in_evaluation(tiny_model: Path, workbook: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped by SIGTERM while it generated the base model's translations."""
    out = tmp_path_factory.mktemp("stopped") / "out"
    env = env_for(
        tiny_model,
        workbook,
        out,
        SAUDIAL_EVAL="full",
        SAUDIAL_MAX_EVAL_SAMPLES="6",
        SAUDIAL_MAX_NEW_TOKENS="48",
        SAUDIAL_PER_DEVICE_EVAL_BATCH_SIZE="1",
    )
    job = Job(env)
    job.wait_for(r"base model:")
    job.signal(signal.SIGTERM)
    code = job.finish()
    assert code == EXIT_INTERRUPTED, job.output[-4000:]
    line = error_line(job.output)
    assert line.startswith("error: stopped by SIGTERM during evaluation; the trained adapter is in"), line
    assert "restart with the same settings to finish the evaluation" in line
    manifest = json.loads((out / "staging" / "run_manifest.json").read_text())
    assert manifest["status"] == "trained" and not (out / ADAPTER).exists()
    return out


def test_restart_after_sigterm_in_evaluation_only_evaluates(
    stopped_in_evaluation: Path, tiny_model: Path, workbook: Path, tmp_path: Path
) -> None:
    out = copy_run(stopped_in_evaluation, tmp_path / "out")
    trained = (out / "staging" / ADAPTER).read_bytes()
    env = env_for(tiny_model, workbook, out, SAUDIAL_EVAL="full", SAUDIAL_MAX_EVAL_SAMPLES="6")
    env["SAUDIAL_MAX_NEW_TOKENS"] = "8"  # an evaluation setting: not part of the run's fingerprint
    result = run(env)
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    assert "has finished training (step 4): continuing with what is left" in result.stderr
    assert not TRAINING_STEP.search(result.stdout) and "resuming from" not in result.stderr  # no training step
    assert (out / ADAPTER).read_bytes() == trained
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["attempts"][-1]["stage"] == "evaluate"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_steps"] == 4 and metrics["evaluation"]["samples"] == 6
    assert {"eval_results.md", "eval_predictions.jsonl"} <= {p.name for p in out.iterdir()}


def test_damaged_record_of_a_run_in_progress_continues_from_its_checkpoints(
    stopped_in_evaluation: Path, tiny_model: Path, workbook: Path, tmp_path: Path
) -> None:
    """A garbage run_manifest.json in staging: the checkpoints' own markers say whose they are."""
    out = copy_run(stopped_in_evaluation, tmp_path / "out")
    (out / "staging" / "run_manifest.json").write_text('{"status": "runn')
    result = run(env_for(tiny_model, workbook, out))
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    assert "is damaged (it is not valid JSON" in result.stderr and "continuing from it" in result.stderr
    assert "resuming from checkpoint-4 (step 4)" in result.stderr and "Traceback" not in result.stderr
    assert json.loads((out / "run_manifest.json").read_text())["status"] == "finished"


def test_damaged_record_of_a_finished_run_is_refused_with_a_safe_fix(
    finished: Path, tiny_model: Path, workbook: Path, tmp_path: Path
) -> None:
    out = copy_run(finished, tmp_path / "out")
    (out / "run_manifest.json").write_bytes(b"\x00garbage")
    before = tree(out)
    result = run(env_for(tiny_model, workbook, out, SAUDIAL_OVERWRITE_OUTPUT_DIR="true"))
    assert result.returncode == EXIT_CONFIG
    line = error_line(result.stderr)
    assert "run_manifest.json is damaged" in line and "choose another SAUDIAL_OUTPUT_DIR" in line, line
    assert "delete" not in line.rsplit(": ", 1)[-1]  # the fix deletes nothing
    assert tree(out) == before


# --- directories saudial never cleans -----------------------------------------------------------------


def test_foreign_files_are_refused_even_with_overwrite(
    finished: Path, tiny_model: Path, workbook: Path, tmp_path: Path
) -> None:
    out = copy_run(finished, tmp_path / "out")
    (out / "notes.txt").write_text("mine")
    (out / "demo").mkdir()
    before = tree(out)
    result = run(env_for(tiny_model, workbook, out, SAUDIAL_OVERWRITE_OUTPUT_DIR="true"))
    assert result.returncode == EXIT_CONFIG
    line = error_line(result.stderr)
    assert "holds files that no saudial run wrote there ('demo', 'notes.txt')" in line, line
    assert "not even with SAUDIAL_OVERWRITE_OUTPUT_DIR=true" in line
    assert tree(out) == before


@pytest.mark.parametrize("case", ["cwd", "home", "data folder"])
def test_directories_that_are_never_an_output_directory(
    case: str, tiny_model: Path, workbook: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data = Path(shutil.copy(workbook, data_dir / "SauDial Dataset.xlsx"))
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("mine")
    target = {"cwd": ".", "home": str(home), "data folder": str(data_dir)}[case]
    env = env_for(tiny_model, data, Path(target), SAUDIAL_OVERWRITE_OUTPUT_DIR="true", HOME=str(home))
    before, repo = tree(tmp_path), {p.name for p in REPO.iterdir()}
    result = run(env)
    assert result.returncode == EXIT_CONFIG, result.stderr[-3000:]
    line = error_line(result.stderr)
    assert f"SAUDIAL_OUTPUT_DIR={target!r} is " in line and "never uses as an output directory" in line, line
    assert tree(tmp_path) == before and {p.name for p in REPO.iterdir()} == repo


def test_more_directories_that_are_never_an_output_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same rule, in-process (no model load needed to see it)."""
    project = tmp_path / "project"
    data = project / "data" / "2026" / "x.xlsx"
    data.parent.mkdir(parents=True)
    monkeypatch.chdir(project)
    refused = {
        Path("/"): "is the root directory",
        Path("   "): "SAUDIAL_OUTPUT_DIR is empty",
        Path(""): "is the current directory",
        tmp_path: "is a directory above the current one",
        data.parent: "is the folder that holds the data file 'x.xlsx'",
        project / "data": "is a folder above the data file 'x.xlsx'",
    }
    for path, why in refused.items():
        with pytest.raises(ConfigError, match=why):
            check_not_protected(path, "SAUDIAL_OUTPUT_DIR", data)
    check_not_protected(project / "outputs" / "run", "SAUDIAL_OUTPUT_DIR", data)  # a new folder: fine


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="a /proc file system")
def test_a_folder_the_file_system_cannot_make_is_exit_74(tmp_path: Path) -> None:
    """/proc answers mkdir and a new file with ENOENT: the folder named, exit 74 (not an unexpected error, exit 1)."""
    with pytest.raises(StorageError, match=r"^cannot create /proc/saudial-run: ENOENT .*write to a folder on a disk"):
        make_dirs(Path("/proc/saudial-run"))
    with pytest.raises(StorageError, match=r"^cannot write in /proc: ENOENT .*write to a folder on a disk"):
        check_writable(Path("/proc"))  # a folder that exists: translate's or merge's --output in it
    make_dirs(tmp_path / "a" / "b")  # an ordinary new folder and its parent
    assert (tmp_path / "a" / "b").is_dir() and StorageError.exit_code == EXIT_IO


# --- out of memory, and a bug -------------------------------------------------------------------------

INJECT = """
import importlib, os, sys

def _inject():
    module, qualname, kind = os.environ["FAULT_INJECT"].split(":")
    sys.path.insert(0, os.getcwd())  # the checkout (entrypoint.py's folder): not on sys.path yet here
    owner = importlib.import_module(module)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)

    def fail(*args, **kwargs):
        import torch
        if kind == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if kind == "cpu":
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        if kind == "host":
            raise MemoryError()
        raise ValueError("an unexpected value")

    if not hasattr(owner, name):  # a renamed target must fail the test, not leave the run unharmed
        raise SystemExit(f"FAULT_INJECT: {module} has no {qualname}")
    setattr(owner, name, fail)

if os.environ.get("FAULT_INJECT"):
    _inject()
"""


def injected(env: dict[str, str], where: Path, target: str) -> dict[str, str]:
    (where / "sitecustomize.py").write_text(INJECT)
    return env | {"PYTHONPATH": str(where), "FAULT_INJECT": target}


def command_env(tiny_model: Path, workbook: Path, tmp_path: Path) -> dict[str, str]:
    env = env_for(tiny_model, workbook, tmp_path / "unused", SAUDIAL_MAX_NEW_TOKENS="4", SAUDIAL_MAX_EVAL_SAMPLES="2")
    for key in ("SAUDIAL_OUTPUT_DIR", "SAUDIAL_DATA", "SAUDIAL_MODEL_NAME_OR_PATH"):
        env.pop(key)  # from the run's manifest
    return env


def test_out_of_memory_in_generation_exits_3(finished: Path, tiny_model: Path, workbook: Path, tmp_path: Path) -> None:
    out = copy_run(finished, tmp_path / "run")
    before = tree(out)
    env = injected(
        command_env(tiny_model, workbook, tmp_path) | {"SAUDIAL_EVAL": "full"},
        tmp_path,
        "transformers.generation.utils:GenerationMixin.generate:cuda",
    )
    result = run(env, "evaluate", "--adapter", str(out))
    assert result.returncode == EXIT_TRAINING, result.stderr[-3000:]
    line = error_line(result.stderr)
    assert "CUDA out of memory: generating for 2 prompts of up to" in line, line
    assert "lower SAUDIAL_PER_DEVICE_EVAL_BATCH_SIZE, SAUDIAL_MAX_NEW_TOKENS or SAUDIAL_MAX_LENGTH" in line
    assert tree(out) == before


def test_out_of_memory_in_the_eval_loss_keeps_the_trained_adapter(
    tiny_model: Path, workbook: Path, tmp_path: Path
) -> None:
    """The trainer's eval loss runs out of memory after training: exit 3; the same settings without the
    fault then only evaluate."""
    out = tmp_path / "out"
    env = env_for(tiny_model, workbook, out, SAUDIAL_EVAL="loss")
    result = run(injected(env, tmp_path, "transformers.trainer:Trainer.evaluate:cpu"))
    assert result.returncode == EXIT_TRAINING, result.stderr[-3000:]
    line = error_line(result.stderr)
    assert "host out of memory: lower SAUDIAL_PER_DEVICE_EVAL_BATCH_SIZE" in line, line
    assert f"the trained adapter is in {out / 'staging'}: restart with the same settings" in line
    assert json.loads((out / "staging" / "run_manifest.json").read_text())["status"] == "trained"

    again = run(env)
    assert again.returncode == EXIT_OK, again.stderr[-3000:]
    assert "has finished training" in again.stderr and not TRAINING_STEP.search(again.stdout)
    assert json.loads((out / "metrics.json").read_text())["eval_loss"] > 0


def test_out_of_memory_in_merge_exits_3(finished: Path, tiny_model: Path, workbook: Path, tmp_path: Path) -> None:
    merged = tmp_path / "merged"
    env = injected(
        command_env(tiny_model, workbook, tmp_path),
        tmp_path,
        "peft.tuners.tuners_utils:BaseTuner.merge_and_unload:host",
    )
    result = run(env, "merge", "--adapter", str(finished), "--output", str(merged))
    assert result.returncode == EXIT_TRAINING, result.stderr[-3000:]
    line = error_line(result.stderr)
    assert "host out of memory: merging holds the whole base model in host memory" in line, line
    assert [p.name for p in merged.iterdir()] == ["staging"]  # nothing in place; the next merge clears it


def test_a_bug_is_one_line_and_debug_shows_the_traceback(tiny_model: Path, workbook: Path, tmp_path: Path) -> None:
    env = injected(
        env_for(tiny_model, workbook, tmp_path / "out"), tmp_path, "saudial.process.environment:git_revision:bug"
    )
    result = run(env)
    assert result.returncode == EXIT_BUG
    line = error_line(result.stderr)
    assert line == (
        "error: unexpected error (a bug in saudial): ValueError: an unexpected value; run again with --debug "
        "(or SAUDIAL_DEBUG=1) for the traceback, and report it"
    )
    debug = run(env, "--debug")
    assert debug.returncode == EXIT_BUG and "Traceback (most recent call last)" in debug.stderr
    assert "ValueError: an unexpected value" in debug.stderr


# --- the move into place, killed at every step; merge's output directory ------------------------------


def _runs(output: Path) -> tuple[dict[str, str], dict[str, str]]:
    """A finished run A in `output` and a finished run B in its staging (as `promote` finds them)."""
    from saudial.rundir import record

    output.mkdir()
    for name, text in {"adapter_model.safetensors": "A", "old_only.md": "A", "metrics.json": "{}"}.items():
        (output / name).write_text(text)
    (output / "checkpoint-4").mkdir()
    (output / "checkpoint-4" / "optimizer.pt").write_text("A")
    files = ["adapter_model.safetensors", "checkpoint-4", "metrics.json", "old_only.md"]
    record.update(output, {"saudial_run": 1, "status": "finished", record.FILES: files}, replace=True)
    staging = output / "staging"
    staging.mkdir()
    record.update(staging, {"saudial_run": 1, "status": "evaluated", record.FILES: []}, replace=True)
    for name, text in {"adapter_model.safetensors": "B", "new_only.md": "B"}.items():
        (staging / name).write_text(text)
    (staging / "checkpoint-4").mkdir()
    (staging / "checkpoint-4" / "optimizer.pt").write_text("B")
    record.update(staging, metrics={"train_loss": 1.0})
    expected = tree(staging)
    return expected, tree(output, skip="staging")


def test_a_move_into_place_killed_at_any_step_is_completed_by_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from saudial.rundir import staging

    real_replace, step = os.replace, 0
    while True:
        output = tmp_path / f"out{step}"
        new, _old = _runs(output)
        calls = [0]

        def dying_replace(src: object, dst: object, limit: int = step, calls: list[int] = calls) -> None:
            if calls[0] == limit:
                raise OSError(5, "killed here")
            calls[0] += 1
            real_replace(src, dst)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "replace", dying_replace)  # every rename: the record's writes and the moves
        try:
            staging.promote(output)
            finished_early = True
        except OSError:
            finished_early = False
        monkeypatch.setattr(os, "replace", real_replace)
        if not finished_early and not staging.resume_promotion(output):  # what the next start does:
            staging.promote(output)  # no journal yet: the record still says evaluated (or finished): move again
        result = tree(output)
        assert {k: v for k, v in result.items() if k != "run_manifest.json"} == {
            k: v for k, v in new.items() if k != "run_manifest.json"
        }, step
        manifest = json.loads((output / "run_manifest.json").read_text())
        assert manifest["status"] == "finished" and "old_only.md" not in manifest["files"], step
        assert not (output / "old_only.md").exists() and not (output / "staging").exists(), step
        if finished_early:
            break
        step += 1
    assert step >= 6  # two record writes and every move of this run: each a place to die


def test_merge_output_follows_the_same_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from saudial.config.settings import Settings
    from saudial.rundir.products import prepare

    settings = Settings.model_validate({"overwrite_output_dir": True})
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds files that no saudial merge wrote there \('notes.txt'\)"):
        prepare(merged, settings, "merge")
    assert [p.name for p in merged.iterdir()] == ["notes.txt"]
    monkeypatch.chdir(merged)
    with pytest.raises(ConfigError, match="is the current directory"):
        prepare(Path("."), settings, "merge")
    work = prepare(tmp_path / "fresh", settings, "merge")
    assert (
        work == tmp_path / "fresh" / "staging" and json.loads((work / "run_manifest.json").read_text())["saudial_merge"]
    )
    # Inside a run's folder, which holds only what that run wrote (its next start refused the merge's folder).
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_manifest.json").write_text(json.dumps({"saudial_run": 1, "status": "finished", "files": []}))
    for inside in (run / "merged", run / "deeper" / "merged"):
        with pytest.raises(ConfigError, match=r"is inside the folder of a saudial training run \("):
            prepare(inside, settings, "merge")
    assert sorted(p.name for p in run.iterdir()) == ["run_manifest.json"]
    assert prepare(run / "gguf", settings, "export", listed_by=run) == run / "gguf" / "staging"  # export's own


@pytest.mark.parametrize(
    ("found", "command"),
    [
        ("training run", "merge"),
        ("training run", "export"),
        ("merge", "export"),
        ("export", "merge"),
        ("export", "train"),
    ],
)
def test_each_command_replaces_only_its_own_output(found: str, command: str, tmp_path: Path) -> None:
    """merge and export (--output) and training (SAUDIAL_OUTPUT_DIR) replace only an earlier output of their own
    command, overwrite or not: an export with --overwrite-output-dir into a training run's folder once deleted its
    adapter, checkpoints and metrics, told it was "an earlier export"."""
    from saudial.config.settings import Settings
    from saudial.rundir.outputs import prepare_output_dir
    from saudial.rundir.products import prepare

    out = tmp_path / "out"
    (out / "checkpoint-4").mkdir(parents=True)
    files = ["adapter_model.safetensors", "metrics.json", "checkpoint-4"]
    for name in files[:2]:
        (out / name).write_text("written by an earlier saudial command")
    marks = {"merge": {"saudial_merge": 1}, "export": {"saudial_export": 1}}.get(found, {})
    manifest = {"saudial_run": 1, "status": "finished", "fingerprint": "f", **marks, "files": files}
    (out / "run_manifest.json").write_text(json.dumps(manifest))
    before = tree(out)
    settings = Settings.model_validate({"output_dir": out, "overwrite_output_dir": True})
    with pytest.raises(ConfigError) as refused:
        if command == "train":
            prepare_output_dir(settings, "another fingerprint", "sha256")
        else:
            prepare(out, settings, command)
    wanted = "training run" if command == "train" else command
    message = str(refused.value)
    assert f"holds a saudial {found} ('adapter_model.safetensors', 'checkpoint-4', " in message
    assert f"not an earlier {wanted}" in message and "not even with SAUDIAL_OVERWRITE_OUTPUT_DIR=true" in message
    assert tree(out) == before


def test_a_record_saudial_did_not_write_is_never_taken_for_one(tmp_path: Path) -> None:
    from saudial.config.settings import Settings
    from saudial.rundir.outputs import prepare_output_dir

    out = tmp_path / "out"
    out.mkdir()
    (out / "run_manifest.json").write_text('{"files": ["adapter_model.safetensors"]}')  # not saudial's
    (out / "adapter_model.safetensors").write_text("theirs")
    before = tree(out)
    settings = Settings.model_validate({"output_dir": out, "overwrite_output_dir": True})
    with pytest.raises(ConfigError, match="it is not a saudial run record"):
        prepare_output_dir(settings, "fingerprint", "sha256")
    assert tree(out) == before

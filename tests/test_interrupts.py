"""SIGTERM and SIGINT (Ctrl-C) in the commands besides `train` and `export`: exit 75 and one line saying what was
(not) written, nothing half written left behind (was: 130 with "interrupted (Ctrl-C)", or killed by SIGTERM, 143).

Each command runs as a real process of the entry point's `main`, stopped at one function (tests/jobs.paused_job)
while the signal is sent: generation, a file being written, the model loading, the merge being saved, the upload.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pandas as pd
import pytest

from saudial.errors import EXIT_INTERRUPTED
from tests.adapter_run import copy_run, trained_adapter
from tests.conftest import base_env
from tests.entry import error_line
from tests.jobs import paused_job

pytestmark = pytest.mark.slow  # a trained adapter, and a process that imports torch per case

TOKEN = "hf_" + "Zx81InterruptsNeverLeak" * 2


@pytest.fixture
def trained(tiny_model: Path, workbook: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_adapter(tiny_model, workbook, tmp_path_factory)


def command_env(tiny_model: Path, workbook: Path, tmp_path: Path) -> dict[str, str]:
    env = base_env(tiny_model, workbook, tmp_path / "unused", SAUDIAL_MAX_NEW_TOKENS="8", HF_TOKEN=TOKEN)
    for key in ("SAUDIAL_OUTPUT_DIR", "SAUDIAL_DATA", "SAUDIAL_MODEL_NAME_OR_PATH", "SAUDIAL_QUANTIZATION"):
        env.pop(key)  # from the run's manifest
    return env


def stopped(
    job_env: dict[str, str], pause_at: str, tmp_path: Path, signum: int, *args: str, after: bool = False
) -> str:
    """Run `saudial ARGS` to `pause_at`, send `signum`: exit 75 and its one error line (returned)."""
    job = paused_job(job_env, pause_at, tmp_path / "paused", *args, after=after)
    job.signal(signum)
    code = job.finish(timeout=120)
    assert code == EXIT_INTERRUPTED, job.output[-3000:]
    assert TOKEN not in job.output
    line = error_line(job.output)
    assert line.startswith(f"error: stopped by {signal.Signals(signum).name} during "), line
    return line


def test_translate_file_stopped_while_writing_leaves_no_file(
    trained: Path, tiny_model: Path, workbook: Path, tmp_path: Path
) -> None:
    source = tmp_path / "lines.csv"
    pd.DataFrame({"English Text": ["Open the door.", "Find the sword."], "Dialect": ["Najdi", "Hijazi"]}).to_csv(
        source, index=False
    )
    env = command_env(tiny_model, workbook, tmp_path)
    args = ("translate", "--adapter", str(trained), "--input", str(source))
    # The whole table is in the file (to_csv returned) when SIGTERM comes: the file is removed all the same.
    line = stopped(env, "pandas:DataFrame.to_csv", tmp_path, signal.SIGTERM, *args, after=True)
    assert "nothing was written" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lines.csv", "paused"]


def test_translate_text_ctrl_c_during_generation(
    trained: Path, tiny_model: Path, workbook: Path, tmp_path: Path
) -> None:
    env = command_env(tiny_model, workbook, tmp_path)
    args = ("translate", "--adapter", str(trained), "--dialect", "Najdi", "Open the door.")
    line = stopped(env, "saudial.inference.generate:translate", tmp_path, signal.SIGINT, *args)
    assert "nothing was written" in line, line


def test_chat_and_evaluate_ctrl_c_while_the_model_loads(
    trained: Path, tiny_model: Path, workbook: Path, tmp_path: Path
) -> None:
    env = command_env(tiny_model, workbook, tmp_path)
    adapter = copy_run(trained, tmp_path / "adapter")
    (adapter / "run_manifest.json").unlink()  # an adapter without saudial's record: chat takes it as it is
    chat = ("chat", "--adapter", str(adapter), "Where is the market?")
    line = stopped(env, "saudial.inference.generate:load_for_inference", tmp_path, signal.SIGINT, *chat)
    assert "nothing was written" in line, line
    (tmp_path / "paused").unlink()
    run = copy_run(trained, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    evaluate = ("evaluate", "--adapter", str(run))
    line = stopped(
        env | {"SAUDIAL_EVAL": "full"}, "saudial.jobs.evaluate:load_for_inference", tmp_path, signal.SIGINT, *evaluate
    )
    assert "nothing was written" in line, line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_merge_stopped_while_saving_leaves_nothing(
    trained: Path, tiny_model: Path, workbook: Path, tmp_path: Path, signum: int
) -> None:
    """Stopped after the merged weights and tokenizer are saved in --output/staging: all of it is taken back."""
    env = command_env(tiny_model, workbook, tmp_path)
    merged = tmp_path / "merged"
    args = ("merge", "--adapter", str(trained), "--output", str(merged))
    line = stopped(env, "saudial.jobs.merge:write_json", tmp_path, signum, *args)
    assert line.endswith(f"during the merge; nothing was written to {merged}: run it again"), line
    assert not merged.exists()


def test_push_sigterm_during_the_upload(trained: Path, tiny_model: Path, workbook: Path, tmp_path: Path) -> None:
    """The card is written whole, the upload stopped at once; the line names the command that uploads it."""
    env = command_env(tiny_model, workbook, tmp_path) | {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}
    out = copy_run(trained, tmp_path / "run")
    args = ("push", "--output-dir", str(out), "--hub-model-id", "someone/model")
    line = stopped(env, "huggingface_hub:HfApi.create_repo", tmp_path, signal.SIGTERM, *args)
    assert line.endswith(
        f"the upload; the finished run is in {out}, not uploaded: upload it with "
        f"`saudial push --output-dir {out} --hub-model-id someone/model`"
    ), line
    from saudial.publish.card import build_card

    assert (out / "README.md").read_text() == str(build_card(out, "someone/model"))  # whole


def test_a_second_signal_in_a_command_speaks_of_no_checkpoint(caplog: pytest.LogCaptureFixture) -> None:
    """Training's repeated-signal warning speaks of an incomplete checkpoint; a command that writes none (merge,
    evaluate, translate) says only that it is already stopping."""
    import logging

    from saudial.errors import Interrupted
    from saudial.process import signals

    caplog.set_level(logging.WARNING, logger="saudial.process.signals")
    stop = pytest.raises(Interrupted, match="stopped by SIGTERM during merge; nothing was written")
    with stop, signals.interruptible("merge", "nothing was written"):
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)
        signals.check()
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "SIGTERM received: stopping the merge after this batch",
        "SIGTERM received again: already stopping, ignored",
    ]

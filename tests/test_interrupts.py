"""SIGTERM and SIGINT (Ctrl-C) in the commands besides `train` and `export`: exit 75 and one line saying what was
(not) written, nothing half written left behind (was: 130 with "interrupted (Ctrl-C)", or killed by SIGTERM, 143).

Each command runs as a real process of the entry point's `main`, stopped at one function (tests/jobs.paused_job)
while the signal is sent: generation, a file being written, the model loading, the merge being saved, the upload.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from saudial.errors import EXIT_INTERRUPTED
from tests.adapter_run import copy_run, trained_adapter
from tests.conftest import REPO, base_env
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


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_during_a_lazy_import_waits_for_the_import(
    trained: Path, tiny_model: Path, workbook: Path, tmp_path: Path, signum: int
) -> None:
    """A signal while transformers imports LFM2's modeling module in the middle of the merge: the import finishes,
    then the merge stops (exit 75, its one line), leaving nothing. Raised inside the import machinery instead, the
    stop could leave the libraries half imported (process/signals.py)."""
    env = command_env(tiny_model, workbook, tmp_path)
    merged = tmp_path / "merged"
    args = ("merge", "--adapter", str(trained), "--output", str(merged))
    line = stopped(env, "import:transformers.models.lfm2.modeling_lfm2", tmp_path, signum, *args)
    assert (tmp_path / "paused.imported").exists()  # the module ran to its end before the stop
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


def probe_import(folder: Path, monkeypatch: pytest.MonkeyPatch, then: str) -> None:
    """A module `saudial_probe_import` in `folder` that sends its process SIGTERM while it is being imported, waits
    for the handler to run there, then runs the code `then`."""
    (folder / "saudial_probe_import.py").write_text(
        "import os, signal, time\n"
        "from saudial.process import signals\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(0.2)  # the handler runs here, inside the import\n" + then
    )
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "saudial_probe_import", raising=False)


def test_a_stop_heard_in_an_import_keeps_a_deferred_write_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM during an import inside an at-once command: the stop waits for the import to end, then for a
    `deferred` write begun in the import to end, and stops the command there (in-process)."""
    from saudial.errors import Interrupted
    from saudial.process import signals

    write = "write = signals.deferred('the probe write')\nwrite.__enter__()  # goes on after the import\n"
    probe_import(tmp_path, monkeypatch, write)
    steps = []
    stop = pytest.raises(Interrupted, match="stopped by SIGTERM during `saudial probe`")
    with stop, signals.interruptible("`saudial probe`", "nothing was written", at_once=True):
        import saudial_probe_import

        steps.append("imported")
        time.sleep(0.3)  # the stop looks again every 50 ms here: the write holds it
        steps.append("written")
        saudial_probe_import.write.__exit__(None, None, None)
        time.sleep(1)  # stopped here, at the first look after the write
        steps.append("not stopped")
    assert steps == ["imported", "written"]
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL  # the looks' handler put back


@pytest.mark.parametrize("late_look", [False, True], ids=["in time", "a late look"])
def test_a_phase_that_stops_for_a_signal_heard_in_an_import_ends_the_outer_looks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, late_look: bool
) -> None:
    """An inner at-once phase (merge's "the merge") begins while the outer phase waits to stop (here: a `deferred`
    write begun in the import holds it, so no look can stop the outer phase before the inner one begins): the
    inner phase stops for the signal, with its own line, and its clean-up runs whole, the write ended within it,
    not cut short by a look of the outer phase (in-process).

    A late look: the outer phase's SIGALRM can fire just before the inner phase ends the looks, and its handler then
    runs just after (Python runs handlers between bytecodes). That look must not start the looks again; here it is
    raised by hand after the inner phase stopped, the write still holding the outer phase."""
    from saudial.errors import Interrupted
    from saudial.process import signals

    write = "write = signals.deferred('the probe write')\nwrite.__enter__()  # goes on after the import\n"
    probe_import(tmp_path, monkeypatch, write)
    steps = []
    stop = pytest.raises(Interrupted, match="stopped by SIGTERM during the inner phase; its own")
    with stop, signals.interruptible("`saudial probe`", "nothing was written", at_once=True):
        import saudial_probe_import

        try:
            with signals.interruptible("the inner phase", "its own", at_once=True):
                steps.append("not stopped")
        except Interrupted:
            if late_look:
                signal.raise_signal(signal.SIGALRM)  # the outer phase's look, late
            time.sleep(0.1)  # a clean-up, as merge's products.discard, the write still holding the outer phase
            saudial_probe_import.write.__exit__(None, None, None)
            time.sleep(0.3)  # the clean-up goes on, the outer phase innermost again: no look of its comes here
            steps.append("cleaned up")
            raise
    assert steps == ["cleaned up"]
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_the_interpreters_teardown_keeps_the_exit_code(tmp_path: Path, signum: int) -> None:
    """After the command's end (here: `--dry-run` without data, exit 2 and its line), the interpreter's teardown
    still runs atexit handlers; a signal then ends the process at once with the command's own exit code, not
    130 or 143, and no traceback (cli/main.run)."""
    from tests.jobs import Job

    exiting = tmp_path / "exiting"
    script = (  # a library's atexit handler, registered during the command
        "import atexit, time\n"
        "import saudial.cli.main as cli\n"
        "command = cli.main\n"
        "def main():\n"
        f"    atexit.register(lambda: (open({str(exiting)!r}, 'w').close(), time.sleep(60)))\n"
        "    return command()\n"
        "cli.main = main\n"
        "cli.run()\n"
    )
    env = {k: v for k, v in base_env(tmp_path, tmp_path, tmp_path).items() if k != "SAUDIAL_DATA"}
    job = Job(env, argv=[sys.executable, "-c", script, "--dry-run"])
    deadline = time.monotonic() + 120
    while not exiting.exists() and job.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert exiting.exists(), job.output[-3000:]
    job.signal(signum)
    assert job.finish(timeout=20) == 2, job.output[-3000:]
    assert "Traceback" not in job.output
    assert "SAUDIAL_DATA" in error_line(job.output)


TEARDOWN = """
import atexit, sys, threading, time
from pathlib import Path
import saudial.cli.main as cli

out = Path(sys.argv.pop(1))


class Kept:  # held by a module until the interpreter frees its modules (their globals are None by then)
    def __init__(self, marker):
        self.marker = marker

    def __del__(self, _open=open):
        _open(self.marker, "w").close()


def late_write():
    time.sleep(0.3)
    (out / "thread").touch()


def main():  # what a command's libraries leave: an atexit handler, a thread that is not a daemon
    atexit.register(lambda: (out / "atexit").touch())
    threading.Thread(target=late_write).start()
    return command()


kept = Kept(str(out / "freed"))
command, cli.main = cli.main, main
cli.run() if sys.argv.pop(1) == "run" else sys.exit(main())
"""


@pytest.mark.parametrize("how", ["run", "plain"])
def test_the_teardown_waits_for_threads_and_atexit_then_frees_nothing(tmp_path: Path, how: str) -> None:
    """cli/main.run: after `main`, the threads that are not daemons finish and the atexit handlers run, then the
    process ends with main's code without freeing every object (a plain exit frees them: the control)."""
    env = {k: v for k, v in base_env(tmp_path, tmp_path, tmp_path).items() if k != "SAUDIAL_DATA"}
    command = [sys.executable, "-c", TEARDOWN, str(tmp_path), how, "train", "--dry-run"]
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "SAUDIAL_DATA" in error_line(result.stderr), result.stderr[-3000:]
    assert (tmp_path / "thread").exists() and (tmp_path / "atexit").exists()
    assert (tmp_path / "freed").exists() == (how == "plain")

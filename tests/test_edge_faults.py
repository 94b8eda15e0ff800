"""The process at its edges, through the real entry point on the tiny LFM2: SIGTERM in the phases after
training, a restart after a kill during the move into place, a full disk with TensorBoard's writer thread and
at merge's or export's new output folder.
Each asserts the exit code and the one `error:` line (tests/entry.error_line: no traceback, from any thread)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from saudial.errors import EXIT_INTERRUPTED, EXIT_IO, EXIT_OK, Interrupted
from tests.adapter_run import trained_adapter
from tests.conftest import fill
from tests.entry import error_line, run
from tests.jobs import ADAPTER, Job, env_for

pytestmark = pytest.mark.slow

TOKEN = "hf_" + "q7W8e9R0t1" * 3 + "AbCd"


# --- 14. SIGTERM between the phases after training, and during the upload ----------------------------------


def test_sigterm_after_training_stops_before_the_move_into_place(tmp_path: Path) -> None:
    """The window between "adapter saved" and the move: the signal is heard (not fatal) and the run stops
    with exit 75 before the move, its finished run whole in staging. In-process: a real SIGTERM to this
    process, under the handler the entry point installs for `train`."""
    from saudial.config.settings import Settings
    from saudial.jobs.train import after_training
    from saudial.process import signals
    from saudial.rundir import record
    from saudial.training.recipe import Trained

    out = tmp_path / "out"
    run_dir = out / "staging"
    run_dir.mkdir(parents=True)
    (run_dir / ADAPTER).write_bytes(b"weights")
    record.update(run_dir, {"saudial_run": 1, "status": record.TRAINED, record.FILES: [ADAPTER]})
    settings = Settings.model_construct(**{**Settings().model_dump(), "output_dir": out, "eval": "none"})
    trained = Trained(settings, None, None, pd.DataFrame(), {}, run_dir, "evaluate")
    with signals.watching():
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(Interrupted) as raised:
            after_training(trained)
    assert str(raised.value).startswith("stopped by SIGTERM before the move into place; the finished run is")
    assert sorted(p.name for p in out.iterdir()) == ["staging"] and (run_dir / ADAPTER).read_bytes() == b"weights"
    assert json.loads((run_dir / "run_manifest.json").read_text())["status"] == record.EVALUATED


@pytest.fixture
def slow_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A local Hub (127.0.0.1) that vouches for the token and then takes a minute to create the repo: the
    upload is under way when the test sends its signal."""

    class Hub(BaseHTTPRequestHandler):
        def _answer(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # whoami
            self._answer(200, {"name": "someone", "orgs": [], "auth": {"accessToken": {"role": "write"}}})

        def do_POST(self) -> None:  # create the repo: slowly
            time.sleep(60)
            self._answer(500, {"error": "too late"})

        def log_message(self, *_args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_sigterm_during_the_upload_exits_75(slow_hub: str, tiny_model: Path, workbook: Path, tmp_path: Path) -> None:
    """SIGTERM while the finished run uploads: exit 75 at once, the run in place (was: killed by the signal)."""
    out = tmp_path / "out"
    env = env_for(tiny_model, workbook, out, SAUDIAL_MAX_STEPS="1", SAUDIAL_PUSH_TO_HUB="true")
    env.update(
        {"SAUDIAL_HUB_MODEL_ID": "someone/model", "HF_TOKEN": TOKEN, "HF_ENDPOINT": slow_hub, "HF_HUB_OFFLINE": "0"}
    )
    env["NO_PROXY"] = "127.0.0.1"
    job = Job(env)
    job.wait_for(r"uploading .* to http://127\.0\.0\.1")
    time.sleep(0.5)  # inside the request to the Hub
    job.signal(signal.SIGTERM)
    code = job.finish(timeout=120)
    assert code == EXIT_INTERRUPTED, job.output[-4000:]
    line = error_line(job.output)
    assert line.startswith("error: stopped by SIGTERM during the upload; the finished run is in"), line
    assert f"saudial push --output-dir {out}`" in line and TOKEN not in job.output
    assert (out / ADAPTER).is_file() and not (out / "staging").exists()


# --- 15. a kill during the move into place, then the restart -------------------------------------------------


def test_a_restart_after_a_kill_during_the_move_completes_it_and_succeeds(
    tiny_model: Path,
    workbook: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A finished run cut off in the middle of its move into place (journal written, some files moved, TRL's
    placeholder README.md in staging, as a SIGKILL leaves it); the restart with the same settings completes
    the move, writes saudial's card and exits 0 with "nothing to do" (was: exit 2, "already holds a finished
    run", and the placeholder card)."""
    from saudial.rundir import staging

    finished = trained_adapter(tiny_model, workbook, tmp_path_factory)
    out = tmp_path / "out"
    run_dir = out / "staging"
    shutil.copytree(finished, run_dir, ignore=shutil.ignore_patterns("staging"))
    (run_dir / "README.md").write_text("---\nmodel_name: staging\ntags:\n- trl\n---\n# Model Card for staging\n")
    manifest = json.loads((run_dir / "run_manifest.json").read_text())
    manifest = {k: v for k, v in manifest.items() if k not in ("finished", "card_written")} | {"status": "evaluated"}
    manifest["files"] = [n for n in manifest["files"] if n != "run_manifest.json"]
    (run_dir / "run_manifest.json").write_text(json.dumps(manifest))
    real_replace, moved = os.replace, [0]

    def killed_midway(src: Any, dst: Any) -> None:  # the process dies before its third move into `out`
        if Path(dst).parent == out:
            if moved[0] == 2:
                raise SystemExit("killed")
            moved[0] += 1
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_midway)
    with pytest.raises(SystemExit):
        staging.promote(out)
    monkeypatch.setattr(os, "replace", real_replace)
    assert (run_dir / staging.JOURNAL).is_file() and (run_dir / "README.md").exists() + (out / "README.md").exists()

    result = run(env_for(tiny_model, workbook, out))
    assert result.returncode == EXIT_OK, result.stderr[-4000:]
    assert "completing the move of the finished run" in result.stderr
    assert f"nothing to do: {out.resolve()} already holds this run, finished" in result.stderr
    assert "Traceback" not in result.stderr and "error:" not in result.stderr
    card = (out / "README.md").read_text()
    assert "model_name: staging" not in card and "model_name: out" in card
    assert not run_dir.exists() and (out / ADAPTER).read_bytes() == (finished / ADAPTER).read_bytes()

    other = run(env_for(tiny_model, workbook, out, SAUDIAL_LEARNING_RATE="3e-3"))  # a different run: refused
    assert other.returncode == 2 and "already holds a finished run" in error_line(other.stderr)


# --- 16. a full disk with TensorBoard writing -----------------------------------------------------------------


def test_disk_full_with_tensorboard_is_one_line(
    tiny_model: Path,
    workbook: Path,
    tmpfs: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A new run with overwrite and report_to=tensorboard on a disk with room for the run's record and no more:
    TensorBoard's writer thread meets the full disk first (its first flush, as training begins), then the
    main thread. Exit 74 and the one line; no traceback from the thread."""
    finished = trained_adapter(tiny_model, workbook, tmp_path_factory)
    out = tmpfs / "out"
    shutil.copytree(finished, out)
    fill(tmpfs, 4096)  # one page: the new run's record in staging
    env = env_for(
        tiny_model,
        workbook,
        out,
        SAUDIAL_OVERWRITE_OUTPUT_DIR="true",
        SAUDIAL_LEARNING_RATE="3e-3",
        SAUDIAL_SAVE_STEPS="2",
        SAUDIAL_REPORT_TO="tensorboard",
    )
    result = run(env)
    assert result.returncode == EXIT_IO, result.stderr[-3000:]
    line = error_line(result.stderr)
    assert "No space left on device" in line, line
    assert "Exception in thread" not in result.stderr and "Traceback" not in result.stderr


# --- 17. a full disk as merge or export makes its new output folder -----------------------------------------


@pytest.mark.parametrize("command", ["merge", "export"])
def test_a_full_disk_at_a_new_output_folder_leaves_no_folder(
    command: str, tiny_model: Path, workbook: Path, tmpfs: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """--output a folder that does not exist, on a disk with no room left: making the folder and its staging works
    (a directory takes no data pages) and writing the record into it fails. Exit 74 with the one line, and the
    folders that command made are gone again: the disk is as it was."""
    if command == "export":
        pytest.importorskip("gguf", reason="the GGUF writer (requirements-dev.lock)")
    trained = trained_adapter(tiny_model, workbook, tmp_path_factory)
    env = env_for(tiny_model, workbook, tmpfs / "unused")
    for key in ("SAUDIAL_OUTPUT_DIR", "SAUDIAL_DATA", "SAUDIAL_MODEL_NAME_OR_PATH", "SAUDIAL_QUANTIZATION"):
        env.pop(key)  # from the run's manifest
    out = tmpfs / "new" / command
    filler = fill(tmpfs, 0)
    before = sorted(p.name for p in tmpfs.iterdir())

    result = run(env, command, "--adapter", str(trained), "--output", str(out))
    assert result.returncode == EXIT_IO, result.stderr[-3000:]
    line = error_line(result.stderr)
    assert "No space left on device" in line and str(out / "staging") in line, line
    assert not out.exists(), sorted(p.relative_to(tmpfs).as_posix() for p in tmpfs.rglob("*"))
    # The parent folder `mkdir -p` made stays (as a training run's output folder's parents do): only --output goes
    assert sorted(p.name for p in tmpfs.iterdir()) == sorted([*before, "new"]) and filler.is_file()

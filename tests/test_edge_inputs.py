"""Inputs at the edges, through the same functions the commands call (in-process, fast): recipe files that
are not files, output directories that cannot be one, damaged adapters and run records, names that carry
control characters, and server messages that carry a token. Each ends in one line naming what the user
gave and an exit code of the README's table, never a bug (exit 1)."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saudial.config.sources import RECIPE_MAX_BYTES, load_settings
from saudial.errors import ConfigError


def _load_within(seconds: float, recipe: Path) -> BaseException | None:
    """load_settings with `recipe`, in a thread: what it raised, failing the test if it takes longer."""
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            load_settings({}, environ={}, config_file=recipe)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=call, daemon=True)
    tick = time.perf_counter()
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        if recipe.is_fifo():  # let the stuck reader go: a writer that closes at once
            os.close(os.open(recipe, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"reading --config {recipe.name} took over {seconds} s")
    assert time.perf_counter() - tick < seconds
    return outcome[0]


@pytest.mark.parametrize("case", ["fifo", "dev-zero", "30-mb", "directory"])
def test_a_recipe_that_is_not_a_small_regular_file_is_refused_at_once(case: str, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    if case == "fifo":
        os.mkfifo(recipe)
    elif case == "dev-zero":
        recipe.symlink_to("/dev/zero")
    elif case == "directory":
        recipe.mkdir()
    else:
        recipe.write_text("# a comment\n" * (30 * (1 << 20) // 12) + "learning_rate: 1.0e-4\n")
    error = _load_within(2.0, recipe)
    assert isinstance(error, ConfigError), repr(error)
    line = str(error)
    assert line.startswith(f"--config {recipe}: ") and "\n" not in line, line
    expected = {
        "fifo": "is a named pipe (FIFO), not a recipe",
        "dev-zero": "is a character device, not a recipe",
        "directory": "is a directory, not a recipe",
        "30-mb": f"over the {RECIPE_MAX_BYTES // 1024} KB a recipe may have",
    }[case]
    assert expected in line, line
    assert "/dev/zero" not in line  # the path the user gave, not where it points


def test_a_recipe_under_the_cap_is_read(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("# note\n" * 2000 + "learning_rate: 1.0e-4\n")
    assert recipe.stat().st_size < RECIPE_MAX_BYTES
    assert load_settings({}, environ={}, config_file=recipe).learning_rate == 1.0e-4


# --- 13. output directories that cannot be one ----------------------------------------------------------


def _unusable_output(tmp_path: Path, case: str) -> Path:
    if case == "under-a-file":
        (tmp_path / "file.txt").write_text("the user's")
        return tmp_path / "file.txt" / "out"
    if case == "symlink-loop":
        (tmp_path / "loop").symlink_to(tmp_path / "loop")
        return tmp_path / "loop" / "out"
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    return tmp_path / "a"


@pytest.mark.parametrize("case", ["under-a-file", "symlink-loop", "two-link-loop"])
def test_an_output_directory_that_cannot_be_one_is_the_users_input(case: str, tmp_path: Path) -> None:
    """Training and merge: exit 2 naming the path, nothing created (was exit 1, a bug)."""
    from saudial.config.settings import Settings
    from saudial.rundir.outputs import prepare_output_dir
    from saudial.rundir.products import prepare

    out = _unusable_output(tmp_path, case)
    before = sorted(p.name for p in tmp_path.iterdir())
    settings = Settings.model_construct(**{**Settings().model_dump(), "output_dir": out})
    for call, setting in (
        (lambda: prepare_output_dir(settings, "f" * 64, "0" * 64), "SAUDIAL_OUTPUT_DIR"),
        (lambda: prepare(out, settings, "merge"), "--output"),
    ):
        with pytest.raises(ConfigError) as raised:
            call()
        line = str(raised.value)
        assert line.startswith(f"{setting}={str(out)!r} is ") and "\n" not in line, line
        assert ("symlink loop" in line) if "loop" in case else ("which is a file" in line), line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# --- 18. a run record whose list of files is damaged ------------------------------------------------------


@pytest.mark.parametrize("files", ['"adapter_model.safetensors"', "{}", "[1, 2]", "null"])
def test_a_record_with_a_damaged_list_of_files_is_named_as_damaged(files: str, tmp_path: Path) -> None:
    """The finished run's record is named as damaged, not its files as "files that no saudial run wrote"."""
    from saudial.config.settings import Settings
    from saudial.rundir.outputs import prepare_output_dir

    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(b"weights")
    record = f'{{"saudial_run": 1, "status": "finished", "fingerprint": "{"f" * 64}", "files": {files}}}'
    (out / "run_manifest.json").write_text(record)
    settings = Settings.model_construct(**{**Settings().model_dump(), "output_dir": out})
    with pytest.raises(ConfigError) as raised:
        prepare_output_dir(settings, "e" * 64, "0" * 64)
    line = str(raised.value)
    assert line.startswith(f"{out / 'run_manifest.json'} is damaged (its 'files' entry is not a list"), line
    assert "no saudial run wrote" not in line
    assert sorted(p.name for p in out.iterdir()) == ["adapter_model.safetensors", "run_manifest.json"]


# --- 17. damaged checkpoints and adapters -------------------------------------------------------------------


def _checkpoint(run_dir: Path, step: int, fingerprint: str, damage: str | None = None) -> Path:
    """A checkpoint folder as the Trainer writes it (small tensors), vouched for by saudial's marker, with one
    file replaced before the marker was written: its files match the marker, and still do not load."""
    import pickle

    import torch
    from safetensors.torch import save_file

    from saudial.rundir.checkpoints import write_marker

    path = run_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"lora_A": torch.zeros(2, 2)}, str(path / "adapter_model.safetensors"))
    (path / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    torch.save({"state": {}, "param_groups": []}, path / "optimizer.pt")
    torch.save({"last_epoch": step}, path / "scheduler.pt")
    torch.save({"cpu": torch.get_rng_state()}, path / "rng_state.pth")
    if damage == "rng_state.pth":  # a pickle of something that is not tensors: torch refuses it
        (path / "rng_state.pth").write_bytes(pickle.dumps(Path("/etc")))
    elif damage == "adapter_model.safetensors":
        (path / "adapter_model.safetensors").write_bytes(b"\xff" * 64)
    write_marker(path, step, fingerprint)
    return path


@pytest.mark.parametrize("damage", ["rng_state.pth", "adapter_model.safetensors"])
def test_a_checkpoint_that_does_not_load_is_passed_over_for_the_previous_one(damage: str, tmp_path: Path) -> None:
    from saudial.rundir.checkpoints import latest_valid

    fingerprint = "f" * 64
    good = _checkpoint(tmp_path, 2, fingerprint)
    bad = _checkpoint(tmp_path, 4, fingerprint, damage)
    found, skipped = latest_valid(tmp_path, fingerprint)
    assert found == good
    assert [(path, reason.split(" (")[0]) for path, reason in skipped] == [(bad, f"{damage} does not load")]


@pytest.fixture
def adapter_dir(tmp_path: Path) -> Path:
    """An adapter's folder as a run leaves it, with tiny weights (no model is ever loaded here)."""
    import torch
    from safetensors.torch import save_file

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "%s"}' % (tmp_path / "no-model"))
    save_file({"lora_A": torch.zeros(2, 2)}, str(adapter / "adapter_model.safetensors"))
    return adapter


@pytest.mark.parametrize(
    ("damaged", "content", "why"),
    [
        ("adapter_config.json", b"\xff\xfe\x00garbage\x9b", "not UTF-8 text"),
        ("adapter_config.json", b"{not json", "not valid JSON"),
        ("adapter_model.safetensors", b"\xff" * 64, "header too large"),
    ],
)
def test_a_damaged_adapter_is_named_with_exit_2(
    damaged: str, content: bytes, why: str, adapter_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """translate with a damaged adapter: one line naming the file (was exit 1: UnicodeDecodeError, a
    safetensors error)."""
    from saudial.cli.main import main

    (adapter_dir / damaged).write_bytes(content)
    code = main(["translate", "--adapter", str(adapter_dir), "--dialect", "Najdi", "Hello"])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: --adapter {str(adapter_dir)!r}: {adapter_dir / damaged} is damaged ("), line
    assert why in line and "Traceback" not in err, line


def test_a_refused_merge_writes_nothing(adapter_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """merge of an adapter that is only a pickle (adapter_model.bin): refused, and --output is not created."""
    from saudial.cli.main import main

    (adapter_dir / "adapter_model.safetensors").rename(adapter_dir / "adapter_model.bin")
    out = tmp_path / "merged"
    code = main(["merge", "--adapter", str(adapter_dir), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "only adapter_model.bin, a pickle" in err.strip().splitlines()[-1], err[-2000:]
    assert not out.exists()


# --- 19. what messages echo --------------------------------------------------------------------------------

FORGED = "x\x1b[2J\x1b[H\rfine\nerror: all good\u202e.csv"


def _logged(call: Any) -> str:
    """What saudial's log handler (with its filters, cli/logs.setup) prints while `call` runs."""
    import io
    import logging

    from saudial.cli.logs import FORMAT, Echoes

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(Echoes())
    logger = logging.getLogger("saudial")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        call()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return stream.getvalue()


def test_the_settings_table_escapes_what_it_echoes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A data path and a recipe name holding ANSI escapes and newlines: one table row each, nothing forged."""
    from saudial.cli import logs
    from saudial.config.sources import changed_settings

    recipe = tmp_path / "r\x1b[31m\nerror: recipe ok.yaml"
    recipe.write_text("learning_rate: 1.0e-4\n")
    monkeypatch.setenv("SAUDIAL_DATA", str(tmp_path / FORGED))
    environ = dict(os.environ)
    settings = load_settings({}, environ=environ, config_file=recipe)
    rows = changed_settings(settings, {}, environ, recipe)
    out = _logged(lambda: logs.print_settings(rows, "flag > env"))
    assert "\x1b" not in out and "\r" not in out and "\u202e" not in out, repr(out)
    lines = out.splitlines()
    assert not [line for line in lines if line.lstrip().startswith("error:")], lines
    assert len(lines) == 1 + len(rows) and "\\x1b[2J" in out and "\\nerror: all good" in out, lines


def test_log_lines_escape_paths_and_text_values() -> None:
    import logging

    out = _logged(lambda: logging.getLogger("saudial.x").info("saved to %s (%s)", Path(FORGED), "a\x1b[2Jb"))
    assert out.count("\n") == 1 and "\x1b" not in out and "\\x1b[2J" in out, repr(out)


def test_an_error_line_is_one_line_whatever_it_echoes(capsys: pytest.CaptureFixture[str]) -> None:
    """The entry point's last line, for a message holding a name the user gave (here: an unknown variable)."""
    from saudial.cli.main import main

    forged = "SAUDIAL_X\x1b[2J\nerror: all good"
    os.environ[forged] = "1"
    try:
        code = main(["check"])
    finally:
        del os.environ[forged]
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: unknown setting SAUDIAL_X\\x1b[2J\\nerror: all good"), repr(err)
    assert "\x1b" not in err and err.endswith("\n") and err.count("\n") == 1, repr(err)


# --- 20. a server's message that echoes the token ---------------------------------------------------------

TOKEN = "hf_" + "a1B2c3D4e5" * 3 + "XyZw"


@pytest.fixture
def echoing_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A local HTTP server (127.0.0.1) that answers every request with 400 and an error message quoting the
    request's Authorization header, as HF_ENDPOINT; HF_TOKEN set."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from huggingface_hub import constants

    class Echo(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            said = f"bad request from Authorization: {self.headers.get('Authorization')}"
            body = json.dumps({"error": said}).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_HEAD = _answer

        def log_message(self, *_args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield endpoint
    server.shutdown()
    server.server_close()


def test_a_hub_error_that_echoes_the_token_is_redacted(
    echoing_hub: str, adapter_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`push` (exit 4) and the pre-flight check (exit 2): the server's words are shown, the token never."""
    from saudial.cli.main import main
    from saudial.config.settings import Settings
    from saudial.publish import hub

    code = main(["push", "--output-dir", str(adapter_dir), "--hub-model-id", "someone/model"])
    err = capsys.readouterr().err
    assert code == 4, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: upload to {echoing_hub}/someone/model failed: 400 bad request from"), line
    assert "Authorization: Bearer hf_***" in line and TOKEN not in err, line

    settings = Settings.model_construct(
        **{**Settings().model_dump(), "push_to_hub": True, "hub_model_id": "someone/model"}
    )
    with pytest.raises(ConfigError) as raised:
        hub.preflight(settings)
    assert "bad request from Authorization: Bearer hf_***" in str(raised.value) and TOKEN not in str(raised.value)


def test_a_record_never_holds_a_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from saudial.rundir import record

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    record.update(tmp_path, {"saudial_run": 1, "push_error": f"403 from Authorization: Bearer {TOKEN}"})
    written = (tmp_path / "run_manifest.json").read_text()
    assert TOKEN not in written and "Bearer hf_***" in written


def test_an_adapter_path_that_is_not_a_folder_says_what_it_is(tmp_path: Path) -> None:
    from saudial.config.huggingface import check_adapter_dir

    (tmp_path / "notes.txt").write_text("not an adapter")
    (tmp_path / "empty").mkdir()
    for path, said in (
        (tmp_path / "missing", "does not exist"),
        (tmp_path / "notes.txt", "is a file"),
        (tmp_path / "empty", "holds no adapter_config.json"),
    ):
        with pytest.raises(ConfigError, match=rf"^--adapter '{re.escape(str(path))}' {said}: point it at the output"):
            check_adapter_dir(path)

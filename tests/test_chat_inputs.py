"""Hostile and broken chat data through the real entry point (#17): each ends in exit 2 and one `error:` line
naming the file, the line and the fix, never a traceback, never the file's bytes; nothing is written.

Training cases use `--dry-run` and a base model that does not exist: a bad file must fail before any model
is needed. `chat --input` cases use an adapter directory with nothing but an adapter_config.json. Each case runs
the entry point's `main` in this process (tests/entry.py); each table keeps one case as a real subprocess.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saudial.config.settings import Settings
from saudial.errors import EXIT_IO, ConfigError
from saudial.jobs.chat import check_chat
from tests.entry import Built, Outcome, assert_one_line_error, data_env, dry_runs, run, run_in_process

SYSTEM = {"role": "system", "content": "Answer in Najdi Arabic."}
USER = {"role": "user", "content": "Where is the market?"}
REPLY = {"role": "assistant", "content": "السوق هناك"}
GOOD = {"messages": [SYSTEM, USER, REPLY], "dialect": "Najdi"}


def _jsonl(*lines: Any) -> Callable[[Path], Path]:
    """A chat.jsonl of a good first line, then `lines` (dicts as JSON, bytes as they are)."""

    def build(d: Path) -> Path:
        raw = [json.dumps(GOOD).encode()] + [x if isinstance(x, bytes) else json.dumps(x).encode() for x in lines]
        path = d / "chat.jsonl"
        path.write_bytes(b"\n".join(raw) + b"\n")
        return path

    return build


def _parquet(messages: pa.Array) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        pq.write_table(pa.table({"messages": messages}), d / "chat.parquet")
        return d / "chat.parquet"

    return build


def _messages(*messages: Any, **fields: Any) -> dict[str, Any]:
    return {"messages": list(messages), **fields}


HOSTILE_ROLE = "=cmd|' /C calc'!A0"
# case -> (builder, extra settings, what the one error line says)
CASES: dict[str, tuple[Callable[[Path], Path], dict[str, str], str]] = {
    "bad-json-line": (_jsonl(b'{"messages": [{"role": "user", '), {}, "chat.jsonl line 2 is not valid JSON"),
    "unknown-role": (
        _jsonl(_messages(USER, {"role": "narrator", "content": "x"})),
        {},
        "chat.jsonl line 2, message 2: role 'narrator' is not one of system, user, assistant",
    ),
    "hostile-role-not-echoed": (_jsonl(_messages({"role": HOSTILE_ROLE, "content": "x"})), {}, "role '?' is not one"),
    "empty-content": (
        _jsonl(_messages({"role": "user", "content": "  "}, REPLY)),
        {},
        "chat.jsonl line 2, message 1: empty user content",
    ),
    "only-control-characters": (
        _jsonl(_messages(USER, {"role": "assistant", "content": "\u200b\x00\u202e"})),
        {},
        "line 2, message 2: empty assistant content",
    ),
    "no-assistant-turn": (_jsonl(_messages(SYSTEM, USER)), {}, "chat.jsonl line 2: no assistant message"),
    "content-a-number": (
        _jsonl(_messages(USER, {"role": "assistant", "content": 42})),
        {},
        "line 2, message 2: the content is a number, not text",
    ),
    "messages-an-object": (_jsonl({"messages": USER}), {}, "line 2: the messages must be a non-empty list"),
    "no-conversation": (_jsonl({"text": "hello"}), {}, "chat.jsonl line 2 has no conversation"),
    "dialect-a-number": (
        _jsonl(_messages(USER, REPLY, dialect=3)),
        {},
        "line 2: the dialect cell is a number, not text",
    ),
    "parquet-unknown-role": (
        _parquet(pa.array([[USER, REPLY], [{"role": "tool", "content": "x"}]])),
        {},
        "chat.parquet row 2, message 1: role 'tool' is not one of",
    ),
    "over-the-size-cap": (
        _jsonl(*[GOOD] * 9000),
        {"SAUDIAL_MAX_DATA_FILE_MB": "1"},
        "over SAUDIAL_MAX_DATA_FILE_MB=1",
    ),
    "chat-in-translate-mode": (
        _jsonl(),
        {"SAUDIAL_TASK": "translate"},
        "holds conversations (TRL's 'messages' format)",
    ),
    "chat-from-a-csv": (
        lambda d: _write(d / "chat.csv", "messages\n[]\n"),
        {},
        "SAUDIAL_TASK=chat reads conversations from a .jsonl or .parquet file, not chat.csv",
    ),
    "rows-in-chat-mode": (
        lambda d: _write(
            d / "rows.jsonl", '{"Dialect": "Najdi", "English Text": "Hi", "Dialect Translation": "هلا"}\n'
        ),
        {},
        "rows.jsonl holds no conversations",
    ),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every case: its file built here, then a dry run of `train` (SAUDIAL_TASK=chat unless the case says)."""

    def built(build: Callable[[Path], Path], extra: dict[str, str], expected: str) -> Callable[[Path], Built]:
        return lambda d: (build(d), {"SAUDIAL_TASK": "chat", **extra}, expected)

    return dry_runs(tmp_path_factory.mktemp("chat-cases"), {case: built(*spec) for case, spec in CASES.items()})


@pytest.mark.parametrize("case", list(CASES))
def test_bad_chat_data_exits_2_with_one_line(case: str, results: dict[str, Any]) -> None:
    result, expected, unchanged = results[case]
    line = assert_one_line_error(result, expected)
    assert unchanged  # nothing in the data directory or the output directory changed
    assert "السوق" not in line and HOSTILE_ROLE not in result.stderr  # no content of the file is echoed


def test_bad_chat_data_through_the_entry_point_process(tmp_path: Path) -> None:
    """The contract end to end, once: a real `entrypoint.py --dry-run` process on a hostile role."""
    build, extra, expected = CASES["hostile-role-not-echoed"]
    case = {"one": lambda d: (build(d), {"SAUDIAL_TASK": "chat", **extra}, expected)}
    result, _, unchanged = dry_runs(tmp_path, case, runner=run)["one"]
    assert_one_line_error(result, expected)
    assert unchanged and HOSTILE_ROLE not in result.stderr


INPUT_CASES: dict[str, tuple[list[Any], list[str], str]] = {
    "last-turn-the-assistant's": (
        [_messages(USER, REPLY)],
        [],
        "ask.jsonl line 1: the last message is the assistant's",
    ),
    "not-an-object": ([_messages(USER), "not an object"], [], "ask.jsonl line 2 is not a JSON object"),
    "output-type": ([_messages(USER)], ["--output", "replies.csv"], "unsupported type: name it .jsonl or .parquet"),
    "message-and-input": ([_messages(USER)], ["one message"], "either a MESSAGE argument or --input FILE (not both)"),
}


@pytest.fixture(scope="module")
def input_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`chat --input` on every INPUT_CASES file, with an adapter that has no model: the file fails first. The
    first case as a real subprocess, the others through `main` in this process."""
    root = tmp_path_factory.mktemp("chat-inputs")
    adapter = root / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "/nonexistent/base-model"}')

    def one(case: str, runner: Callable[..., Outcome]) -> tuple[Outcome, list[str]]:
        lines, args, _ = INPUT_CASES[case]
        d = root / case
        d.mkdir()
        source = _write(d / "ask.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
        env = data_env(root / "unused.xlsx", root / "out")
        result = runner(env, "chat", "--adapter", str(adapter), "--input", str(source), *args)
        return result, sorted(p.name for p in d.iterdir())

    return {case: one(case, run if i == 0 else run_in_process) for i, case in enumerate(INPUT_CASES)}


@pytest.mark.parametrize("case", list(INPUT_CASES))
def test_chat_rejects_a_bad_input_before_any_model(case: str, input_results: dict[str, Any]) -> None:
    result, files = input_results[case]
    assert_one_line_error(result, INPUT_CASES[case][2])
    assert files == ["ask.jsonl"]  # no replies file


def _ask(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    return _write(folder / "ask.jsonl", json.dumps(_messages(USER)) + "\n")


def test_chat_makes_the_output_folder_after_every_other_check(tmp_path: Path, no_model_adapter: Path) -> None:
    """--output in a folder that does not exist: made by the checks before any model (it was a FileNotFoundError,
    exit 1, once every reply was written); a refused input makes nothing."""
    source, into = _ask(tmp_path / "inputs"), tmp_path / "new" / "folder" / "ask.jsonl"
    with pytest.raises(ConfigError, match="--system is empty"):
        check_chat(Settings(), no_model_adapter, None, " ", source, into)
    assert not (tmp_path / "new").exists()
    asked = check_chat(Settings(), no_model_adapter, None, None, source, into)
    assert asked.target == into and into.parent.is_dir() and not list(into.parent.iterdir())


def test_chat_into_a_read_only_folder_exits_74_before_any_model(
    tmp_path: Path, tmpfs: Path, no_model_adapter: Path
) -> None:
    source = _ask(tmp_path / "inputs")
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    env = data_env(tmp_path / "unused.xlsx", tmp_path / "out")
    args = ("--input", str(source), "--output", str(tmpfs / "ask.jsonl"))
    result = run_in_process(env, "chat", "--adapter", str(no_model_adapter), *args)
    assert_one_line_error(result, f"cannot write {tmpfs}: EROFS (Read-only file system)", EXIT_IO)


def test_chat_names_an_input_of_an_unsupported_type(tmp_path: Path, no_model_adapter: Path) -> None:
    """--input r.sh names --input (it named the --output made from it, r.replies.sh)."""
    script = _write(tmp_path / "r.sh", "echo hi\n")
    env = data_env(tmp_path / "unused.xlsx", tmp_path / "out")
    result = run_in_process(env, "chat", "--adapter", str(no_model_adapter), "--input", str(script))
    assert_one_line_error(result, "--input 'r.sh' is not a .jsonl or .parquet file of conversations")
